"""``qinspect verify``: run every quantized layer in three domains and compare them.

For each quantized op, from its own quantized input: the **float domain** (float64, no
output rounding: what the layer means), torch's **kernel** under the engine the file
implies, and qinspect's integer **reference**. Reported per layer: SQNR of the kernel
output against the float domain, the error in output LSB, the outputs clipped at the
output range, the inputs clipped when quantizing, and kernel-vs-reference agreement.

The package:

* :mod:`.types`: options, rows and the report (plain frozen dataclasses, no torch);
* :mod:`.rows`: what runners share (context, float weights, engine, row builders);
* :mod:`.runner`: the :class:`~.runner.Runner` interface and the choice of runner;
* one runner per format: :mod:`.statedict` (a state_dict: no graph), :mod:`.model`
  (``--model``: the user's model code), :mod:`.script` (TorchScript archives and pickled
  GraphModules: their stored graph), :mod:`.export` (``.pt2`` programs), :mod:`.torchao`;
* :mod:`.kernels`: torch's quantized kernels; :mod:`.validate`: what a file or an input
  must satisfy before anything reaches torch.
"""

from __future__ import annotations

import os

from qinspect.analyse.verify.types import (
    ChainOutput,
    EndToEnd,
    InputKind,
    KernelAgreement,
    LayerVerify,
    Options,
    Progress,
    VerifyReport,
    explain_worst,
    fmt_db,
    keep_layers,
)
from qinspect.model import Checkpoint

__all__ = ["ChainOutput", "EndToEnd", "InputKind", "KernelAgreement", "LayerVerify",
           "Options", "Progress", "VerifyReport", "explain_worst", "fmt_db", "keep_layers",
           "verify"]


def verify(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    *,
    input: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    model: str | None = None,
    engine: str | None = None,
    layer_glob: str | None = None,
    seed: int | None = None,
    batch: int | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify every quantized layer of ``checkpoint`` with the runner of its format.

    An option the runner cannot honour is refused (:class:`~qinspect.errors.InputError`,
    with the reason), never ignored."""
    from dataclasses import replace

    from qinspect.analyse.verify.runner import select
    from qinspect.loaders import load

    options = Options.of(input=input, reference=reference, model=model, engine=engine,
                         layer_glob=layer_glob, seed=seed, batch=batch)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load(checkpoint)
    runner = select(ckpt, options)
    report = runner.run(ckpt, options, progress)
    report = replace(report, runner=runner.name, reference=options.reference,
                     model=options.model, seed=options.seed, batch=options.batch)
    return keep_layers(report, options.layer_glob)
