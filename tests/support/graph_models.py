"""Small quantizable CNNs shaped like torchvision's quantized ResNet, MobileNetV3 and
GoogLeNet (torchvision cannot be installed next to the CPU build of torch here), written
out the way ``torchvision.models.quantization`` writes them: QuantStub/DeQuantStub,
FloatFunctional adds/muls/cats, conv-bn(-relu) fused before eager PTQ, Hardswish and
Hardsigmoid, max-pooling with ``ceil_mode``, adaptive average pooling, flatten, dropout.

:func:`quantize` runs the real eager flow (fuse, prepare, calibrate, convert),
:func:`quantize_fx` the FX graph mode one, and :func:`scripted` what users save:
``torch.jit.save(torch.jit.script(model))``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
         act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- ResNet -----------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision ``QuantizableBasicBlock``: add_relu through FloatFunctional."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))
        self.add_relu = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.add_relu.add_relu(out, identity)

    def fuse(self) -> None:
        tq.fuse_modules(self, [["conv1", "bn1", "relu"], ["conv2", "bn2"]], inplace=True)
        if self.downsample is not None:
            tq.fuse_modules(self.downsample, [["0", "1"]], inplace=True)


class ResNetShaped(nn.Module):
    """torchvision ``QuantizableResNet`` (stem conv 7x7/2, max-pool 3/2, two stages)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):  # no annotations: FX copies them into code TorchScript rejects
        x = self.quant(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.dequant(self.fc(x))

    def fuse(self) -> None:
        tq.fuse_modules(self, [["conv1", "bn1", "relu"]], inplace=True)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                m.fuse()


# --- MobileNetV3 ----------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """torchvision ``QuantizableSqueezeExcitation``: hardsigmoid scale, FloatFunctional mul."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()
        self.skip_mul = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.skip_mul.mul(self.scale_activation(scale), x)

    def fuse(self) -> None:
        tq.fuse_modules(self, [["fc1", "activation"]], inplace=True)


class InvertedResidual(nn.Module):
    """torchvision ``QuantizableInvertedResidual`` (expand, depthwise, SE, project)."""

    def __init__(self, cin: int, expand: int, cout: int, k: int, stride: int, se: bool,
                 act: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expand != cin:
            layers.append(_cbr(cin, expand, 1, act=act))
        layers.append(_cbr(expand, expand, k, stride, groups=expand, act=act))
        if se:
            layers.append(SqueezeExcitation(expand, max(8, expand // 4)))
        layers.append(_cbr(expand, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.skip_add = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.skip_add.add(result, x)
        return result


class MobileNetV3Shaped(nn.Module):
    """torchvision ``QuantizableMobileNetV3`` (small), a few blocks."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _cbr(3, 16, 3, 2, act=nn.Hardswish),
            InvertedResidual(16, 16, 16, 3, 2, True, nn.ReLU),
            InvertedResidual(16, 72, 24, 3, 2, False, nn.ReLU),
            InvertedResidual(24, 88, 24, 3, 1, False, nn.ReLU),
            InvertedResidual(24, 96, 40, 5, 2, True, nn.Hardswish),
            _cbr(40, 96, 1, act=nn.Hardswish))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(64, num_classes))
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):  # no annotations: FX copies them into code TorchScript rejects
        x = self.quant(x)
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.dequant(self.classifier(x))

    def fuse(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[0], nn.Conv2d) \
                    and isinstance(m[1], nn.BatchNorm2d):
                names = ["0", "1"] + (["2"] if len(m) > 2 and isinstance(m[2], nn.ReLU) else [])
                tq.fuse_modules(m, [names], inplace=True)
            if isinstance(m, SqueezeExcitation):
                m.fuse()


# --- GoogLeNet ------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """torchvision ``QuantizableBasicConv2d``: conv-bn-relu."""

    def __init__(self, cin: int, cout: int, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))

    def fuse(self) -> None:
        tq.fuse_modules(self, [["conv", "bn", "relu"]], inplace=True)


class Inception(nn.Module):
    """torchvision ``QuantizableInception``: four branches, FloatFunctional cat."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int
                 ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1),
                                     BasicConv2d(c3r, c3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, kernel_size=1),
                                     BasicConv2d(c5r, c5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     BasicConv2d(cin, pool, kernel_size=1))
        self.cat = nnq.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return self.cat.cat(outputs, 1)


class GoogLeNetShaped(nn.Module):
    """torchvision ``QuantizableGoogLeNet`` (no aux heads, transform_input off)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, 16, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(16, 16, kernel_size=1)
        self.conv3 = BasicConv2d(16, 32, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(32, 8, 12, 16, 4, 8, 8)
        self.inception3b = Inception(40, 16, 16, 24, 4, 12, 8)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(60, num_classes)
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):  # no annotations: FX copies them into code TorchScript rejects
        x = self.quant(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return self.dequant(self.fc(x))

    def fuse(self) -> None:
        for m in self.modules():
            if isinstance(m, BasicConv2d):
                m.fuse()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet": ResNetShaped, "mobilenet_v3": MobileNetV3Shaped, "googlenet": GoogLeNetShaped}


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, as a trained model has (so folding matters)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def float_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    _randomise_bn(model, seed)
    return model


def quantize(float_m: nn.Module, engine: str, batches: list[torch.Tensor]) -> nn.Module:
    """Eager PTQ as torchvision's quantized models are made: fuse, qconfig of ``engine``,
    prepare, calibrate, convert."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        m = copy.deepcopy(float_m).eval()
        m.fuse()
        m.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(m, inplace=True)
        with torch.no_grad():
            for x in batches:
                m(x)
        tq.convert(m, inplace=True)
    finally:
        torch.backends.quantized.engine = old
    return m


def quantize_fx(float_m: nn.Module, engine: str, batches: list[torch.Tensor]) -> nn.Module:
    """FX graph mode PTQ: prepare_fx with the engine's default qconfig mapping (it fuses
    conv-bn-relu itself), calibrate, convert_fx."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        m = prepare_fx(copy.deepcopy(float_m).eval(), get_default_qconfig_mapping(engine),
                       (batches[0],))
        with torch.no_grad():
            for x in batches:
                m(x)
        return convert_fx(m)
    finally:
        torch.backends.quantized.engine = old


def scripted(model: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(model), path)
    return path


def calibration(seed: int = 0, n: int = 4, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, size, size, generator=g) for _ in range(n)]


def run(model: nn.Module, x: torch.Tensor, engine: str) -> torch.Tensor:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with torch.no_grad():
            return model(x)
    finally:
        torch.backends.quantized.engine = old


__all__ = ["MODELS", "F", "calibration", "float_model", "quantize", "quantize_fx", "run",
           "scripted"]
