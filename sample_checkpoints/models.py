"""Float model classes behind the sample checkpoints.

Every class is constructible with no arguments, so a user can point qinspect at
``sample_checkpoints/models.py:MnistMLP`` and have the tool build the float model and
load a ``*_fp32.pt`` state_dict into it.

The static-quantization models follow the eager-mode recipe: a ``QuantStub`` first, a
``DeQuantStub`` last, and ``FloatFunctional`` for tensor adds, so that
``torch.ao.quantization.prepare``/``convert`` can swap them for quantized modules.
Nothing here does work at import time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

__all__ = [
    "MnistMLP",
    "MnistMLPFused",
    "SmallConvNet",
    "TinyLSTM",
    "TinyEmbeddingBag",
    "DynamicLinear",
]


class MnistMLP(nn.Module):
    """784 -> 128 -> ReLU -> 10, ReLU as its own module (not fused).

    After eager-mode conversion the ReLU runs on fc1's *quantized* output, so fc1's
    output scale has to cover the negative half that ReLU then throws away.
    """

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.fc1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.relu(self.fc1(x))
        x = self.fc2(x)
        return self.dequant(x)


class MnistMLPFused(MnistMLP):
    """Same layers and state_dict keys as :class:`MnistMLP`.

    Meant to be fused with ``fuse_modules(model, [FUSE])`` (fc1 + relu -> LinearReLU)
    before QAT/PTQ, so that after conversion nothing runs between fc1 and fc2.
    """

    FUSE: tuple[str, ...] = ("fc1", "relu")


class SmallConvNet(nn.Module):
    """Conv-BN-ReLU stem, one residual Conv-BN block, add, ReLU, pool, Linear.

    Input: (N, 1, 28, 28). Fusion lists for the quantized version: :attr:`FUSE`.
    """

    FUSE: tuple[tuple[str, ...], ...] = (
        ("features.0", "features.1", "features.2"),
        ("conv2", "bn2"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = FloatFunctional()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        h = self.features(x)
        x = self.add.add(h, self.bn2(self.conv2(h)))
        x = self.pool(self.relu(x))
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return self.dequant(x)


class TinyLSTM(nn.Module):
    """2-layer LSTM(16 -> 32) with a Linear(32 -> 8) head; input (seq, batch, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, num_layers=2)
        self.fc = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out)


class TinyEmbeddingBag(nn.Module):
    """EmbeddingBag(100, 16, sum) and Embedding(50, 8), for weight-only quantization.

    ``forward(bag_indices, bag_offsets, emb_indices)`` returns both lookups.
    """

    def __init__(self) -> None:
        super().__init__()
        self.emb_bag = nn.EmbeddingBag(100, 16, mode="sum")
        self.emb = nn.Embedding(50, 8)

    def forward(
        self,
        bag_indices: torch.Tensor,
        bag_offsets: torch.Tensor,
        emb_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.emb_bag(bag_indices, bag_offsets), self.emb(emb_indices)


class DynamicLinear(nn.Module):
    """Linear(32 -> 64) -> ReLU -> Linear(64 -> 16), for dynamic quantization."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))
