"""Pickles that would run code: none of it may run, whatever the command.

Each payload, if unpickled by a normal unpickler, creates a marker file (or deletes a
canary). The payloads are first proven live: a subprocess loads every file with
``torch.load(weights_only=False)`` and the markers appear. Then every qinspect command
runs on the same payloads (written with their own markers) and the markers must not
appear, the canary must survive, and each run must end in exit 2 with one clear line
(or exit 0 when the payload sits where qinspect never unpickles it).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Case
from craft import Builder, Call, G, ODict, Pid, dumps, tensor, write_zip


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def payloads(marker: Path, canary: Path, evil_file: Path) -> dict[str, object]:
    """name -> a pickled call tree that, run for real, creates ``marker`` (or deletes
    ``canary``)."""
    os_mod = Call(G("builtins", "__import__"), ("os",))
    return {
        "os.system": Call(G("os", "system"), (_touch(marker),)),
        "posix.system": Call(G("posix", "system"), (_touch(marker),)),
        "builtins.eval": Call(G("builtins", "eval"), (f"open({str(marker)!r}, 'w')",)),
        "builtins.exec": Call(G("builtins", "exec"), (f"open({str(marker)!r}, 'w')",)),
        "builtins.open": Call(G("builtins", "open"), (str(marker), "w")),
        "subprocess.Popen": Call(G("subprocess", "Popen"), (["touch", str(marker)],)),
        "subprocess.check_call": Call(G("subprocess", "check_call"), (["touch", str(marker)],)),
        "getattr-chain": Call(Call(G("builtins", "getattr"), (os_mod, "system")),
                              (_touch(marker),)),
        "importlib-chain": Call(Call(G("builtins", "getattr"), (
            Call(G("importlib", "import_module"), ("os",)), "system")), (_touch(marker),)),
        "os.remove-canary": Call(G("os", "remove"), (str(canary),)),
        "pickle.loads": Call(G("pickle", "loads"), (
            Call(G("_codecs", "encode"), (_evil_pickle(marker).decode("latin1"), "latin1")),)),
        "torch.load-in-pickle": Call(G("torch", "load"), (
            str(evil_file), "cpu", Call(G("importlib", "import_module"), ("pickle",)))),
        "torch.jit.load": Call(G("torch.jit", "load"), (str(evil_file),)),
        "torch.save-writes": Call(G("torch", "save"), ({"x": 1}, str(marker))),
    }


def _evil_pickle(marker: Path) -> bytes:
    return dumps(Call(G("os", "system"), (_touch(marker),)))


def _state_dict(b: Builder, payload: object, where: str) -> object:
    """A real-looking state_dict with the payload hidden at ``where``."""
    weight = b.floats([1.0, 2.0, 3.0, 4.0], (2, 2))
    items = [("fc.weight", weight), ("fc.bias", b.floats([0.0, 0.0]))]
    if where == "value":
        return ODict(tuple(items + [("fc.extra", payload)]))
    if where == "key":  # the call is a dict key
        return ODict(((payload, weight),) + tuple(items))
    if where == "metadata":
        return ODict(tuple(items), metadata=ODict((("fc", {"version": payload}),)))
    if where == "wrapper":
        return {"state_dict": ODict(tuple(items)), "optimizer": payload}
    if where == "scriptobject":  # inside the state a TorchScript object would carry
        obj = Call(G("torch", "ScriptObject"), (), state=((payload,), "CellParamsBase"),
                   newobj=True)
        return ODict(tuple(items + [("lstm._all_weight_values.0.param", obj)]))
    if where == "tensor-hooks":  # the backward-hooks slot of a tensor rebuild
        st = b.storage("float32", bytes(8))
        t = Call(G("torch._utils", "_rebuild_tensor_v2"),
                 (st, 0, (2,), (1,), False, payload))
        return ODict(tuple(items + [("fc.scale", t)]))
    if where == "storage-type":  # the storage class a persistent id names
        t = tensor(Pid(("storage", payload, "0", "cpu", 2)), (2,))
        return ODict(tuple(items[1:] + [("fc.weight", t)]))
    if where == "rebuild-state":  # attributes set on a tensor after it is rebuilt
        st = b.storage("float32", bytes(8))
        inner = tensor(st, (2,))
        t = Call(G("torch._tensor", "_rebuild_from_type_v2"), (
            G("torch._utils", "_rebuild_tensor_v2"), G("torch", "Tensor"),
            inner.args, {"numpy": payload}))
        return ODict(tuple(items + [("fc.zero_point", t)]))
    raise AssertionError(where)


PLACES = ("value", "key", "metadata", "wrapper", "scriptobject", "tensor-hooks",
          "storage-type", "rebuild-state")


def build(directory: Path, tag: str, marker: Path, canary: Path) -> list[tuple[str, Path]]:
    """Every payload in every place, as a zip archive; plus legacy, plain-pickle,
    protocol-0 and protocol-4 encodings of a few."""
    directory.mkdir(parents=True, exist_ok=True)
    evil = directory / f"evil_full_{tag}.pkl"
    evil.write_bytes(_evil_pickle(marker))
    files = []
    for name, payload in payloads(marker, canary, evil).items():
        slug = name.replace(".", "_")
        for where in PLACES:
            b = Builder()
            path = b.save(directory / f"{slug}__{where}_{tag}.pt", _state_dict(b, payload, where))
            files.append((f"{name} in {where}", Path(path)))
        b = Builder(legacy=True)
        path = b.save(directory / f"{slug}__legacy_{tag}.pt", _state_dict(b, payload, "value"))
        files.append((f"{name} (legacy stream)", Path(path)))
        plain = directory / f"{slug}__plain_{tag}.pt"
        plain.write_bytes(dumps({"fc.weight": payload}))
        files.append((f"{name} (plain pickle)", plain))
    # the same call spelled with other opcodes: INST (protocol 0) and STACK_GLOBAL (4)
    inst = b"\x80\x02(X" + len(_touch(marker)).to_bytes(4, "little") + _touch(marker).encode()
    inst += b"ios\nsystem\n."
    stack_global = (b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(_touch(marker))])
                    + _touch(marker).encode() + b"\x85R.")
    for label, body in (("INST", inst), ("STACK_GLOBAL", stack_global)):
        path = write_zip(directory / f"opcode_{label}_{tag}.pt", body, {})
        files.append((f"os.system via {label} opcode", Path(path)))
        plain = directory / f"opcode_{label}_plain_{tag}.pt"
        plain.write_bytes(body)
        files.append((f"os.system via {label} opcode (plain pickle)", plain))
    # torch.save itself, on an object whose __reduce__ runs code
    import torch

    real = directory / f"torch_save_reduce_{tag}.pt"
    torch.save({"fc.weight": torch.zeros(2), "x": _RunsCode(str(marker))}, real)
    files.append(("torch.save of a __reduce__ object", real))
    legacy = directory / f"torch_save_reduce_legacy_{tag}.pt"
    torch.save({"x": _RunsCode(str(marker))}, legacy, _use_new_zipfile_serialization=False)
    files.append(("torch.save (legacy) of a __reduce__ object", legacy))
    plain = directory / f"pickle_dumps_{tag}.pt"
    plain.write_bytes(pickle.dumps({"x": _RunsCode(str(marker))}, protocol=2))
    files.append(("pickle.dumps of a __reduce__ object", plain))
    return files


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


CONTROL = r"""
import sys, torch, warnings
warnings.filterwarnings("ignore")
for path in sys.argv[1:]:
    try:
        torch.load(path, weights_only=False)
    except BaseException:
        pass
    try:
        import pickle
        with open(path, "rb") as fh:
            pickle.load(fh)
    except BaseException:
        pass
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The payloads written twice: with control markers (proven to run when loaded
    unsafely) and with the markers qinspect must never create."""
    base = tmp_path_factory.mktemp("code")
    control_marker, control_canary = base / "control_ran", base / "control_canary"
    marker, canary = base / "ran", base / "canary"
    control = build(base / "control", "c", control_marker, control_canary)
    hostile = build(base / "hostile", "h", marker, canary)
    return base, control, hostile, (control_marker, control_canary), (marker, canary)


def test_payloads_are_live_when_unpickled_unsafely(live):
    """Positive control: a normal torch.load/pickle.load runs the payloads."""
    base, control, _, (marker, canary), _ = live
    canary.write_text("still here")
    subprocess.run([sys.executable, "-c", CONTROL, *(str(p) for _, p in control)],
                   cwd=base, capture_output=True, timeout=300)
    assert marker.exists(), "the payloads did not run even when loaded unsafely"
    assert not canary.exists(), "os.remove payload did not run when loaded unsafely"


def test_no_payload_runs_under_any_command(live, hostile):
    base, _, files, _, (marker, canary) = live
    canary.write_text("still here")
    cases = [Case(name, path, markers=(marker,)) for name, path in files]
    hostile.check("code-execution", cases, directory=base / "hostile")
    assert not marker.exists(), "code from a hostile file ran"
    assert canary.read_text() == "still here", "a hostile file deleted a file"
