"""Read any pickle without importing or calling anything the file names.

``torch.load(weights_only=True)`` refuses pickles that name classes outside its
allow-list; ``weights_only=False`` runs whatever the file asks for. TorchScript archives
(``__torch__.*`` module objects), whole pickled ``nn.Module``s/``GraphModule``s and
torchao tensor subclasses fall in between: their *data* is plain, but they name classes.

:func:`load_pickle` reads such a pickle with :class:`pickle.Unpickler` whose
``find_class`` never imports: every global the file names becomes a :class:`Stub`
class that only records what the pickle passes to it (constructor arguments, state,
appended items). The only real callables are an explicit allow-list of tensor rebuild
functions from ``torch._utils`` (the same ones ``weights_only`` allows) and inert
values (dtypes, qschemes, layouts, ``torch.device``, ``torch.Size``, ``OrderedDict``,
``set``). Storages come from ``storage_loader(key, dtype, numel)``, supplied by the
caller, which reads raw bytes from the archive.

So a pickle asking for ``os.system`` gets a ``Stub('os.system')`` whose "call" stores
its arguments and does nothing else.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Callable
from typing import Any

from qinspect.errors import LoadError

STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}


class Stub:
    """An object of a class the file names; it records and never runs anything."""

    qualname: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
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

    def __setattr__(self, name: str, value: Any) -> None:  # BUILD without __setstate__
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

    def __new__(cls, qualname: str = "?", args: tuple = (), *rest: Any) -> Call:
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


StorageLoader = Callable[[str, str, int], Any]


def load_pickle(data: bytes, storage_loader: StorageLoader | None, what: str) -> Any:
    """Unpickle ``data`` with stubs for every named class; ``what`` names it in errors."""
    unpickler = _Unpickler(io.BytesIO(data), storage_loader)
    try:
        return unpickler.load()
    except LoadError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RuntimeError, OverflowError, MemoryError,
            UnicodeDecodeError) as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise LoadError(f"{what}: the pickle inside is corrupt ({text}); re-export the file") \
            from exc


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: io.BytesIO, storage_loader: StorageLoader | None) -> None:
        super().__init__(fh)
        self._storage_loader = storage_loader
        self._stubs: dict[str, type] = {}
        self.globals_seen: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        self.globals_seen.append(qualname)
        real = _allowed(module, name)
        if real is not None:
            return real
        if qualname not in self._stubs:
            self._stubs[qualname] = type(name, (Stub,), {"qualname": qualname})
        return self._stubs[qualname]

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, StorageType):
            storage_type = _storage_type_of(storage_type)
        if self._storage_loader is None:
            raise pickle.UnpicklingError("tensor data outside an archive")
        return self._storage_loader(str(key), storage_type.dtype, int(numel))


def _storage_type_of(value: Any) -> StorageType:
    """torch.save (new style) writes the dtype itself in the persistent id."""
    import torch

    if isinstance(value, torch.dtype):
        return StorageType(str(value), str(value).removeprefix("torch."))
    raise pickle.UnpicklingError(f"unknown storage type {value!r}")


def _allowed(module: str, name: str) -> Any:
    """The real object for an allow-listed global, or None (then a stub is used)."""
    import torch

    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[name]
    if module == "torch":
        if name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if name == "device":
            return torch.device
        if name == "Size":
            return torch.Size
        # the module dict, not getattr: no lazy submodule import is triggered by a name
        obj = vars(torch).get(name) if not name.startswith("_") else None
        if isinstance(obj, (torch.dtype, torch.qscheme, torch.layout)):
            return obj
        return None
    if module == "torch.serialization" and name == "_get_layout":
        return _get_layout
    if module == "torch._utils":
        return REBUILDERS.get(name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module == "torch.jit._pickle":
        return JIT_PICKLE.get(name)
    return None


def _get_layout(name: str) -> Any:
    import torch

    layout = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(layout, torch.layout):
        raise pickle.UnpicklingError(f"unknown layout {name!r}")
    return layout


def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> Any:
    from torch._utils import _rebuild_tensor_v2 as real

    return real(storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any) -> Any:
    from torch._utils import _rebuild_tensor as real

    return real(storage, offset, tuple(size), tuple(stride))


def _rebuild_qtensor(storage: Any, offset: int, size: Any, stride: Any, quantizer_params: Any,
                     requires_grad: Any, backward_hooks: Any) -> Any:
    from torch._utils import _rebuild_qtensor as real

    if not isinstance(quantizer_params, tuple) or not quantizer_params:
        raise pickle.UnpicklingError("quantized tensor without quantizer parameters")
    return real(storage, offset, tuple(size), tuple(stride), quantizer_params, False,
                collections.OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, *rest: Any) -> Any:
    return data


def _rebuild_wrapper_subclass(cls: Any, dtype: Any, size: Any, stride: Any, offset: Any,
                              layout: Any, device: Any, requires_grad: Any) -> WrapperSubclass:
    obj = WrapperSubclass.__new__(WrapperSubclass)
    obj.__dict__["qualname"] = getattr(cls, "qualname", repr(cls))
    obj.__dict__["args"] = (dtype, tuple(size) if isinstance(size, (list, tuple)) else size)
    return obj


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's subclass rebuild, minus the subclass: the base object plus its state."""
    base = func(*args)
    if isinstance(base, Stub):
        base.__dict__["state"] = state
        if getattr(new_type, "qualname", None):
            base.__dict__["qualname"] = new_type.qualname
        return base
    return base  # a plain tensor whose subclass is dropped (state ignored)


REBUILDERS: dict[str, Callable[..., Any]] = {
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_qtensor": _rebuild_qtensor,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
    "_rebuild_wrapper_subclass": _rebuild_wrapper_subclass,
}


def _restore_type_tag(value: Any, type_str: Any) -> Any:
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


def stub_name(value: Any) -> str | None:
    """The qualified class name of a stub, or None for real values."""
    return value.qualname if isinstance(value, Stub) else None


def scan_globals(data: bytes, limit: int = 10_000) -> list[str]:
    """Every global a pickle names, by reading its opcodes (nothing is unpickled)."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        for i, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if i > 5_000_000 or len(names) >= limit:
                break
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                names.append(arg.replace(" ", ".", 1))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
                strings = strings[-2:]
            elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                names.append(f"{strings[0]}.{strings[1]}")
    except Exception:  # a damaged pickle: report what was seen so far
        pass
    return names
