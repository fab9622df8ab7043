"""Recover "which tensor feeds which quantized layer" from TorchScript source, by parsing.

A TorchScript archive stores each class's methods as Python-syntax source under
``code/__torch__/``. This module parses that text with :mod:`ast` (never compiles or
executes it) and walks ``forward`` symbolically: variables hold module references,
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
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 64
MAX_STATEMENTS = 200_000


@dataclass(frozen=True)
class ModRef:
    path: str
    qualname: str


@dataclass(frozen=True)
class AttrRef:
    key: str


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


def parse_classes(sources: dict[str, str]
                  ) -> tuple[dict[str, ast.ClassDef | ast.FunctionDef], list[str]]:
    """``{record path: source}`` -> ``{qualified name: ClassDef}``, plus the scripted
    module-level helper functions the archive holds (``__torch__.torch.nn.functional.
    _max_pool2d``...) as ``{qualified name: FunctionDef}``, for ``verify`` to interpret."""
    classes: dict[str, ast.ClassDef | ast.FunctionDef] = {}
    problems: list[str] = []
    for record, text in sources.items():
        module = record.removeprefix("code/").removesuffix(".py").replace("/", ".")
        try:
            tree = ast.parse(text, filename=record)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            problems.append(f"{record}: not parseable ({type(exc).__name__})")
            continue
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                classes[f"{module}.{node.name}"] = node
    return classes, problems


class Walker:
    def __init__(self, classes: dict[str, ast.ClassDef], modules: dict[str, str],
                 layers: set[str], match_literal: Any) -> None:
        self.classes = classes
        self.modules = modules
        self.layers = layers
        self.match_literal = match_literal
        self.graph = Graph()
        self.steps = 0
        self._counter = 0

    # --- entry -------------------------------------------------------------------
    def run(self, root_qualname: str) -> Graph:
        try:
            self.call_method(ModRef("", root_qualname), "forward", None, depth=0)
        except _Stop as stop:
            self.graph.problems.append(str(stop))
        except RecursionError:
            self.graph.problems.append("code nested too deeply to follow; input sources "
                                       "beyond this point are not known")
        return self.graph

    # --- modules -----------------------------------------------------------------
    def call_method(self, mod: ModRef, method: str, args: list[Any] | None,
                    depth: int) -> Any:
        if mod.path in self.layers and mod.path != "":
            tensors = [_producer(a) for a in _flatten(args or []) if isinstance(a, TensorVal)]
            if mod.path not in self.graph.inputs:
                self.graph.inputs[mod.path] = tensors
                self.graph.order.append(mod.path)
            return TensorVal(mod.path)
        func = self._find_method(mod.qualname, method)
        if func is None or depth > MAX_DEPTH:
            return _first_tensor(args or [])
        params = [a.arg for a in func.args.args]
        env: dict[str, Any] = {}
        if params:
            env[params[0]] = mod
        if args is None:  # the root's forward: its inputs are float tensors
            args = [TensorVal(None) for _ in params[1:]]
        for name, value in zip(params[1:], args, strict=False):
            env[name] = value
        return self.block(func.body, env, mod, depth)

    def _find_method(self, qualname: str, method: str) -> ast.FunctionDef | None:
        cls = self.classes.get(qualname)
        if not isinstance(cls, ast.ClassDef):
            return None
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and node.name == method:
                return node
        return None

    # --- statements --------------------------------------------------------------
    def block(self, body: list[ast.stmt], env: dict[str, Any], mod: ModRef,
              depth: int) -> Any:
        result: Any = None
        for stmt in body:
            self.steps += 1
            if self.steps > MAX_STATEMENTS:
                raise _Stop("graph too large to walk; input sources beyond this point "
                            "are not known")
            if isinstance(stmt, ast.Return):
                return self.expr(stmt.value, env, mod, depth) if stmt.value else None
            if isinstance(stmt, ast.Assign):
                value = self.expr(stmt.value, env, mod, depth)
                for target in stmt.targets:
                    self.assign(target, value, env)
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                self.assign(stmt.target, self.expr(stmt.value, env, mod, depth), env)
            elif isinstance(stmt, ast.Expr):
                self.expr(stmt.value, env, mod, depth)
            elif isinstance(stmt, ast.If):
                self.expr(stmt.test, env, mod, depth)
                first = self.block(stmt.body, env, mod, depth)
                second = self.block(stmt.orelse, env, mod, depth)
                result = first if first is not None else second
            elif isinstance(stmt, (ast.For, ast.While)):
                self.block(stmt.body, env, mod, depth)
        return result

    def assign(self, target: ast.expr, value: Any, env: dict[str, Any]) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            parts = value if isinstance(value, tuple) and len(value) == len(target.elts) \
                else [value] * len(target.elts)
            for sub, part in zip(target.elts, parts, strict=False):
                self.assign(sub, part, env)

    # --- expressions -------------------------------------------------------------
    def expr(self, node: ast.expr | None, env: dict[str, Any], mod: ModRef,
             depth: int) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return env.get(node.id, _Global(node.id))
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and \
                isinstance(node.operand, ast.Constant) and \
                isinstance(node.operand.value, (int, float)):
            return -node.operand.value
        if isinstance(node, ast.Attribute):
            base = self.expr(node.value, env, mod, depth)
            return self.attribute(base, node.attr)
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self.expr(e, env, mod, depth) for e in node.elts)
        if isinstance(node, ast.Subscript):
            base = self.expr(node.value, env, mod, depth)
            index = self.expr(node.slice, env, mod, depth)
            if isinstance(base, tuple) and isinstance(index, int) and -len(base) <= index \
                    < len(base):
                return base[index]
            return _first_tensor([base])
        if isinstance(node, ast.Call):
            return self.call(node, env, mod, depth)
        if isinstance(node, ast.IfExp):
            return self.expr(node.body, env, mod, depth)
        if isinstance(node, (ast.BinOp, ast.BoolOp, ast.Compare)):
            parts = [getattr(node, "left", None), getattr(node, "right", None),
                     *getattr(node, "values", []), *getattr(node, "comparators", [])]
            return _first_tensor([self.expr(p, env, mod, depth) for p in parts if p])
        return None

    def attribute(self, base: Any, name: str) -> Any:
        if isinstance(base, ModRef):
            path = f"{base.path}.{name}" if base.path else name
            if path in self.modules:
                return ModRef(path, self.modules[path])
            return AttrRef(path)
        if isinstance(base, _Global):
            return _Global(f"{base.name}.{name}")
        if isinstance(base, TensorVal):
            return _Method(base, name)
        return None

    def call(self, node: ast.Call, env: dict[str, Any], mod: ModRef, depth: int) -> Any:
        func = self.expr(node.func, env, mod, depth)
        args = [self.expr(a, env, mod, depth) for a in node.args]
        args += [self.expr(k.value, env, mod, depth) for k in node.keywords]
        if isinstance(func, AttrRef) and isinstance(node.func, ast.Attribute):
            owner = self.expr(node.func.value, env, mod, depth)
            if isinstance(owner, ModRef):  # a method of a module: (fc1).forward(x)
                return self.call_method(owner, node.func.attr, args, depth + 1)
        if isinstance(func, ModRef):  # FX code: self.fc1(x)
            return self.call_method(func, "forward", args, depth + 1)
        if isinstance(func, _Method):
            return TensorVal(None) if func.name == "dequantize" else func.tensor
        if not isinstance(func, _Global):
            return _first_tensor(args)
        name = func.name
        if name == "getattr" and len(args) >= 2 and isinstance(args[0], ModRef):
            return self.attribute(args[0], str(args[1]))
        if name in ("float", "int") and args:
            return args[0]
        if name == "annotate" and len(args) == 2:
            return args[1]
        if name == "torch.quantize_per_tensor" and len(args) >= 3:
            return self.quantize(args)
        if name == "torch.dequantize":
            return TensorVal(None)
        name = name.removeprefix("torch.") if name.startswith("torch.ops.") else name
        if name.startswith("ops.quantized."):
            return self.quantized_op(name.removeprefix("ops.quantized."), args)
        return _first_tensor(args)

    def quantize(self, args: list[Any]) -> TensorVal:
        scale, zp = args[1], args[2]
        if isinstance(scale, AttrRef):
            name = scale.key
        else:
            self._counter += 1
            name = f"quantize_per_tensor#{self._counter}"
        src = _producer(args[0]) if isinstance(args[0], TensorVal) else None
        self.graph.quantizes.append(QuantizeNode(name, scale, zp, src))
        self.graph.order.append(name)
        return TensorVal(name)

    def quantized_op(self, op: str, args: list[Any]) -> TensorVal:
        tensors = [a for a in _flatten(args) if isinstance(a, TensorVal)]
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


@dataclass(frozen=True)
class _Global:
    name: str


@dataclass(frozen=True)
class _Method:
    tensor: TensorVal
    name: str


class _Stop(Exception):
    pass


def _flatten(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, tuple):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _first_tensor(values: list[Any]) -> Any:
    for v in _flatten(values):
        if isinstance(v, TensorVal):
            return v
    return None


def _producer(t: TensorVal) -> str | None:
    return t.producer
