"""A ResNet-18-shaped eager-mode quantizable network (the ``verify`` benchmark model).

Same layer shapes as torchvision's resnet18 (BasicBlocks 64-128-256-512, 1000 classes),
written out here so the benchmark needs no torchvision: QuantStub/DeQuantStub, residual
adds through FloatFunctional, conv-bn(-relu) fused by :func:`fuse`.
``qinspect verify --model benchmarks/resnet.py:ResNet18Shaped`` builds it with no arguments.
"""

from __future__ import annotations

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))
        self.add = nnq.FloatFunctional()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add.add(out, identity))


class ResNet18Shaped(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.quant(x)))))
        x = self.avgpool(self.layers(x))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def fuse(model: ResNet18Shaped) -> ResNet18Shaped:
    """Fuse conv-bn(-relu) in place (eval mode), as eager static quantization expects."""
    tq.fuse_modules(model, [["conv1", "bn1", "relu"]], inplace=True)
    for block in model.layers:
        tq.fuse_modules(block, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]], inplace=True)
        if block.downsample is not None:
            tq.fuse_modules(block.downsample, [["0", "1"]], inplace=True)
    return model
