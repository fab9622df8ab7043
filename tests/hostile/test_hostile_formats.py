"""Decompression bombs and memo edits in every format qinspect reads (issue 18).

Each case is built from a committed sample of one format (torch.save eager state_dict,
TorchScript archive, torchao state_dict, pickled FX GraphModule, torch.export ``.pt2``):

* a member replaced by a deflate stream of 512 MiB of zeros, its size declared honestly,
  declared as the member's old size (a lying header), or declared just under the bound;
* many deflated members that each stay under the per-member bound but together exceed the
  per-file bound;
* the archive's ``data.pkl`` with one extra ``LONG_BINPUT`` storing the same object under
  memo index 2^27, 2^30 or 2^32 - 1 (five bytes; the pickle is otherwise intact).

Every case must end, for ``show`` in a fresh process, with exit 2, one line naming the
file, and a peak RSS within the suite's bound (256 MB of growth); then every command runs
on it in the worker pool under the suite's contract.
"""

from __future__ import annotations

import functools
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import runner
from conftest import SAMPLES, Case, excuse

FORMATS = {
    "torch.save": "mlp_int8_fbgemm.pt",
    "TorchScript": "eager_mlp_int8_ts.pt",
    "torchao": "torchao_int8wo.pt",
    "FX pickle": "fx_mlp_int8_graphmodule.pt",
    ".pt2": "pt2e_mlp_xnnpack.pt2",
}
BOMB_BYTES = 2**29
#: the member each format's bomb replaces (a path inside the archive folder)
TARGETS = {
    "torch.save": "data.pkl",
    "TorchScript": "code/__torch__.py",
    "torchao": "data.pkl",
    "FX pickle": "data.pkl",
    ".pt2": "models/model.json",
}


def _members(sample: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(sample) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


@functools.cache
def _zeros_deflated(count: int) -> tuple[bytes, int]:
    """(raw deflate stream of ``count`` zero bytes, its CRC), without holding them."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = bytes(2**20)
    parts, crc, left = [], 0, count
    while left > 0:
        piece = chunk[:min(left, len(chunk))]
        parts.append(comp.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    parts.append(comp.flush())
    return b"".join(parts), crc


def _write(path: Path, entries: list[tuple[str, int, bytes, int, int]]) -> None:
    """A zip from (name, method, payload, crc, declared size), headers written by hand so
    a declared size can lie."""
    body, central = bytearray(), bytearray()
    for name, method, payload, crc, declared in entries:
        fname = name.encode("utf-8")
        offset = len(body)
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc,
                            len(payload), declared, len(fname), 0) + fname + payload
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0,
                               0, crc, len(payload), declared, len(fname), 0, 0, 0, 0, 0,
                               offset) + fname
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                      len(central), len(body), 0)
    path.write_bytes(bytes(body) + bytes(central) + end)


def _rebuilt(sample: Path, replace: Callable[[str, bytes], list | None]) -> list:
    """The sample's members, each stored, unless ``replace(local name, data)`` gives
    entries for it."""
    out = []
    for info, data in _members(sample):
        local = info.filename.split("/", 1)[1]
        new = replace(local, data)
        if new is None:
            out.append((info.filename, 0, data, zlib.crc32(data), len(data)))
        else:
            prefix = info.filename.split("/", 1)[0]
            out.extend((f"{prefix}/{n}", *rest) for n, *rest in new)
    return out


def bomb(fmt: str, declared: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        payload, crc = _zeros_deflated(BOMB_BYTES)

        def replace(local: str, data: bytes):
            if local != TARGETS[fmt]:
                return None
            size = {"honest": BOMB_BYTES, "lying": len(data),
                    "under the bound": 32 * 2**20 - 1}[declared]
            return [(local, 8, payload, crc, size)]

        _write(path, _rebuilt(SAMPLES / FORMATS[fmt], replace))
    return build


def many_members(fmt: str) -> Callable[[Path], None]:
    """Twelve extra deflated members of 12 MiB of zeros each: each is under the
    per-member bound, together they pass the per-file bound."""
    def build(path: Path) -> None:
        payload, crc = _zeros_deflated(12 * 2**20)

        def replace(local: str, data: bytes):
            if local != TARGETS[fmt]:
                return None
            pad = [(f"code/pad{i}.py" if fmt == "TorchScript" else f"pad/{i}", 8, payload,
                    crc, 12 * 2**20) for i in range(12)]
            # the pads come first, so a reader that reads every member meets them early
            return pad + [(local, 0, data, zlib.crc32(data), len(data))]

        _write(path, _rebuilt(SAMPLES / FORMATS[fmt], replace))
    return build


def memo_edit(fmt: str, index: int) -> Callable[[Path], None]:
    """One extra ``LONG_BINPUT index`` right after the first memo store of data.pkl."""
    def build(path: Path) -> None:
        def replace(local: str, data: bytes):
            if local != "data.pkl":
                return None
            for op, _arg, pos in pickletools.genops(data):
                if op.name in ("BINPUT", "LONG_BINPUT"):
                    end = pos + (2 if op.name == "BINPUT" else 5)
                    edited = data[:end] + b"r" + struct.pack("<I", index) + data[end:]
                    return [(local, 0, edited, zlib.crc32(edited), len(edited))]
            raise AssertionError(f"{fmt}: data.pkl stores nothing in its memo")

        _write(path, _rebuilt(SAMPLES / FORMATS[fmt], replace))
    return build


CASES: list[tuple[str, Callable[[Path], None]]] = []
for _fmt in FORMATS:
    for _declared in ("honest", "lying", "under the bound"):
        CASES.append((f"{_fmt}: {TARGETS[_fmt]} deflated from 512 MiB, size declared "
                      f"{_declared}", bomb(_fmt, _declared)))
    CASES.append((f"{_fmt}: twelve deflated members of 12 MiB", many_members(_fmt)))
    if _fmt != ".pt2":
        for _index in (2**27, 2**30, 2**32 - 1):
            CASES.append((f"{_fmt}: data.pkl memo index {_index}", memo_edit(_fmt, _index)))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[Case]]:
    directory = tmp_path_factory.mktemp("formats")
    cases = []
    for index, (name, build) in enumerate(CASES):
        path = directory / f"b{index:03d}{Path(FORMATS[name.split(':')[0]]).suffix}"
        build(path)
        cases.append(Case(name, path, variants="per-command"))
    return directory, cases


def test_every_format_refuses_bombs_and_memo_edits_in_one_line(built, hostile_cwd):
    """``show`` in a fresh process: exit 2, one line naming the file, peak RSS within
    the fresh-process bound (``runner.judge``)."""
    from concurrent.futures import ThreadPoolExecutor

    _, cases = built
    with ThreadPoolExecutor(runner.WORKERS) as ex:
        outcomes = list(ex.map(lambda c: runner.run_fresh(c.name, ["show", str(c.path)],
                                                          hostile_cwd), cases))
    runner.TALLY.fresh += len(outcomes)
    failures = [(o, problems) for o in outcomes
                if (problems := runner.judge(o, (2,), fresh=True))]
    assert not failures, runner.report(failures)
    for outcome, case in zip(outcomes, cases, strict=True):
        assert case.path.name in outcome.err, (case.name, outcome.err)


def test_every_command_survives_them(built, hostile):
    directory, cases = built
    result = hostile.run("formats", cases, directory=directory)
    real = [(o, p) for o, p in result.failures if excuse(o.name, o.argv, p, {})]
    assert not real, runner.report(real)
