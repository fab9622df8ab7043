"""Read any pickle without importing, calling or trusting anything the file names.

Every format qinspect reads holds pickles: ``torch.save`` files (zip ``data.pkl`` and the
legacy stream), TorchScript archives (``__torch__.*`` module objects), whole pickled
``GraphModule``s, torchao tensor subclasses, pickled ``.pt2`` records. One reader serves
them all: :class:`Reader` runs the pickle's opcodes (parsed by :mod:`pickletools`) on its
own stack, in Python. Nothing is imported; the only callables are qinspect's own
functions below, chosen by name:

* tensor rebuild functions (``torch._utils._rebuild_tensor_v2`` & co., the ones
  ``weights_only`` allows) become :class:`~qinspect.loaders.tensors.ArrayTensor`: numpy
  views of the storage records, bounds-checked against the storage when built;
* inert values (dtypes, qschemes, layouts, devices, ``torch.Size``, ``OrderedDict``,
  ``set``) become plain data;
* every other global is refused (``strict``, for ``torch.save`` state_dicts, as
  ``weights_only`` would) or becomes a :class:`Stub` class that only records what the
  pickle passes to it (arguments, state, items): a pickle asking for ``os.system`` gets a
  ``Stub('os.system')`` whose "call" stores its arguments and does nothing else.

Memory is bounded by the pickle's own length, whatever its opcodes say: the memo is a
dict (an index of 2^30 costs one entry, not a 2^31-slot table), every object the pickle
makes is charged to a budget of :data:`BUDGET_FACTOR` times the pickle's length (plus
:data:`BUDGET_SLACK`), containers nest at most :data:`MAX_DEPTH` deep, and the tensors'
declared values may not exceed the caller's view budget. ``SETITEM`` on anything but a
dict, ``BUILD`` on anything but the reader's own objects, extension codes and out-of-band
buffers are refused as corrupt (CVE-2026-24747 was torch's weights-only unpickler
accepting the first).
"""

from __future__ import annotations

import collections
import io
import math
import pickletools
from collections.abc import Callable
from typing import Any, TypeVar

from qinspect.errors import LoadError, UnsafeCheckpointError
from qinspect.loaders import tensors as T
from qinspect.loaders.tensors import ArrayTensor, DType, QScheme, Storage

STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
#: objects the pickle makes may cost at most this many times its length in bytes ...
BUDGET_FACTOR = 16
#: ... plus this (small pickles of legitimately many objects)
BUDGET_SLACK = 32 * 2**20
#: containers (lists, tuples, dicts, recorded objects) nest at most this deep
MAX_DEPTH = 1000
#: estimated bytes of what each kind of opcode makes (CPython object sizes, rounded up)
COST_OBJECT = 600
COST_CONTAINER = 72
COST_ITEM = 40
COST_SCALAR = 40


_S = TypeVar("_S", bound="Stub")


class Stub:
    """An object of a class the file names; it records and never runs anything."""

    qualname: str = "?"
    # set by __new__ / __setstate__ (through __dict__: __setattr__ records attributes)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[Any]
    setitems: dict[Any, Any]

    def __new__(cls: type[_S], *args: Any, **kwargs: Any) -> _S:
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["kwargs"] = kwargs
        obj.__dict__["state"] = None
        obj.__dict__["items"] = []
        obj.__dict__["setitems"] = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__.setdefault("attrs", {})[name] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.setitems[key] = value

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:
        """A stub used as a callable (REDUCE on an instance) records a call."""
        return Call(self.qualname, args)

    def __repr__(self) -> str:
        return f"Stub({self.qualname})"


class Call(Stub):
    """The result of calling a stub: the name and the arguments, nothing else."""

    def __new__(cls, qualname: str = "?", args: tuple[Any, ...] = (), *rest: Any) -> Call:
        obj = Stub.__new__(cls)
        obj.__dict__["qualname"] = qualname
        obj.__dict__["args"] = args
        return obj


