"""Small models built with the real torch quantization flows, for tests.

Every function returns the live torch objects, so tests compare qinspect's numbers with
what torch itself reports for the same modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.ao.quantization as tq
from torch import nn

warnings.filterwarnings("ignore")


@contextmanager
def engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


class MLP(nn.Module):
    def __init__(self, fuse: bool = False) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.fc1 = nn.Linear(20, 16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 6)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


def mlp_qat(backend: str = "fbgemm", seed: int = 0, fuse: bool = False):
    """(float, prepared, converted) of a QAT-trained MLP."""
    torch.manual_seed(seed)
    model = MLP()
    if fuse:
        model.eval()
        model = tq.fuse_modules(model, [["fc1", "relu"]])
    model.train()
    model.qconfig = tq.get_default_qat_qconfig(backend)
    with engine(backend if backend != "x86" else "x86"):
        prepared = tq.prepare_qat(model)
        opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
        for _ in range(4):
            x = torch.randn(8, 20)
            loss = prepared(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        prepared.eval()
        converted = tq.convert(prepared)
    return model, prepared, converted


class ConvZoo(nn.Module):
    """Every static eager module kind we attribute, in one calibratable network."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.c1 = nn.Conv1d(3, 4, 1)
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm([4, 6, 6])
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.hs = nn.Hardswish()
        self.elu = nn.ELU()
        self.lrelu = nn.LeakyReLU(0.1)
        self.add = nn.quantized.FloatFunctional()
        self.mul = nn.quantized.FloatFunctional()
        self.cat = nn.quantized.FloatFunctional()
        self.ct = nn.ConvTranspose2d(8, 2, 2)
        self.c3 = nn.Conv3d(2, 2, 1)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        y = self.block(x)
        y = self.bn(y)
        y = self.inorm(self.gn(self.ln(y)))
        y = self.lrelu(self.elu(self.hs(y)))
        z = self.add.add(y, y)
        z = self.mul.mul(z, y)
        z = self.cat.cat([z, y], 1)
        z = self.ct(z)
        z = self.c3(z.unsqueeze(2)).squeeze(2)
        c = self.c1(x.flatten(2)[:, :, :6])
        return self.dequant(z), self.dequant(c)


def conv_zoo(seed: int = 0):
    torch.manual_seed(seed)
    model = ConvZoo().eval()
    model = tq.fuse_modules(model, [["block.0", "block.1", "block.2"]])
    model.qconfig = tq.get_default_qconfig("x86")
    model.ct.qconfig = tq.default_qconfig  # ConvTranspose: per-tensor weights only
    with engine("x86"):
        prepared = tq.prepare(model)
        for _ in range(3):
            prepared(torch.randn(2, 3, 6, 6))
        converted = tq.convert(prepared)
    return model, prepared, converted


class Dyn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 5)
        self.lstm = nn.LSTM(8, 6, num_layers=2)
        self.gru = nn.GRU(8, 4)


