"""Real torch.ao.quantization flows behind the sample checkpoints.

Each public function runs one eager-mode flow (QAT, static PTQ, dynamic, weight-only)
on a model from :mod:`models` and returns the live torch objects in a :class:`Flow`,
so tests can compare what qinspect reads from a file with what torch itself holds.

Determinism: every flow seeds its own RNG (``torch.random.fork_rng`` + a seeded
``torch.Generator`` for data), runs with one intra-op thread, and sets
``torch.backends.quantized.engine`` only for its duration; the caller's RNG state,
thread count and engine are restored afterwards. Same arguments -> same tensors, on
any x86-64 CPU: importing this module pins torch's CPU kernels first
(:mod:`reproducible`), and every flow refuses to run in a process where that came
too late. No flow runs at import time.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import reproducible

reproducible.pin()  # before torch is imported: it picks its kernels once

import models  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.ao import quantization as tq  # noqa: E402

__all__ = [
    "Flow",
    "quant_engine",
    "mlp_batches",
    "mlp_sample",
    "conv_batches",
    "conv_sample",
    "lstm_sample",
    "embbag_sample",
    "mlp_qat",
    "mlp_ptq",
    "convnet_ptq",
    "lstm_dynamic",
    "dynlinear_dynamic",
    "embbag_weight_only",
]

# Sizes of the deterministic random data.
MLP_BATCH = 32
MLP_QAT_STEPS = 8
CONV_BATCH = 8
CONV_BATCHES = 4
# Offset so sample inputs are fresh draws from the calibration distribution.
_SAMPLE_SEED_OFFSET = 1000


@dataclass(frozen=True)
class Flow:
    """Live objects of one quantization flow.

    float_model: the float model whose ``state_dict()`` is saved as the ``*_fp32.pt``
        file: a plain model class from :mod:`models` (unfused, no observers), holding
        exactly the float weights that ``convert`` quantized.
    prepared_model: the model after ``prepare``/``prepare_qat`` and calibration or
        training (observers/fake-quants hold real values), or ``None`` for dynamic
        quantization, which has no public prepare step.
    converted_model: the quantized model.
    calib_input: the input the observers saw (all QAT/calibration batches stacked);
        for dynamic quantization, which calibrates nothing, an example input.
        For the embedding flow a tuple ``(bag_indices, bag_offsets, emb_indices)``.
    """

    float_model: nn.Module
    prepared_model: nn.Module | None
    converted_model: nn.Module
    calib_input: Any


@contextlib.contextmanager
def quant_engine(engine: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block, then restore it.

    Run a converted model under the engine it was converted with.
    """
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


@contextlib.contextmanager
def _deterministic(seed: int, engine: str) -> Iterator[None]:
    """Pinned kernels, seeded global RNG (forked), one thread, given engine, torch.ao
    warnings muted."""
    reproducible.check()
    threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        stack.enter_context(quant_engine(engine))
        stack.enter_context(warnings.catch_warnings())
        # torch 2.13 warns on every torch.ao.quantization call; the flows are meant.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- data


def mlp_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """QAT/calibration batches for the MLPs: (x in [0,1) of shape (32, 784), label)."""
    g = _gen(seed)
    out = []
    for _ in range(MLP_QAT_STEPS):
        x = torch.rand(MLP_BATCH, 784, generator=g)
        y = torch.randint(0, 10, (MLP_BATCH,), generator=g)
        out.append((x, y))
    return out


def mlp_sample(seed: int = 0) -> torch.Tensor:
    """(4, 784) float32 input, same distribution as :func:`mlp_batches`."""
    return torch.rand(4, 784, generator=_gen(seed + _SAMPLE_SEED_OFFSET))


def conv_batches(seed: int = 0) -> list[torch.Tensor]:
    """Calibration batches for SmallConvNet: (8, 1, 28, 28) in [0, 1)."""
    g = _gen(seed)
    return [torch.rand(CONV_BATCH, 1, 28, 28, generator=g) for _ in range(CONV_BATCHES)]


