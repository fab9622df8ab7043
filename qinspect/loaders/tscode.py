"""The one walker of the forward code a TorchScript archive or a pickled FX GraphModule
stores, used both to load the file and to ``verify`` it.

The code is parsed with :mod:`ast`, never compiled or executed: :func:`parse_archive`
(``code/__torch__/**.py``) and :func:`parse_fx` (a GraphModule's ``_code``) give a
:class:`Code`. :class:`CodeWalker` owns everything about the code's *structure*:

* statements: assignments (with tuple unpacking), ``return``, ``if``, ``pass``, loops,
  under a step budget;
* calls: a module's ``forward`` (``self.fc1(x)``, ``(self.fc1).forward(x)``), its other
  methods, ``getattr(self, "x")``, scripted helper functions the archive holds, with
  parameters bound by position, keyword or default, under a depth budget;
* names: module paths through the module tree (``self.sub.fc`` -> ``ModRef("sub.fc",
  qualname)``), a module's non-module attributes (:class:`AttrRef`), dotted global names
  (:class:`GlobalName`: ``torch.ops.quantized.add``), a value's methods (:class:`Bound`),
  constants, tuples, lists, subscripts.

What a value *is* belongs to a subclass, through the hook methods at the end of the
class: :class:`qinspect.loaders.tsgraph.GraphWalker` walks symbolically (a tensor is the
name of the node that produced it; every branch is walked) to learn the graph;
``qinspect.analyse.verify.script.Interpreter`` runs real tensors through an allow-list
of operators, taking the branch each test picks.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


@dataclass(frozen=True)
class ModRef:
    """A module of the tree: its path (``""`` for the root) and recorded class name."""

    path: str
    qualname: str


@dataclass(frozen=True)
class AttrRef:
    """An attribute of a module that is not a submodule (``self.fc1_input_scale_0``), or
    one of its methods before the call (``(self.fc1).forward``)."""

    owner: ModRef
    name: str

    @property
    def key(self) -> str:
        """The attribute's state_dict-style key (``sub.fc1_input_scale_0``)."""
        return f"{self.owner.path}.{self.name}" if self.owner.path else self.name


@dataclass(frozen=True)
class GlobalName:
    """A name the code does not bind: ``torch``, ``ops.quantized.add``, ``List[...]``."""

    name: str


@dataclass(frozen=True)
class Bound:
    """A method of a value before the call: ``x.dequantize``."""

    owner: Any
    name: str


@dataclass(frozen=True)
class Returned:
    """What a ``return`` statement gave (a block that returns nothing gives ``None``)."""

    value: Any


@dataclass(frozen=True)
class Code:
    """The parsed code of one file: classes and module-level helper functions by
    qualified name, and what could not be parsed."""

    classes: Mapping[str, ast.ClassDef] = field(default_factory=dict)
    functions: Mapping[str, ast.FunctionDef] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def method(self, qualname: str, name: str) -> ast.FunctionDef | None:
        cls = self.classes.get(qualname)
        for node in cls.body if cls is not None else []:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return node
        return None


def parse_archive(sources: Mapping[str, str]) -> Code:
    """``{record path: source}`` of a TorchScript archive's ``code/`` -> :class:`Code`
    (``code/__torch__/m.py``'s ``class M`` is ``__torch__.m.M``)."""
    classes: dict[str, ast.ClassDef] = {}
    functions: dict[str, ast.FunctionDef] = {}
    problems: list[str] = []
    for record, text in sources.items():
        module = record.removeprefix("code/").removesuffix(".py").replace("/", ".")
        try:
            tree = ast.parse(text, filename=record)
        except PARSE_ERRORS as exc:
            problems.append(f"{record}: not parseable ({type(exc).__name__})")
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[f"{module}.{node.name}"] = node
            elif isinstance(node, ast.FunctionDef):
                functions[f"{module}.{node.name}"] = node
    return Code(classes, functions, tuple(problems))


def parse_fx(code: Any, root: str) -> Code:
    """A pickled GraphModule's ``_code`` (its ``forward``'s source) -> :class:`Code`
    with one class, ``root``."""
    if not isinstance(code, str):
        return Code(problems=("no _code in the pickle: layer inputs are not known",))
    try:
        tree = ast.parse("class Root:\n" + textwrap.indent(code, "    ") + "\n    pass\n")
    except PARSE_ERRORS as exc:
        return Code(problems=(f"the pickled forward code is not parseable "
                              f"({type(exc).__name__})",))
    cls = tree.body[0]
    assert isinstance(cls, ast.ClassDef)
    return Code({root: cls})