def dynamic(dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    model = Dyn().eval()
    with engine("x86"):
        types = {nn.Linear, nn.LSTM, nn.GRU} if dtype == torch.qint8 else {nn.Linear}
        q = tq.quantize_dynamic(model, types, dtype=dtype)
    return model, q


class Emb(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.bag = nn.EmbeddingBag(30, 8, mode="sum")


def embeddings(four_bit: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = Emb().eval()
    qc = (tq.float_qparams_weight_only_qconfig_4bit if four_bit
          else tq.float_qparams_weight_only_qconfig)
    model.emb.qconfig = qc
    model.bag.qconfig = qc
    q = tq.convert(tq.prepare(model))
    return model, q


def ptq_prepared(seed: int = 0):
    torch.manual_seed(seed)
    model = MLP().eval()
    model.qconfig = tq.get_default_qconfig("x86")
    with engine("x86"):
        prepared = tq.prepare(model)
        prepared(torch.randn(4, 20))
    return prepared


class MLPWithSpare(MLP):
    """An MLP with a Linear that forward() never uses, so calibration never reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Linear(16, 6)


def mlp_ptq(backend: str = "x86", seed: int = 0, spare: bool = False,
            float_modules: tuple[str, ...] = (), calibrate: bool = True,
            calibration_std: float = 1.0):
    """(float, prepared, converted) of a post-training-quantized MLP.

    ``spare`` adds a module forward() never calls (torch leaves its output qparams at
    1.0/0); ``float_modules`` get ``qconfig = None`` and stay float after convert;
    calibration data is ``randn * calibration_std`` (small: activation ranges too narrow
    for standard-normal inputs).
    """
    torch.manual_seed(seed)
    model = (MLPWithSpare() if spare else MLP()).eval()
    model.qconfig = tq.get_default_qconfig(backend)
    for name in float_modules:
        model.get_submodule(name).qconfig = None
    with engine(backend):
        prepared = tq.prepare(model)
        if calibrate:
            for _ in range(3):
                prepared(torch.randn(8, 20) * calibration_std)
        converted = tq.convert(prepared)
    return model, prepared, converted


def save(obj, path) -> str:
    torch.save(obj, path)
    return str(path)


# --- for `qinspect diff` ----------------------------------------------------------------


class ConvBN(nn.Module):
    """Conv-BN-ReLU nested one level deeper than usual (the int8 file has ``features.0.0``),
    a sibling Conv + BN with its own eps, and a Linear head."""

    def __init__(self, bn2_eps: float = 1e-5) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6, eps=bn2_eps)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 5)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv2(self.features(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


CONVBN_FUSE = [["features.0.0", "features.0.1", "features.0.2"], ["conv2", "bn2"]]


def _train_bn_stats(model: nn.Module) -> None:
    """Non-trivial BatchNorm affine params and running statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.3)
        model.train()
        for _ in range(4):
            model(torch.randn(4, 3, 6, 6) * 3 + 1)
    model.eval()


def convnet_bn(seed: int = 0, bn2_eps: float = 1e-5):
    """(float model with BatchNorms, converted model with BN folded by fuse_modules)."""
    torch.manual_seed(seed)
    model = ConvBN(bn2_eps)
    _train_bn_stats(model)
    fused = tq.fuse_modules(model, CONVBN_FUSE)  # not in place: model keeps its BNs
    fused.qconfig = tq.get_default_qconfig("x86")
    with engine("x86"):
        prepared = tq.prepare(fused)
        for _ in range(3):
            prepared(torch.randn(4, 3, 6, 6))
        converted = tq.convert(prepared)
    return model, converted


def mlp_qat_exact(backend: str = "fbgemm", seed: int = 0, fused_fake_quant: bool = False,
                  freeze: bool = True):
    """(prepared, converted) of a QAT MLP whose convert reproduces training bit for bit:
    the non-fused FakeQuantize qconfig (version 0) and observers disabled before convert.

    ``fused_fake_quant=True`` uses the default (fused) QAT qconfig instead, whose scales
    differ from convert's by 127/127.5; ``freeze=False`` leaves the observers on.
    """
    torch.manual_seed(seed)
    model = MLP().train()
    model.qconfig = (tq.get_default_qat_qconfig(backend) if fused_fake_quant
                     else tq.get_default_qat_qconfig(backend, version=0))
    with engine(backend):
        prepared = tq.prepare_qat(model)
        opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
        for _ in range(4):
            loss = prepared(torch.randn(8, 20)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if freeze:
            prepared.apply(tq.disable_observer)
        prepared.eval()
        converted = tq.convert(prepared)
    return prepared, converted


class BiLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True)


def bilstm_dynamic(seed: int = 0):
    """(float, dynamic int8) of a 2-layer bidirectional LSTM: 4 cells, directions alternate."""
    torch.manual_seed(seed)
    model = BiLSTM().eval()
    with engine("x86"):
        q = tq.quantize_dynamic(model, {nn.LSTM}, dtype=torch.qint8)
    return model, q


def convbn_qat_exact(seed: int = 0):
    """(prepared, converted) of QAT with fuse_modules_qat (ConvBnReLU2d keeps its BN as the
    child ``.bn``; convert folds it), non-fused fake-quants, observers and BN frozen."""
    torch.manual_seed(seed)
    model = ConvBN().train()
    model = tq.fuse_modules_qat(model, CONVBN_FUSE)
    model.qconfig = tq.get_default_qat_qconfig("x86", version=0)
    with engine("x86"):
        prepared = tq.prepare_qat(model)
        opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
        for _ in range(3):
            loss = prepared(torch.randn(4, 3, 6, 6)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        prepared.apply(tq.disable_observer)
        prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
        prepared.eval()
        converted = tq.convert(prepared)
    return prepared, converted
