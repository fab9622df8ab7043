"""The one interface every ``verify`` runner implements, and the choice of runner.

A runner verifies one kind of file (or, for ``--model``, a state_dict with the user's model
code). It declares, as data, which options it needs and which it cannot honour, each with
the reason; :func:`select` refuses a given option the runner cannot honour (exit 2, the
reason in one line) and asks for a missing one it needs, so no option is ever ignored.
Every runner returns a :class:`~qinspect.analyse.verify.types.VerifyReport` with the same
fields and the same metrics per row (SQNR, error, clipping, kernel vs reference).

A later runner (e.g. Hugging Face LLM checkpoints whose layers are Linear layers with
weight-only / W8A8 / FP8 schemes) plugs in by implementing :class:`Runner` and being
listed in :data:`RUNNERS` before the runners whose ``accepts`` would also claim the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from qinspect.analyse.verify.types import OPTION_FLAGS, Options, Progress, VerifyReport
from qinspect.errors import InputError
from qinspect.model import Checkpoint


class Runner(Protocol):
    """One format's way of running every quantized layer of a checkpoint."""

    # Read-only members (properties), so that a runner may declare them with a narrower
    # type (a dict class attribute is a Mapping).
    @property
    def name(self) -> str:
        """Short id, written to the report (``runner``): ``state_dict``, ``model``..."""
        ...

    @property
    def needs(self) -> Mapping[str, str]:
        """Option field -> the message when it is missing (it must then be given)."""
        ...

    @property
    def refuses(self) -> Mapping[str, str]:
        """Option field -> why this runner cannot honour it (refused, exit 2)."""
        ...

    def accepts(self, ckpt: Checkpoint, options: Options) -> bool:
        """Whether this runner is the one for ``ckpt`` with these options."""
        ...

    def run(self, ckpt: Checkpoint, options: Options, progress: Progress | None
            ) -> VerifyReport:
        """Verify every quantized layer of ``ckpt``; ``options`` already checked."""
        ...


def runners() -> tuple[Runner, ...]:
    """Every runner, the most specific first (imported here, not at package import)."""
    from qinspect.analyse.verify.export import Pt2Runner
    from qinspect.analyse.verify.hf import HfRunner
    from qinspect.analyse.verify.model import ModelRunner
    from qinspect.analyse.verify.script import FxPickleRunner, TorchScriptRunner
    from qinspect.analyse.verify.statedict import StateDictRunner
    from qinspect.analyse.verify.torchao import TorchaoRunner

    return (HfRunner(), TorchaoRunner(), Pt2Runner(), TorchScriptRunner(), FxPickleRunner(),
            ModelRunner(), StateDictRunner())


def select(ckpt: Checkpoint, options: Options) -> Runner:
    """The runner for ``ckpt``, after refusing the options it cannot honour."""
    runner = next((r for r in runners() if r.accepts(ckpt, options)), None)
    if runner is None:  # StateDictRunner accepts every file: a broken registry
        raise AssertionError(f"no verify runner for {ckpt.format}")
    check_options(runner, options)
    return runner


def check_options(runner: Runner, options: Options) -> None:
    """An InputError for the first given option ``runner`` refuses, or needed one missing."""
    for field in options.given():
        if field in runner.refuses:
            raise InputError(f"{OPTION_FLAGS[field]} does not apply to this file "
                             f"({runner.name}): {runner.refuses[field]}; drop it")
    for field, message in runner.needs.items():
        if getattr(options, field) is None:
            raise InputError(message)