def conv_sample(seed: int = 0) -> torch.Tensor:
    """(2, 1, 28, 28) float32 input, same distribution as :func:`conv_batches`."""
    return torch.rand(2, 1, 28, 28, generator=_gen(seed + _SAMPLE_SEED_OFFSET))


def lstm_sample(seed: int = 0) -> torch.Tensor:
    """(seq=5, batch=2, 16) float32 standard-normal input for TinyLSTM."""
    return torch.randn(5, 2, 16, generator=_gen(seed + _SAMPLE_SEED_OFFSET))


def embbag_sample(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bag_indices, bag_offsets, emb_indices) for TinyEmbeddingBag: 3 bags, 6 lookups."""
    g = _gen(seed + _SAMPLE_SEED_OFFSET)
    bag_indices = torch.randint(0, 100, (10,), generator=g)
    bag_offsets = torch.tensor([0, 3, 7])
    emb_indices = torch.randint(0, 50, (6,), generator=g)
    return bag_indices, bag_offsets, emb_indices


# --------------------------------------------------------------------------- flows


def _plain_copy(cls: type[nn.Module], src: nn.Module) -> nn.Module:
    """A fresh ``cls()`` holding src's float parameters and buffers, matched by key.

    Used to turn a QAT-prepared model (with fake-quant submodules, possibly fused)
    back into the plain float model class whose state_dict users load.
    """
    dst = cls()
    src_sd = src.state_dict()
    dst_sd = dst.state_dict()
    missing = [k for k in dst_sd if k not in src_sd]
    if missing:
        raise KeyError(f"{cls.__name__}: no source tensor for {missing}")
    dst.load_state_dict({k: src_sd[k].detach().clone() for k in dst_sd})
    return dst.eval()


def mlp_qat(engine: str = "fbgemm", seed: int = 0, *, fused: bool = False,
            frozen: bool = False) -> Flow:
    """QAT of MnistMLP (or MnistMLPFused with fc1+relu fused into LinearReLU).

    ``get_default_qat_qconfig(engine)``, ``prepare_qat``, 8 SGD steps on random
    (x, label) batches, ``.eval()``, ``convert``. ``float_model`` is a plain
    ``MnistMLP``/``MnistMLPFused`` holding the float weights at the *end* of QAT, i.e.
    the weights ``convert`` quantized (keys fc1.weight, fc1.bias, fc2.weight, fc2.bias).

    ``frozen=True`` is the recipe whose converted weights are exactly what training
    simulated: ``get_default_qat_qconfig(engine, version=0)`` (the non-fused fake-quant,
    whose scale formula is the observer's) and ``disable_observer`` before ``convert``
    (the default keeps observing, so ``convert`` moves the qparams once more).
    """
    cls = models.MnistMLPFused if fused else models.MnistMLP
    with _deterministic(seed, engine):
        model = cls().train()
        if fused:
            model = tq.fuse_modules_qat(model, [list(models.MnistMLPFused.FUSE)])
        model.qconfig = (tq.get_default_qat_qconfig(engine, version=0) if frozen
                         else tq.get_default_qat_qconfig(engine))
        prepared = tq.prepare_qat(model)
        opt = torch.optim.SGD(prepared.parameters(), lr=0.05, momentum=0.9)
        batches = mlp_batches(seed)
        for x, y in batches:
            loss = nn.functional.cross_entropy(prepared(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if frozen:
            prepared.apply(tq.disable_observer)
        prepared.eval()
        converted = tq.convert(prepared)
        float_model = _plain_copy(cls, prepared)
    calib = torch.cat([x for x, _ in batches])
    return Flow(float_model, prepared, converted, calib)


def mlp_ptq(float_model: nn.Module | None = None, engine: str = "qnnpack", seed: int = 0) -> Flow:
    """Static PTQ of an MnistMLP's float weights with ``get_default_qconfig(engine)``.

    Defaults to the float weights of ``mlp_qat("fbgemm", seed)`` (i.e. mlp_fp32.pt),
    so the qnnpack file quantizes the same float weights as the fbgemm one.
    Calibrated on the same batches the QAT run trained on. ``float_model`` is not
    modified; the returned ``Flow.float_model`` is a copy of it.
    """
    if float_model is None:
        float_model = mlp_qat("fbgemm", seed).float_model
    with _deterministic(seed, engine):
        fm = copy.deepcopy(float_model).eval()
        model = copy.deepcopy(fm)
        model.qconfig = tq.get_default_qconfig(engine)
        prepared = tq.prepare(model)
        calib = torch.cat([x for x, _ in mlp_batches(seed)])
        with torch.no_grad():
            prepared(calib)
        converted = tq.convert(prepared)
    return Flow(fm, prepared, converted, calib)


def convnet_ptq(engine: str = "x86", seed: int = 0) -> Flow:
    """Static PTQ of SmallConvNet: eval-mode fusion, ``get_default_qconfig(engine)``.

    The float model gets non-trivial BatchNorm state first: random affine params and
    a few train-mode forward passes so running_mean/running_var move; then ``.eval()``.
    ``fuse_modules`` folds the BNs (ConvBnReLU -> ConvReLU2d, ConvBn -> Conv2d), so
    the converted state_dict has no BN keys. Calibrated on 4 batches of 8 images.
    """
    with _deterministic(seed, engine):
        fm = models.SmallConvNet()
        g = _gen(seed + 1)
        with torch.no_grad():
            for bn in (fm.features[1], fm.bn2):
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            fm.train()
            for _ in range(5):
                fm(torch.rand(CONV_BATCH, 1, 28, 28, generator=g) * 2.0 - 0.5)
        fm.eval()
        fused = tq.fuse_modules(copy.deepcopy(fm), [list(f) for f in models.SmallConvNet.FUSE])
        fused.qconfig = tq.get_default_qconfig(engine)
        prepared = tq.prepare(fused)
        batches = conv_batches(seed)
        with torch.no_grad():
            for x in batches:
                prepared(x)
        converted = tq.convert(prepared)
    return Flow(fm, prepared, converted, torch.cat(batches))


def lstm_dynamic(engine: str = "fbgemm", seed: int = 0) -> Flow:
    """``quantize_dynamic(TinyLSTM, {nn.LSTM, nn.Linear}, dtype=torch.qint8)``."""
    with _deterministic(seed, engine):
        fm = models.TinyLSTM().eval()
        converted = tq.quantize_dynamic(fm, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    return Flow(fm, None, converted, lstm_sample(seed))


def dynlinear_dynamic(
    dtype: torch.dtype = torch.qint8, engine: str = "fbgemm", seed: int = 0
) -> Flow:
    """``quantize_dynamic(DynamicLinear, {nn.Linear}, dtype=dtype)``; qint8 or float16.

    The same seed gives the same float weights for both dtypes.
    """
    with _deterministic(seed, engine):
        fm = models.DynamicLinear().eval()
        converted = tq.quantize_dynamic(fm, {nn.Linear}, dtype=dtype)
    example = torch.randn(4, 32, generator=_gen(seed + _SAMPLE_SEED_OFFSET))
    return Flow(fm, None, converted, example)


def embbag_weight_only(engine: str = "fbgemm", seed: int = 0) -> Flow:
    """Weight-only 4-bit quantization of TinyEmbeddingBag's EmbeddingBag and Embedding.

    ``float_qparams_weight_only_qconfig_4bit`` on both modules, ``prepare``, ``convert``.
    torch's quantized ``Embedding.from_float`` builds the module with its default
    dtype, so ``emb._packed_params.dtype`` says quint8 while the packed weight is
    quint4x2 (and the converted ``emb`` returns wrong-shaped output). Kept as is: it
    is what torch really writes.
    """
    with _deterministic(seed, engine):
        fm = models.TinyEmbeddingBag().eval()
        model = copy.deepcopy(fm)
        model.emb_bag.qconfig = tq.float_qparams_weight_only_qconfig_4bit
        model.emb.qconfig = tq.float_qparams_weight_only_qconfig_4bit
        prepared = tq.prepare(model)
        converted = tq.convert(prepared)
    return Flow(fm, prepared, converted, embbag_sample(seed))
