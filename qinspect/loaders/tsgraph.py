"""Recover "which tensor feeds which quantized layer" from TorchScript source, by parsing.

:class:`GraphWalker` walks ``forward`` (with :class:`qinspect.loaders.tscode.CodeWalker`,
the walker ``verify`` runs too) *symbolically*: variables hold module references,
attribute references (``self.fc1_input_scale_0``) or tensors tagged with the layer that
produced them. Calls into modules that are layers of the checkpoint are recorded as
edges; calls into containers (``Sequential``, the root, ``DeQuantize``...) are followed
into their own ``forward``; ``torch.quantize_per_tensor`` and ``ops.quantized.*`` calls
outside layers are recorded with their scale/zero-point arguments (attributes or literals).
Everything else passes its first tensor argument's producer through (``relu``,
``flatten``, ``reshape`` keep a quantized tensor's qparams).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from qinspect.loaders.tscode import (
    AttrRef,
    Bound,
    Code,
    CodeWalker,
    Env,
    ModRef,
    flatten,
    quantized_op_name,
)


@dataclass(frozen=True)
class TensorVal:
    producer: str | None  # a node name; None: float (not quantized)


@dataclass
class QuantizeNode:
    name: str
    scale: Any  # AttrRef or a literal
    zero_point: Any
    source: str | None


@dataclass
class OpNode:
    name: str
    op: str
    inputs: list[str | None]
    scale: Any
    zero_point: Any
    weight: AttrRef | None


@dataclass
class Graph:
    """What the walk found: layer inputs, quantize nodes and functional ops, in order."""

    inputs: dict[str, list[str | None]] = field(default_factory=dict)
    quantizes: list[QuantizeNode] = field(default_factory=list)
    ops: list[OpNode] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class GraphWalker(CodeWalker):
    """The symbolic walk: a tensor is the node that produced it, every branch is walked,
    code it cannot follow passes its first tensor argument through."""

    all_paths = True

    def __init__(self, code: Code, modules: Mapping[str, str], layers: set[str],
                 match_literal: Callable[[float, int], str | None]) -> None:
        super().__init__(code, modules)
        self.layers = layers
        self.match_literal = match_literal
        """A literal (scale, zero point) of an op in traced code -> the layer storing it."""
        self.graph = Graph()
        self._counter = 0

    def run(self, root_qualname: str) -> Graph:
        forward = self.code.method(root_qualname, "forward")
        inputs = [TensorVal(None) for _ in (forward.args.args[1:] if forward else [])]
        try:  # the root's inputs are float tensors
            self.call_module(ModRef("", root_qualname), "forward", inputs, {}, 0)
        except _Stop as stop:
            self.graph.problems.append(str(stop))
        except RecursionError:
            self.graph.problems.append("code nested too deeply to follow; input sources "
                                       "beyond this point are not known")
        return self.graph

    # --- calls ------------------------------------------------------------------------
    def call_module(self, mod: ModRef, method: str, args: list[Any],
                    kwargs: dict[str, Any], depth: int) -> Any:
        if mod.path in self.layers and mod.path != "":
            tensors = [a.producer for a in flatten(args + list(kwargs.values()))
                       if isinstance(a, TensorVal)]
            if mod.path not in self.graph.inputs:
                self.graph.inputs[mod.path] = tensors
                self.graph.order.append(mod.path)
            return TensorVal(mod.path)
        func = self.code.method(mod.qualname, method)
        if func is None:
            return _first_tensor(args + list(kwargs.values()))
        return self.call_function(func, [mod, *args], kwargs, depth)

    def call_bound(self, owner: Any, name: str, args: list[Any],
                   kwargs: dict[str, Any]) -> Any:
        return TensorVal(None) if name == "dequantize" else owner

    def call_value(self, func: Any, args: list[Any]) -> Any:
        return _first_tensor(args)

    def call_global(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        args = args + list(kwargs.values())
        if name in ("float", "int") and args:
            return args[0]
        if name == "annotate" and len(args) == 2:
            return args[1]
        if name == "torch.quantize_per_tensor" and len(args) >= 3:
            return self.quantize(args)
        if name == "torch.dequantize":
            return TensorVal(None)
        op = quantized_op_name(name)
        if op is not None:
            return self.quantized_op(op, args)
        return _first_tensor(args)

    def quantize(self, args: list[Any]) -> TensorVal:
        scale, zp = args[1], args[2]
        if isinstance(scale, AttrRef):
            name = scale.key
        else:
            self._counter += 1
            name = f"quantize_per_tensor#{self._counter}"
        src = args[0].producer if isinstance(args[0], TensorVal) else None
        self.graph.quantizes.append(QuantizeNode(name, scale, zp, src))
        self.graph.order.append(name)
        return TensorVal(name)

    def quantized_op(self, op: str, args: list[Any]) -> TensorVal:
        tensors = [a for a in flatten(args) if isinstance(a, TensorVal)]
        weight = next((a for a in args if isinstance(a, AttrRef) and "packed" in a.key), None)
        qparams = [a for a in args[1:] if isinstance(a, (AttrRef, float, int))
                   and not isinstance(a, bool)]
        scale = zp = None
        if len(qparams) >= 2 and (isinstance(qparams[-2], (AttrRef, float))):
            scale, zp = qparams[-2], qparams[-1]
        if scale is None and weight is None:  # e.g. quantized.add(x, 1): same qparams
            return tensors[0] if tensors else TensorVal(None)
        inputs = [t.producer for t in tensors]
        if isinstance(scale, float) and isinstance(zp, int) and weight is None:
            matched = self.match_literal(scale, zp)
            if matched is not None:
                if matched not in self.graph.inputs:
                    self.graph.inputs[matched] = inputs
                    self.graph.order.append(matched)
                return TensorVal(matched)
        self._counter += 1
        name = f"{op}#{self._counter}"
        self.graph.ops.append(OpNode(name, op, inputs, scale, zp, weight))
        self.graph.order.append(name)
        return TensorVal(name)

    # --- everything else passes its first tensor through -------------------------------
    def operator(self, node: ast.expr, env: Env, depth: int) -> Any:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and \
                isinstance(node.operand, ast.Constant) and \
                isinstance(node.operand.value, (int, float)):
            return -node.operand.value
        if isinstance(node, ast.IfExp):
            return self.expr(node.body, env, depth)
        if isinstance(node, (ast.BinOp, ast.BoolOp, ast.Compare)):
            parts = [getattr(node, "left", None), getattr(node, "right", None),
                     *getattr(node, "values", []), *getattr(node, "comparators", [])]
            return _first_tensor([self.expr(p, env, depth) for p in parts if p])
        return None

    def value_attribute(self, base: Any, name: str) -> Any:
        return Bound(base, name) if isinstance(base, TensorVal) else None

    def no_item(self, base: Any, key: Any) -> Any:
        return _first_tensor([base])

    def unpack(self, value: Any, count: int) -> list[Any]:
        if isinstance(value, (list, tuple)) and len(value) == count:
            return list(value)
        return [value] * count

    def unsupported(self, what: str) -> Any:
        return None

    def too_deep(self, args: list[Any]) -> Any:
        return _first_tensor(args)

    def too_many_steps(self) -> NoReturn:
        raise _Stop("graph too large to walk; input sources beyond this point are not known")


class _Stop(Exception):
    pass


def _first_tensor(values: list[Any]) -> TensorVal | None:
    for v in flatten(values):
        if isinstance(v, TensorVal):
            return v
    return None
