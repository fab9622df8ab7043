"""What a torch module class computes, from its name (archives that store the class:
TorchScript, pickled GraphModules). A state_dict has no class names; its loaders decide the
op from the keys and shapes instead (:mod:`qinspect.loaders.eager`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from qinspect.model import OpKind

FUSED_RELU = re.compile(r"^(Conv|ConvAdd|Linear|BN)ReLU(\dd)?$")
"""torch.ao.nn.intrinsic(.quantized) classes with a ReLU fused in: ConvReLU2d, LinearReLU,
BNReLU2d, ConvAddReLU2d (``LinearLeakyReLU`` fuses a leaky ReLU, not a ReLU)."""
NORMS = ("LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
ACTIVATIONS = ("Hardswish", "ELU", "LeakyReLU", "Sigmoid", "Softmax", "ReLU6", "ReLU", "Tanh",
               "PReLU", "Dropout", "Threshold", "Hardsigmoid", "Hardtanh")


@dataclass(frozen=True)
class ClassOp:
    op: OpKind
    fused_relu: bool


def class_op(name: str) -> ClassOp | None:
    """The op of a torch module class (short name: ``ConvReLU2d``), None when unknown."""
    relu = bool(FUSED_RELU.match(name))
    if name.startswith("ConvTranspose"):
        return ClassOp(OpKind.CONV_TRANSPOSE, relu)
    if name.startswith("Conv"):
        return ClassOp(OpKind.CONV, relu)
    if name.startswith("Linear"):
        return ClassOp(OpKind.LINEAR, relu)
    if name.startswith(("BatchNorm", "BNReLU")):
        return ClassOp(OpKind.BATCH_NORM, relu)
    if name in NORMS:
        return ClassOp(OpKind.NORM, False)
    if name in ("Embedding", "EmbeddingBag"):
        return ClassOp(OpKind.EMBEDDING, False)
    if name in ("QFunctional", "FloatFunctional", "FXFloatFunctional"):
        return ClassOp(OpKind.FUNCTIONAL, False)
    if name in ("Quantize", "QuantStub"):
        return ClassOp(OpKind.QUANTIZE, False)
    if name in ACTIVATIONS:
        return ClassOp(OpKind.ACTIVATION, False)
    return None