class StorageType:
    """``torch.FloatStorage`` & co. as named in a persistent id: just the dtype name."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = dtype


class WrapperSubclass(Stub):
    """A tensor subclass (torchao) rebuilt without its class: dtype, shape and state."""


class TensorType:
    """``torch.Tensor`` / ``torch.nn.Parameter`` named as a class (``_rebuild_from_type_v2``)."""

    def __init__(self, name: str) -> None:
        self.name = name


class ScriptObjectState:
    """Stand-in for ``torch.ScriptObject``: keeps the pickled state, runs nothing.

    torch pickles a ScriptObject (a dynamic LSTM's packed weights) as ``NEWOBJ`` +
    ``BUILD(state)``; the state is a tuple of tensors, numbers, strings and nested
    stand-ins, usually ``(payload, class name)``."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"ScriptObjectState({self.class_name or '?'})"

    @property
    def class_name(self) -> str | None:
        """The TorchScript class named by the state, e.g. ``...rnn.CellParamsBase``."""
        if isinstance(self.state, tuple) and len(self.state) == 2 and isinstance(
                self.state[1], str):
            return self.state[1]
        return None

    @property
    def payload(self) -> Any:
        return self.state[0] if self.class_name is not None else self.state


#: ``(key, dtype name, numel, location) -> Storage`` supplied by the caller
StorageLoader = Callable[[str, str, int, str], Storage]


class Corrupt(Exception):
    """The opcodes do not form a pickle qinspect can read (becomes a LoadError)."""


def load_pickle(data: bytes, storage_loader: StorageLoader | None, what: str, *,
                strict: bool = False, view_budget: int | None = None) -> Any:
    """Read ``data`` (one pickle); ``what`` names it in errors. ``strict``: refuse any
    global outside the allow-list (torch.save state_dicts), else record it as a stub."""
    return Reader(storage_loader, what, strict=strict, view_budget=view_budget).load(
        io.BytesIO(data), len(data))


class Reader:
    """One pickle VM; :meth:`load` may be called again for the next pickle of a stream."""

    def __init__(self, storage_loader: StorageLoader | None, what: str, *,
                 strict: bool = False, view_budget: int | None = None) -> None:
        self.storage_loader = storage_loader
        self.what = what
        self.strict = strict
        self.view_budget = view_budget
        self.declared = 0
        self.globals_seen: list[str] = []
        self._stubs: dict[str, type] = {}
        self._depth: dict[int, tuple[int, Any]] = {}

    def load(self, fh: io.BytesIO, length: int) -> Any:
        """Run one pickle from ``fh`` (at most ``length`` bytes) up to its STOP."""
        self.budget = BUDGET_FACTOR * length + BUDGET_SLACK
        self.length = length
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        start = fh.tell()
        try:
            for op, arg, pos in pickletools.genops(fh):
                if pos is not None and pos - start >= length:
                    raise Corrupt("the pickle runs past its record")
                if op.name == "STOP":
                    return self._pop()
                self._step(op.name, arg)
        except (LoadError, Corrupt) as exc:
            if isinstance(exc, LoadError):
                raise
            raise self._corrupt(str(exc)) from exc
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                EOFError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise self._corrupt(text) from exc
        raise self._corrupt("the pickle ends before its STOP opcode")

    def _corrupt(self, text: str) -> LoadError:
        return LoadError(f"{self.what}: the pickle inside is corrupt ({text}); re-export "
                         "the file")

    # bookkeeping -------------------------------------------------------------------------

    def _charge(self, cost: int) -> None:
        self.budget -= cost
        if self.budget < 0:
            raise LoadError(f"{self.what}: refused: its pickle builds more objects than "
                            f"{BUDGET_FACTOR}x its length allows (a pickle bomb, or not a "
                            "checkpoint)")

    def _nest(self, container: Any, value: Any) -> None:
        """Record that ``value`` now sits inside ``container``; refuse deep nesting."""
        inner = self._depth.get(id(value))
        depth = (inner[0] if inner else 0) + 1
        outer = self._depth.get(id(container))
        if outer is None or outer[0] < depth:
            if depth > MAX_DEPTH:
                raise LoadError(f"{self.what}: refused: its pickle nests containers more "
                                f"than {MAX_DEPTH} deep; no checkpoint does")
            self._depth[id(container)] = (depth, container)

    def _push(self, value: Any) -> None:
        self.stack.append(value)

    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise Corrupt("an opcode pops from an empty stack")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise Corrupt("an opcode needs a value and the stack is empty")
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.marks:
            raise Corrupt("an opcode needs a MARK and there is none")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    # opcodes -----------------------------------------------------------------------------

    def _step(self, name: str, arg: Any) -> None:
        handler = _HANDLERS.get(name)
        if handler is None:
            raise Corrupt(f"opcode {name} is not used by torch and not read by qinspect")
        handler(self, arg)

    def _constant(self, arg: Any) -> None:
        self._charge(COST_SCALAR + (len(arg) if isinstance(arg, (str, bytes)) else 0))
        self._push(arg)

    def _bytearray(self, arg: Any) -> None:
        self._charge(COST_SCALAR + len(arg))
        self._push(bytearray(arg))

    def _int(self, arg: Any) -> None:  # INT also spells True/False as I01/I00
        self._charge(COST_SCALAR)
        self._push(arg)

    def _none(self, _arg: Any) -> None:
        self._push(None)

    def _mark(self, _arg: Any) -> None:
        self._charge(8)
        self.marks.append(len(self.stack))

    def _pop_op(self, _arg: Any) -> None:
        if self.stack and (not self.marks or len(self.stack) > self.marks[-1]):
            self.stack.pop()
        else:
            self._pop_mark()  # POP right after MARK pops the mark, as CPython does

    def _pop_mark_op(self, _arg: Any) -> None:
        self._pop_mark()

    def _dup(self, _arg: Any) -> None:
        self._charge(8)
        self._push(self._top())

    def _tuple_n(self, n: int) -> None:
        items = [self._pop() for _ in range(n)][::-1]
        self._make_tuple(items)

    def _make_tuple(self, items: list) -> None:
        self._charge(COST_CONTAINER + 8 * len(items))
        value = tuple(items)
        for item in items:
            self._nest(value, item)
        self._push(value)

    def _tuple(self, _arg: Any) -> None:
        self._make_tuple(self._pop_mark())

    def _empty_tuple(self, _arg: Any) -> None:
        self._push(())

    def _empty_list(self, _arg: Any) -> None:
        self._charge(COST_CONTAINER)
        self._push([])

    def _list(self, _arg: Any) -> None:
        items = self._pop_mark()
        self._charge(COST_CONTAINER + 8 * len(items))
        value: list = []
        self._extend(value, items)
        self._push(value)

    def _empty_dict(self, _arg: Any) -> None:
        self._charge(COST_CONTAINER)
        self._push({})

    def _dict(self, _arg: Any) -> None:
        items = self._pop_mark()
        self._charge(COST_CONTAINER)
        value: dict = {}
        self._set_items(value, items)
        self._push(value)

    def _empty_set(self, _arg: Any) -> None:
        self._charge(COST_CONTAINER * 3)
        self._push(set())

    def _frozenset(self, _arg: Any) -> None:
        items = self._pop_mark()
        self._charge(COST_CONTAINER * 3 + COST_ITEM * len(items))
        self._push(frozenset(items))

    def _append(self, _arg: Any) -> None:
        value = self._pop()
        self._extend(self._top(), [value])

    def _appends(self, _arg: Any) -> None:
        items = self._pop_mark()
        self._extend(self._top(), items)

    def _extend(self, target: Any, items: list) -> None:
        self._charge(8 * len(items))
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, Stub):
            target.items.extend(items)
        else:
            raise Corrupt(f"APPEND to a {type(target).__name__}")
        for item in items:
            self._nest(target, item)

    def _setitem(self, _arg: Any) -> None:
        value = self._pop()
        key = self._pop()
        self._set_items(self._top(), [key, value])

    def _setitems(self, _arg: Any) -> None:
        items = self._pop_mark()
        self._set_items(self._top(), items)

    def _set_items(self, target: Any, items: list) -> None:
        if len(items) % 2:
            raise Corrupt("SETITEMS with an odd number of values")
        self._charge(COST_ITEM * len(items))
        if isinstance(target, dict):
            store = target
        elif isinstance(target, Stub):
            store = target.setitems
        else:
            raise Corrupt(f"SETITEM on a {type(target).__name__}, which is not a dict")
        for i in range(0, len(items), 2):
            store[items[i]] = items[i + 1]
            self._nest(target, items[i + 1])

    def _additems(self, _arg: Any) -> None:
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, set):
            raise Corrupt(f"ADDITEMS on a {type(target).__name__}, which is not a set")
        self._charge(COST_ITEM * len(items))
        target.update(items)

    def _put(self, arg: Any) -> None:
        if not isinstance(arg, int) or arg < 0:
            raise Corrupt(f"memo index {arg!r}")
        if arg >= self.length:  # picklers number memo entries 0, 1, 2...
            raise LoadError(f"{self.what}: refused: its pickle stores memo entry {arg}, "
                            f"more entries than a pickle of {self.length} bytes can make "
                            "(an edited memo index)")
        self._charge(COST_ITEM)
        self.memo[arg] = self._top()

    def _memoize(self, _arg: Any) -> None:
        self._charge(COST_ITEM)
        self.memo[len(self.memo)] = self._top()

    def _get(self, arg: Any) -> None:
        if arg not in self.memo:
            raise Corrupt(f"memo entry {arg} read before it is written")
        self._charge(8)
        self._push(self.memo[arg])

    def _global(self, arg: Any) -> None:
        module, _, name = str(arg).partition(" ")
        self._push(self.find_class(module, name))

    def _stack_global(self, _arg: Any) -> None:
        name = self._pop()
        module = self._pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise Corrupt("STACK_GLOBAL with names that are not strings")
        self._push(self.find_class(module, name))

    def _reduce(self, _arg: Any) -> None:
        args = self._pop()
        func = self._pop()
        self._push(self._call(func, args))

    def _newobj(self, _arg: Any) -> None:
        args = self._pop()
        cls = self._pop()
        self._push(self._new(cls, args))

    def _newobj_ex(self, _arg: Any) -> None:
        self._pop()  # keyword arguments: no class qinspect builds takes any
        args = self._pop()
        cls = self._pop()
        self._push(self._new(cls, args))

    def _inst(self, arg: Any) -> None:
        module, _, name = str(arg).partition(" ")
        args = tuple(self._pop_mark())
        self._push(self._call(self.find_class(module, name), args))

    def _obj(self, _arg: Any) -> None:
        items = self._pop_mark()
        if not items:
            raise Corrupt("OBJ without a class")
        self._push(self._call(items[0], tuple(items[1:])))

    def _build(self, _arg: Any) -> None:
        state = self._pop()
        target = self._top()
        self._charge(COST_ITEM)
        if isinstance(target, (Stub, ScriptObjectState)):
            target.__setstate__(state)
        elif isinstance(target, collections.OrderedDict) and isinstance(state, dict):
            # a state_dict's ``_metadata`` attribute
            for key, value in state.items():
                if isinstance(key, str):
                    target.__dict__[key] = value
        elif isinstance(target, ArrayTensor):
            target.attrs.update(state if isinstance(state, dict) else {"state": state})
        else:
            raise Corrupt(f"BUILD on a {type(target).__name__}")
        self._nest(target, state)

    def _persid(self, arg: Any) -> None:
        self._push(self._persistent(arg))

    def _binpersid(self, _arg: Any) -> None:
        self._push(self._persistent(self._pop()))

    def _ignore(self, _arg: Any) -> None:
        return

    # globals, calls and storages --------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        self._charge(COST_OBJECT)
        self.globals_seen.append(qualname)
        real = _allowed(module, name)
        if real is not None:
            return real
        if self.strict and qualname == "torch.ScriptObject":
            return ScriptObjectState  # a state_dict's packed LSTM weights: state only
        if self.strict:
            raise UnsafeCheckpointError(
                f"{self.what}: refused: loading it would call {qualname}, and qinspect's "
                "reader allows no code from the file (a pickle can run any program). If you "
                "trust the file, re-save only its tensors with "
                "torch.save(model.state_dict(), path)")
        if qualname not in self._stubs:
            self._stubs[qualname] = type(name or "stub", (Stub,), {"qualname": qualname})
        return self._stubs[qualname]

    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise Corrupt(f"a call with arguments that are not a tuple ({type(args).__name__})")
        self._charge(COST_OBJECT)
        if isinstance(func, _Rebuilder):
            value = func.fn(self, *args)
        elif isinstance(func, type) and issubclass(func, Stub):
            value = func(*args)
        elif isinstance(func, Stub):
            value = func(*args)
        elif func in _PLAIN_CALLS:
            value = _PLAIN_CALLS[func](*args)
        else:
            raise Corrupt(f"the pickle calls {type(func).__name__}, which is not callable "
                          "here")
        if _nestable(value):
            for item in args:
                self._nest(value, item)
        return value

    def _new(self, cls: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise Corrupt("NEWOBJ with arguments that are not a tuple")
        self._charge(COST_OBJECT)
        value: object
        if isinstance(cls, type) and issubclass(cls, Stub):
            value = cls.__new__(cls, *args)
        elif cls is ScriptObjectState:
            value = ScriptObjectState()
        elif cls in (collections.OrderedDict, set, dict, list):
            value = cls()
        else:
            raise Corrupt(f"NEWOBJ of {getattr(cls, 'name', type(cls).__name__)}")
        for item in args:
            self._nest(value, item)
        return value

    def _persistent(self, pid: Any) -> Storage:
        self._charge(COST_OBJECT)
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise Corrupt("a persistent id that is not a tensor storage; torch writes "
                          "('storage', type, key, location, size)")
        _, kind, key, location, numel = pid[:5]
        if isinstance(kind, DType):
            kind = StorageType(str(kind), kind.name)
        if not isinstance(kind, StorageType):
            raise Corrupt("a storage reference names no storage type")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise Corrupt("a storage reference has a key that is not a name")
        if not isinstance(location, str):
            raise Corrupt("a storage reference has a location that is not a device name")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise Corrupt(f"storage {str(key)!r} declares a size of {numel!r} elements")
        if self.storage_loader is None:
            raise Corrupt("tensor data outside an archive")
        storage = self.storage_loader(str(key), kind.dtype, numel, location)
        if len(pid) == 6 and pid[5] is not None:
            return _legacy_view(storage, pid[5])
        return storage

    # tensors ---------------------------------------------------------------------------

    def tensor(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: DType,
               qparams: tuple | None = None) -> ArrayTensor:
        """A view of ``storage``, checked to lie inside it and charged to the budget."""
        if not isinstance(storage, Storage):
            raise Corrupt("a tensor rebuilt from something that is not a storage")
        size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        if not _is_int(offset):
            raise Corrupt("a tensor offset that is not an integer")
        bits = dtype.itemsize * 8 // T.PER_ELEMENT.get(dtype.name, 1)
        problem = T.check_extent(storage, offset, size, stride, bits)
        if problem is not None:
            raise LoadError(f"{self.what}: refused: a tensor on storage {storage.key!r} has "
                            f"{problem}")
        if self.view_budget is not None:
            self.declared += -(-math.prod(size) * bits // 8)
            if self.declared > self.view_budget:
                raise LoadError(f"{self.what}: refused: its tensors declare more values than "
                                "4x the file's size (zero or overlapping strides, or a "
                                "storage shared many times over)")
        problem_text = None
        if storage.device.startswith("meta"):
            problem_text = "a tensor on device 'meta', which holds no readable values"
        return ArrayTensor(storage, offset, size, stride, dtype, qparams, problem_text)


def _nestable(value: Any) -> bool:
    return isinstance(value, (Stub, ArrayTensor, tuple, list, dict))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise Corrupt(f"a tensor {what} that is not a tuple of integers")
    return tuple(value)


class _LegacyView(Storage):
    """A legacy-format view of part of a storage (bound with its root)."""

    def __init__(self, root: Storage, key: str, offset: int, numel: int) -> None:
        super().__init__(key, root.dtype, numel, None, root.device)
        self.root = root
        self.start = offset

    @property
    def data(self) -> Any:
        if self.root.data is None:
            return None
        item = self.dtype.itemsize
        return self.root.data[self.start * item:(self.start + self.numel) * item]

    @data.setter
    def data(self, value: Any) -> None:
        pass


def _legacy_view(root: Storage, meta: Any) -> Storage:
    if not (isinstance(meta, tuple) and len(meta) == 3 and _is_int(meta[1])
            and _is_int(meta[2])):
        raise Corrupt(f"storage {root.key!r} has malformed view metadata")
    view_key, offset, size = meta
    if offset < 0 or size < 0 or offset + size > root.numel:
        raise Corrupt(f"a view of storage {root.key!r} (offset {offset}, size {size}) reaches "
                      f"past its {root.numel} elements")
    return _LegacyView(root, str(view_key), offset, size)


# --- what the file may name ------------------------------------------------------------


class _Rebuilder:
    """A tensor rebuild function of torch's, reimplemented over the reader's data."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _allowed(module: str, name: str) -> Any:
    """The reader's object for an allow-listed global, or None."""
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[name]
    if module == "_codecs" and name == "encode":
        return _encode
    if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
        return StorageType(name, STORAGE_DTYPES[name])
    if module == "torch":
        if name in T.DTYPES:
            return T.DTYPES[name]
        if name in T.QSCHEMES:
            return T.QSCHEMES[name]
        if name in T.LAYOUTS:
            return T.LAYOUTS[name]
        if name in ("device", "Size"):
            return {"device": _device, "Size": _size}[name]
        if name == "Tensor":
            return TensorType("torch.Tensor")
        return None
    if (module, name) == ("torch.nn.parameter", "Parameter"):
        return TensorType("torch.nn.Parameter")
    if module == "torch.serialization" and name == "_get_layout":
        return _get_layout
    if module == "torch._utils":
        return REBUILDERS.get(name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return REBUILDERS["_rebuild_from_type_v2"]
    if module == "torch.jit._pickle":
        return JIT_PICKLE.get(name)
    return None


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(str, 'latin1')``: how protocol 2 spells bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Corrupt("_codecs.encode of something other than a latin-1 string")
    return text.encode("latin-1")


def _device(name: Any, index: Any = None) -> str:
    if not isinstance(name, str):
        raise Corrupt("a device that is not named by a string")
    return name if index is None else f"{name}:{index}"


def _size(dims: Any = ()) -> tuple[int, ...]:
    return _int_tuple(dims, "Size")


def _get_layout(name: Any) -> T.Layout:
    layout = T.LAYOUTS.get(str(name).removeprefix("torch."))
    if layout is None:
        raise Corrupt(f"unknown layout {str(name)[:40]!r}")
    return layout


def _rebuild_tensor_v2(r: Reader, storage: Any, offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> ArrayTensor:
    dtype = storage.dtype if isinstance(storage, Storage) else None
    return r.tensor(storage, offset, size, stride, dtype)  # type: ignore[arg-type]


def _rebuild_tensor(r: Reader, storage: Any, offset: Any, size: Any,
                    stride: Any) -> ArrayTensor:
    return _rebuild_tensor_v2(r, storage, offset, size, stride)


def _rebuild_tensor_v3(r: Reader, storage: Any, offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> ArrayTensor:
    if not isinstance(dtype, DType):
        raise Corrupt("a tensor (v3) whose dtype is not a torch dtype")
    return r.tensor(storage, offset, size, stride, dtype)


def _rebuild_qtensor(r: Reader, storage: Any, offset: Any, size: Any, stride: Any,
                     quantizer_params: Any, requires_grad: Any = False,
                     backward_hooks: Any = None) -> ArrayTensor:
    """torch/_utils.py ``_rebuild_qtensor``: the dtype is the storage's; the quantizer
    params are ``(qscheme, scale, zero_point)`` or ``(qscheme, scales, zero_points,
    axis)`` (torch/_tensor.py ``__reduce_ex__``)."""
    if not isinstance(storage, Storage):
        raise Corrupt("a quantized tensor rebuilt from something that is not a storage")
    if storage.dtype.name not in T.QUANTIZED:
        raise Corrupt(f"a quantized tensor on a {storage.dtype.name} storage")
    params = _qparams(quantizer_params, size)
    return r.tensor(storage, offset, size, stride, storage.dtype, params)


def _qparams(params: Any, size: Any) -> tuple:
    if not isinstance(params, tuple) or not params or not isinstance(params[0], QScheme):
        raise Corrupt("a quantized tensor without quantizer parameters")
    scheme = params[0].name
    if scheme in ("per_tensor_affine", "per_tensor_symmetric"):
        if len(params) != 3 or not isinstance(params[1], (int, float)) or not _is_int(
                params[2]) or isinstance(params[1], bool):
            raise Corrupt("per-tensor quantizer parameters are not (qscheme, scale, "
                          "zero_point)")
        return (params[0], float(params[1]), params[2])
    if scheme in ("per_channel_affine", "per_channel_symmetric",
                  "per_channel_affine_float_qparams"):
        if len(params) != 4 or not _is_int(params[3]):
            raise Corrupt("per-channel quantizer parameters are not (qscheme, scales, "
                          "zero_points, axis)")
        size = _int_tuple(size, "size")
        axis = params[3]
        if not 0 <= axis < len(size):
            raise Corrupt(f"per-channel axis {axis} of a {len(size)}-d tensor")
        for what, value in (("scales", params[1]), ("zero points", params[2])):
            count = (value.numel() if isinstance(value, ArrayTensor) and value.dim() == 1
                     else len(value) if isinstance(value, list) else None)
            if count != size[axis]:
                raise Corrupt(f"{what} of a per-channel tensor do not match its axis "
                              f"{axis} of size {size[axis]}")
            if isinstance(value, ArrayTensor) and value.dtype.name not in (
                    "float64", "float32", "float16", "int64", "int32"):
                raise Corrupt(f"per-channel {what} of dtype {value.dtype.name}")
            if isinstance(value, list) and not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise Corrupt(f"per-channel {what} that are not numbers")
        return params
    raise Corrupt(f"unknown qscheme {scheme}")


def _rebuild_parameter(r: Reader, data: Any, requires_grad: Any = False,
                       backward_hooks: Any = None) -> Any:
    return data


def _rebuild_parameter_with_state(r: Reader, data: Any, requires_grad: Any,
                                  backward_hooks: Any, state: Any) -> Any:
    if isinstance(data, ArrayTensor) and state:
        data.attrs.update(state if isinstance(state, dict) else {"state": state})
    return data


def _rebuild_from_type_v2(r: Reader, func: Any, new_type: Any, args: Any,
                          state: Any) -> Any:
    """torch's subclass rebuild, minus the subclass: the base object plus its state."""
    if not isinstance(args, tuple):
        raise Corrupt("_rebuild_from_type_v2 with arguments that are not a tuple")
    base = r._call(func, args)
    if isinstance(base, Stub):
        base.__dict__["state"] = state
        if getattr(new_type, "qualname", None):
            base.__dict__["qualname"] = new_type.qualname
        return base
    if isinstance(base, ArrayTensor):
        if state:
            base.attrs.update(state if isinstance(state, dict) else {"state": state})
        if not isinstance(new_type, TensorType):
            base.problem = (f"a tensor subclass ({getattr(new_type, 'qualname', '?')}); "
                            "qinspect reads plain tensors")
    return base


def _rebuild_wrapper_subclass(r: Reader, cls: Any, dtype: Any, size: Any, stride: Any,
                              offset: Any, layout: Any, device: Any,
                              requires_grad: Any) -> WrapperSubclass:
    obj = WrapperSubclass.__new__(WrapperSubclass)
    obj.__dict__["qualname"] = getattr(cls, "qualname", repr(cls))
    obj.__dict__["args"] = (dtype, tuple(size) if isinstance(size, (list, tuple)) else size)
    return obj


def _unreadable(reason: str) -> Callable[..., ArrayTensor]:
    """Rebuilders of tensors with no values qinspect can read: set aside with a reason."""

    def rebuild(r: Reader, *args: Any) -> ArrayTensor:
        dtype = next((a for a in args if isinstance(a, DType)), T.DTYPES["float32"])
        size = next((a for a in args if isinstance(a, tuple) and all(_is_int(v) for v in a)),
                    ())
        empty = Storage("<none>", dtype, 0, None)
        return ArrayTensor(empty, 0, tuple(size), tuple(0 for _ in size), dtype,
                           problem=reason)

    return rebuild


def _device_tensor(r: Reader, data: Any, dtype: Any, device: Any,
                   requires_grad: Any = False) -> Any:
    if isinstance(device, str) and device.startswith("meta") and isinstance(data,
                                                                           ArrayTensor):
        data.problem = "a tensor on device 'meta', which holds no readable values"
    return data


_REBUILD_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_qtensor": _rebuild_qtensor,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "_rebuild_wrapper_subclass": _rebuild_wrapper_subclass,
    "_rebuild_from_type_v2": _rebuild_from_type_v2,
    "_rebuild_device_tensor_from_cpu_tensor": _device_tensor,
    "_rebuild_meta_tensor_no_storage": _unreadable(
        "a tensor on device 'meta', which holds no readable values"),
    "_rebuild_sparse_tensor": _unreadable("a sparse tensor; qinspect reads dense tensors"),
    "_rebuild_nested_tensor": _unreadable("a nested tensor; qinspect reads dense tensors"),
    "_rebuild_xla_tensor": _unreadable("a tensor on an XLA device"),
    "_rebuild_mtia_tensor": _unreadable("a tensor on an MTIA device"),
}
REBUILDERS = {name: _Rebuilder(name, fn) for name, fn in _REBUILD_FUNCTIONS.items()}


def _restore_type_tag(value: Any, type_str: Any = None) -> Any:
    return value


def _identity_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


JIT_PICKLE: dict[str, Callable[..., Any]] = {
    "restore_type_tag": _restore_type_tag,
    "build_intlist": _identity_list,
    "build_doublelist": _identity_list,
    "build_boollist": _identity_list,
    "build_tensorlist": _identity_list,
}
_PLAIN_CALLS: dict[Any, Callable[..., Any]] = {
    collections.OrderedDict: lambda *a: collections.OrderedDict(*a[:1]) if not a or isinstance(
        a[0], (list, tuple, dict)) else _bad_call("OrderedDict"),
    set: lambda *a: set(a[0]) if a and isinstance(a[0], (list, tuple)) else set(),
    frozenset: lambda *a: frozenset(a[0]) if a and isinstance(a[0], (list, tuple)) else
    frozenset(),
    _encode: _encode, _device: _device, _size: _size, _get_layout: _get_layout,
    **{fn: fn for fn in JIT_PICKLE.values()},
}


def _bad_call(name: str) -> Any:
    raise Corrupt(f"{name} called with arguments torch never writes")


_HANDLERS: dict[str, Callable[[Reader, Any], None]] = {
    **{name: Reader._constant for name in (
        "FLOAT", "BINFLOAT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
        "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8")},
    "INT": Reader._int,
    "BYTEARRAY8": Reader._bytearray,
    "NONE": Reader._none,
    "NEWTRUE": lambda r, _a: r._push(True),
    "NEWFALSE": lambda r, _a: r._push(False),
    "PROTO": Reader._ignore, "FRAME": Reader._ignore,
    "MARK": Reader._mark, "POP": Reader._pop_op, "POP_MARK": Reader._pop_mark_op,
    "DUP": Reader._dup,
    "EMPTY_TUPLE": Reader._empty_tuple, "TUPLE": Reader._tuple,
    "TUPLE1": lambda r, _a: r._tuple_n(1), "TUPLE2": lambda r, _a: r._tuple_n(2),
    "TUPLE3": lambda r, _a: r._tuple_n(3),
    "EMPTY_LIST": Reader._empty_list, "LIST": Reader._list,
    "APPEND": Reader._append, "APPENDS": Reader._appends,
    "EMPTY_DICT": Reader._empty_dict, "DICT": Reader._dict,
    "SETITEM": Reader._setitem, "SETITEMS": Reader._setitems,
    "EMPTY_SET": Reader._empty_set, "ADDITEMS": Reader._additems,
    "FROZENSET": Reader._frozenset,
    "PUT": Reader._put, "BINPUT": Reader._put, "LONG_BINPUT": Reader._put,
    "MEMOIZE": Reader._memoize,
    "GET": Reader._get, "BINGET": Reader._get, "LONG_BINGET": Reader._get,
    "GLOBAL": Reader._global, "STACK_GLOBAL": Reader._stack_global,
    "REDUCE": Reader._reduce, "NEWOBJ": Reader._newobj, "NEWOBJ_EX": Reader._newobj_ex,
    "INST": Reader._inst, "OBJ": Reader._obj, "BUILD": Reader._build,
    "PERSID": Reader._persid, "BINPERSID": Reader._binpersid,
}


def stub_name(value: Any) -> str | None:
    """The qualified class name of a stub, or None for real values."""
    return value.qualname if isinstance(value, Stub) else None


def scan_globals(data: bytes, limit: int = 10_000) -> list[str]:
    """Every global a pickle names, by reading its opcodes (nothing is unpickled)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for i, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if i > 5_000_000 or len(names) >= limit:
                break
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                names.append(arg.replace(" ", ".", 1))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE",
                             "BINUNICODE8") and isinstance(arg, str):
                strings.append(arg)
                strings = strings[-2:]
            elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                names.append(f"{strings[0]}.{strings[1]}")
    except Exception:  # a damaged pickle: report what was seen so far
        pass
    return names
