"""Small models of the families ``qinspect check`` must pass, each through a real eager flow.

Shaped like torchvision's quantizable models (torchvision cannot be installed here):
``torchvision/models/quantization/{resnet,mobilenetv2,mobilenetv3,googlenet}.py`` --
QuantStub/DeQuantStub, conv-bn(-relu) fused before prepare, residual adds through a
``FloatFunctional``. Like torchvision's ``QuantizableInvertedResidual``, every inverted
residual block registers a ``skip_add`` but calls it only when the block has a residual
connection, so the others keep torch's initial 1.0 / 0 after convert.
Each builder returns ``(converted_model, example_input)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
import torch_models as tm
from torch import nn


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _fuse_conv_bn(model: nn.Module) -> None:
    """Fuse every Sequential(Conv2d, BatchNorm2d[, ReLU]) in place, as torchvision does."""
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential) and len(module) >= 2 and isinstance(
                module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d):
            names = ["0", "1"] + (["2"] if len(module) > 2 and isinstance(module[2], nn.ReLU)
                                  else [])
            tq.fuse_modules(module, [names], inplace=True)


class Basic(nn.Module):
    """ResNet BasicBlock (torchvision's QuantizableBasicBlock: add_relu via FloatFunctional)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1, act=None)
        self.down = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout \
            else None
        self.add_relu = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        return self.add_relu.add_relu(self.conv2(self.conv1(x)), identity)


class ResNetShaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.stem = _conv_bn(3, 8, 3, 2)
        self.layer1 = nn.Sequential(Basic(8, 8, 1), Basic(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layer1(self.stem(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: ``skip_add`` registered always, called only with a residual."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int,
                 act: type[nn.Module] = nn.ReLU, se: bool = False) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, act=act))
        layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(_conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.skip_add = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return self.skip_add.add(x, self.block(x))
        return self.block(x)


class SqueezeExcite(nn.Module):
    """torchvision's QuantizableSqueezeExcitation: hardsigmoid scale through skip_mul."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, max(channels // 4, 4), 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(max(channels // 4, 4), channels, 1)
        self.hsig = nn.Hardsigmoid()
        self.skip_mul = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.hsig(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return self.skip_mul.mul(scale, x)


class MobileNetShaped(nn.Module):
    def __init__(self, v3: bool) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if v3 else nn.ReLU
        self.quant = tq.QuantStub()
        self.features = nn.Sequential(
            _conv_bn(3, 8, 3, 2, act=act),
            InvertedResidual(8, 8, 1, 1, act, se=v3),    # residual: skip_add used
            InvertedResidual(8, 12, 2, 4, act),          # no residual: skip_add unused
            InvertedResidual(12, 12, 1, 3, act, se=v3),  # residual
            InvertedResidual(12, 16, 2, 3, act),         # unused
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.quant(x)))
        return self.dequant(self.classifier(torch.flatten(x, 1)))


class Inception(nn.Module):
    """GoogLeNet's QuantizableInception: four branches joined by ``cat`` (FloatFunctional)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = _conv_bn(cin, 4, 1)
        self.b2 = nn.Sequential(_conv_bn(cin, 4, 1), _conv_bn(4, 6, 3))
        self.b3 = nn.Sequential(_conv_bn(cin, 2, 1), _conv_bn(2, 4, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(cin, 4, 1))
        self.cat = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cat.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNetShaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.stem = _conv_bn(3, 8, 3, 2)
        self.inc1 = Inception(8)
        self.inc2 = Inception(18)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(18, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.inc2(self.inc1(self.stem(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class BertShaped(nn.Module):
    """An encoder layer's modules (embeddings, attention and FFN Linears, LayerNorms):
    quantize_dynamic turns the Linears into dynamic int8 ones."""

    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(50, 16)
        self.position = nn.Embedding(12, 16)
        self.norm0 = nn.LayerNorm(16)
        self.query, self.key, self.value = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.attn_out = nn.Linear(16, 16)
        self.norm1 = nn.LayerNorm(16)
        self.ffn_in, self.ffn_out = nn.Linear(16, 32), nn.Linear(32, 16)
        self.norm2 = nn.LayerNorm(16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm0(self.word(ids) + self.position(torch.arange(ids.shape[1])))
        q, k, v = self.query(x), self.key(x), self.value(x)
        att = torch.softmax(q @ k.transpose(1, 2) / 4.0, -1) @ v
        x = self.norm1(x + self.attn_out(att))
        return self.norm2(x + self.ffn_out(torch.relu(self.ffn_in(x))))


def _static(model: nn.Module, shape: tuple[int, ...], seed: int) -> tuple[nn.Module, torch.Tensor]:
    """Fuse, prepare with the x86 qconfig, calibrate on 4 batches, convert."""
    torch.manual_seed(seed)
    model.eval()
    _fuse_conv_bn(model)
    model.qconfig = tq.get_default_qconfig("x86")
    with tm.engine("x86"):
        prepared = tq.prepare(model)
        for _ in range(4):
            prepared(torch.randn(*shape))
        converted = tq.convert(prepared)
    return converted, torch.randn(*shape)


def resnet(seed: int = 0):
    torch.manual_seed(seed)
    return _static(ResNetShaped(), (2, 3, 16, 16), seed)


def mobilenet_v2(seed: int = 0):
    torch.manual_seed(seed)
    return _static(MobileNetShaped(v3=False), (2, 3, 16, 16), seed)


def mobilenet_v3(seed: int = 0):
    torch.manual_seed(seed)
    return _static(MobileNetShaped(v3=True), (2, 3, 16, 16), seed)


def googlenet(seed: int = 0):
    torch.manual_seed(seed)
    return _static(GoogLeNetShaped(), (2, 3, 16, 16), seed)


def mlp(seed: int = 0):
    return tm.mlp_ptq(seed=seed)[2], torch.randn(4, 20)


def mlp_qat(seed: int = 0):
    return tm.mlp_qat("fbgemm", seed=seed)[2], torch.randn(4, 20)


def lstm_dynamic(seed: int = 0):
    return tm.dynamic(torch.qint8, seed=seed)[1], None


def bert_dynamic(seed: int = 0):
    torch.manual_seed(seed)
    model = BertShaped().eval()
    with tm.engine("x86"):
        q = tq.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return q, torch.randint(0, 50, (2, 12))


def embeddings_4bit(seed: int = 0):
    return tm.embeddings(True, seed=seed)[1], None


def embeddings_8bit(seed: int = 0):
    return tm.embeddings(False, seed=seed)[1], None


FAMILIES: dict[str, Callable[[], tuple[nn.Module, torch.Tensor | None]]] = {
    "mlp": mlp, "mlp_qat": mlp_qat, "resnet": resnet, "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3, "googlenet": googlenet, "lstm_dynamic": lstm_dynamic,
    "bert_dynamic": bert_dynamic, "embeddings_4bit": embeddings_4bit,
    "embeddings_8bit": embeddings_8bit,
}