def flatten(values: Any) -> list[Any]:
    """Tuples and lists (nested) -> their items, in order."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(flatten(v))
        else:
            out.append(v)
    return out


def quantized_op_name(name: str) -> str | None:
    """``ops.quantized.add`` or ``torch.ops.quantized.add`` -> ``add`` (else None)."""
    for prefix in ("ops.quantized.", "torch.ops.quantized."):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return None


Env = dict[str, Any]


class CodeWalker:
    """Walks parsed code from a module's method (see the module docstring); subclasses
    give values their meaning through the hooks."""

    max_depth: ClassVar[int] = 64
    """Nested calls followed at most."""
    max_steps: ClassVar[int] = 200_000
    """Statements walked at most, in all."""
    all_paths: ClassVar[bool] = False
    """True: walk both branches of every ``if`` and each loop body once (a symbolic walk,
    whose branches' returns merge); False: run the branch the test picks (and no loop)."""

    def __init__(self, code: Code, modules: Mapping[str, str]) -> None:
        self.code = code
        self.modules = modules
        """Module path -> recorded class name, for the whole tree."""
        self.steps = 0

    # --- calls ------------------------------------------------------------------------
    def call_function(self, func: ast.FunctionDef, args: list[Any], kwargs: dict[str, Any],
                      depth: int) -> Any:
        """``func``'s body with its parameters bound (``self`` is ``args[0]`` for a
        method); what it returns."""
        if depth > self.max_depth:
            return self.too_deep(args + list(kwargs.values()))
        env = self.bind(func, args, kwargs, depth)
        out = self.block(func.body, env, depth)
        return out.value if out is not None else None

    def bind(self, func: ast.FunctionDef, args: list[Any], kwargs: dict[str, Any],
             depth: int) -> Env:
        """Parameters by position, by keyword, or to their defaults (else ``None``)."""
        params = [a.arg for a in func.args.args]
        if len(args) > len(params) or set(kwargs) - set(params):
            self.bad_arguments(func)
        defaults = func.args.defaults
        first_default = len(params) - len(defaults)
        env: Env = {}
        for i, name in enumerate(params):
            if i < len(args):
                env[name] = args[i]
            elif name in kwargs:
                env[name] = kwargs[name]
            elif i >= first_default:
                env[name] = self.expr(defaults[i - first_default], env, depth)
            else:
                env[name] = None
        return env

    # --- statements -------------------------------------------------------------------
    def block(self, body: list[ast.stmt], env: Env, depth: int) -> Returned | None:
        result: Returned | None = None
        for stmt in body:
            self.steps += 1
            if self.steps > self.max_steps:
                self.too_many_steps()
            if isinstance(stmt, ast.Return):
                return Returned(self.expr(stmt.value, env, depth))
            if isinstance(stmt, ast.Assign):
                value = self.expr(stmt.value, env, depth)
                for target in stmt.targets:
                    self.assign(target, value, env)
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                self.assign(stmt.target, self.expr(stmt.value, env, depth), env)
            elif isinstance(stmt, ast.Expr):
                self.expr(stmt.value, env, depth)
            elif isinstance(stmt, ast.If):
                result = self.branches(stmt, env, depth)
                if result is not None and not self.all_paths:
                    return result
            elif isinstance(stmt, (ast.For, ast.While)) and self.all_paths:
                self.block(stmt.body, env, depth)
            elif not isinstance(stmt, ast.Pass):
                self.unsupported(f"a {type(stmt).__name__} statement")
        return result

    def branches(self, stmt: ast.If, env: Env, depth: int) -> Returned | None:
        test = self.expr(stmt.test, env, depth)
        if not self.all_paths:
            return self.block(stmt.body if self.truth(test) else stmt.orelse, env, depth)
        first = self.block(stmt.body, env, depth)
        second = self.block(stmt.orelse, env, depth)
        return first if first is not None and first.value is not None else second

    def assign(self, target: ast.expr, value: Any, env: Env) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            parts = self.unpack(value, len(target.elts))
            for sub, part in zip(target.elts, parts, strict=True):
                self.assign(sub, part, env)
        else:
            self.unsupported("an assignment to an attribute or item")

    # --- expressions ------------------------------------------------------------------
    def expr(self, node: ast.expr | None, env: Env, depth: int) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return env[node.id] if node.id in env else GlobalName(node.id)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [self.expr(e, env, depth) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Attribute):
            return self.attribute(self.expr(node.value, env, depth), node.attr)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, env, depth)
        if isinstance(node, ast.Call):
            return self.call(node, env, depth)
        return self.operator(node, env, depth)

    def attribute(self, base: Any, name: str) -> Any:
        if isinstance(base, ModRef):
            path = f"{base.path}.{name}" if base.path else name
            if path in self.modules:
                return ModRef(path, self.modules[path])
            return self.module_attribute(AttrRef(base, name))
        if isinstance(base, GlobalName):
            return self.global_attribute(base, name)
        return self.value_attribute(base, name)

    def subscript(self, node: ast.Subscript, env: Env, depth: int) -> Any:
        base = self.expr(node.value, env, depth)
        if isinstance(base, GlobalName):  # a type in an annotation: List[int]
            return GlobalName(f"{base.name}[...]")
        key: Any
        if isinstance(node.slice, ast.Slice):
            key = slice(*(self.expr(p, env, depth) for p in (
                node.slice.lower, node.slice.upper, node.slice.step)))
        else:
            key = self.expr(node.slice, env, depth)
        if isinstance(base, (list, tuple)):
            if isinstance(key, slice) and all(p is None or isinstance(p, int) for p in (
                    key.start, key.stop, key.step)):
                return base[key]
            if isinstance(key, int) and -len(base) <= key < len(base):
                return base[key]
        return self.no_item(base, key)

    def call(self, node: ast.Call, env: Env, depth: int) -> Any:
        func = self.expr(node.func, env, depth)
        args = [self.expr(a, env, depth) for a in node.args]
        kwargs = {k.arg: self.expr(k.value, env, depth) for k in node.keywords if k.arg}
        if isinstance(func, ModRef):  # FX code: self.fc1(x)
            return self.call_module(func, "forward", args, kwargs, depth + 1)
        if isinstance(func, AttrRef):  # TorchScript: (self.fc1).forward(x)
            return self.call_module(func.owner, func.name, args, kwargs, depth + 1)
        if isinstance(func, Bound):
            return self.call_bound(func.owner, func.name, args, kwargs)
        if not isinstance(func, GlobalName):
            return self.call_value(func, args)
        if func.name == "getattr" and len(args) == 2 and isinstance(args[0], ModRef):
            return self.attribute(args[0], str(args[1]))
        helper = self.code.functions.get(func.name)
        if helper is not None:  # a scripted helper the archive holds
            return self.call_function(helper, args, kwargs, depth + 1)
        return self.call_global(func.name, args, kwargs)

    # --- hooks: what values mean --------------------------------------------------------
    def call_module(self, mod: ModRef, method: str, args: list[Any],
                    kwargs: dict[str, Any], depth: int) -> Any:
        """A module's method called (usually: a layer, or a container to follow with
        :meth:`call_function` on ``self.code.method(...)``)."""
        raise NotImplementedError

    def call_global(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """A global function the archive does not hold: ``torch.quantize_per_tensor``..."""
        raise NotImplementedError

    def call_bound(self, owner: Any, name: str, args: list[Any],
                   kwargs: dict[str, Any]) -> Any:
        """A value's method: ``x.dequantize()``."""
        raise NotImplementedError

    def call_value(self, func: Any, args: list[Any]) -> Any:
        """A call of anything else."""
        return self.unsupported("a call")

    def operator(self, node: ast.expr, env: Env, depth: int) -> Any:
        """Any other expression (operators, comparisons...)."""
        return self.unsupported(f"a {type(node).__name__} expression")

    def module_attribute(self, ref: AttrRef) -> Any:
        return ref

    def global_attribute(self, base: GlobalName, name: str) -> Any:
        return GlobalName(f"{base.name}.{name}")

    def value_attribute(self, base: Any, name: str) -> Any:
        return self.unsupported(f"attribute {name!r}")

    def no_item(self, base: Any, key: Any) -> Any:
        """A subscript that is not an in-range index or int slice of a list or tuple."""
        return self.unsupported("a slice" if isinstance(key, slice) else "a subscript")

    def unpack(self, value: Any, count: int) -> list[Any]:
        """``a, b = value``: ``count`` values."""
        return list(value)

    def truth(self, test: Any) -> bool:
        """An ``if``'s test, when only one branch runs."""
        raise NotImplementedError

    def unsupported(self, what: str) -> Any:
        """Code the walker cannot follow (``what``: "a While statement"...)."""
        raise NotImplementedError

    def bad_arguments(self, func: ast.FunctionDef) -> None:
        """A call with more positional arguments, or other keywords, than ``func`` takes."""

    def too_deep(self, args: list[Any]) -> Any:
        """Calls nested deeper than :attr:`max_depth`."""
        raise NotImplementedError

    def too_many_steps(self) -> NoReturn:
        """More than :attr:`max_steps` statements."""
        raise NotImplementedError
