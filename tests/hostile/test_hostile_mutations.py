"""Truncations and byte flips of every sample checkpoint: a few thousand broken files.

Seeds: every ``sample_checkpoints/*.pt``/``*.pt2`` (all the formats qinspect reads) plus
legacy-stream (pre-zip) copies of a few real flows from ``tests/support/torch_models.py``. Each
seed gets truncations (at random and at every structural boundary: local headers, member
data, central directory, end record) and flips / overwrites of bytes, half of them aimed
at the structure (the pickle, zip headers, central directory) rather than at tensor
bytes, where a flip only changes a number. Each mutated file runs once, under one
command variant drawn at random; everything is seeded by ``QINSPECT_FUZZ_SEED``.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest
from conftest import SAMPLES, SEED, Case

TRUNCATIONS = 16
FLIPS = 56
OVERWRITES = 16
EXTREMES = (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80",
            b"\xff" * 8, b"\x7f" + b"\xff" * 7, b"\x80", b"\x00", b"\x7f", b"\xfe")


def _legacy_seeds(directory: Path) -> list[Path]:
    import torch
    import torch_models as tm

    out = []
    flows = {
        "legacy_mlp_int8": lambda: tm.mlp_qat()[2].state_dict(),
        "legacy_lstm_dynamic": lambda: tm.dynamic(torch.qint8)[1].state_dict(),
        "legacy_embedding_4bit": lambda: tm.embeddings(True)[1].state_dict(),
        "legacy_qat_prepared": lambda: {"state_dict": tm.mlp_qat()[1].state_dict(),
                                        "epoch": 3},
    }
    for name, make in flows.items():
        path = directory / f"{name}.pt"
        torch.save(make(), path, _use_new_zipfile_serialization=False)
        out.append(path)
    return out


def _regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges that hold structure: pickles and zip headers (tensor bytes excluded)."""
    if not data.startswith(b"PK"):
        return [(0, min(len(data), 4096))]  # a legacy stream starts with its pickles
    regions = []
    try:
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                start = info.header_offset
                regions.append((start, start + 30 + len(info.filename) + len(info.extra)))
                if not info.filename.split("/")[-2:-1] == ["data"]:
                    begin = start + 30 + len(info.filename)
                    regions.append((begin, begin + info.compress_size + len(info.extra)))
            end = data.rfind(b"PK\x05\x06")
            cd = data.find(b"PK\x01\x02")
            regions.append((cd if cd >= 0 else end, len(data)))
    except zipfile.BadZipFile:  # pragma: no cover - seeds are valid
        regions.append((0, len(data)))
    return [(a, min(b, len(data))) for a, b in regions if a < min(b, len(data))]


def _boundaries(data: bytes) -> list[int]:
    cuts = {1, 2, 8, 16, 64, len(data) // 2, len(data) - 1, len(data) - 22, len(data) - 23}
    for start, end in _regions(data):
        cuts.update({start, start + 1, start + 30, end - 1, end})
    return sorted(c for c in cuts if 0 < c < len(data))


def mutate(seed_path: Path, directory: Path, rng: random.Random) -> list[Case]:
    data = seed_path.read_bytes()
    regions = _regions(data)
    cases = []

    def emit(label: str, body: bytes) -> None:
        path = directory / f"{seed_path.stem}.{len(cases):03d}.pt"
        path.write_bytes(body)
        cases.append(Case(f"{seed_path.name}: {label}", path, variants="one"))

    boundaries = _boundaries(data)
    cuts = rng.sample(boundaries, min(len(boundaries), TRUNCATIONS // 2))
    cuts += [rng.randrange(1, len(data)) for _ in range(TRUNCATIONS - len(cuts))]
    for cut in cuts:
        emit(f"truncated at {cut}", data[:cut])

    def position(aimed: bool) -> int:
        if aimed and regions:
            start, end = rng.choice(regions)
            return rng.randrange(start, end)
        return rng.randrange(len(data))

    for i in range(FLIPS):
        body = bytearray(data)
        spots = [position(i % 2 == 0) for _ in range(1 if i % 4 < 2 else rng.randint(2, 6))]
        for spot in spots:
            body[spot] = rng.randrange(256) if rng.random() < 0.5 else body[spot] ^ (
                1 << rng.randrange(8))
        emit(f"bytes changed at {spots}", bytes(body))
    for _ in range(OVERWRITES):
        body = bytearray(data)
        value = rng.choice(EXTREMES)
        spot = position(True)
        body[spot:spot + len(value)] = value
        emit(f"{value.hex()} written at {spot}", bytes(body[:len(data)]))
    return cases


@pytest.fixture(scope="module")
def mutated(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mutations")
    seeds_dir = tmp_path_factory.mktemp("mutation-seeds")
    seeds = sorted(SAMPLES.glob("*.pt")) + sorted(SAMPLES.glob("*.pt2"))
    assert seeds, "no sample checkpoints to mutate"
    seeds += _legacy_seeds(seeds_dir)
    cases = []
    for seed_path in seeds:
        cases += mutate(seed_path, directory, random.Random(f"{SEED}:{seed_path.name}"))
    return directory, seeds, cases


def test_mutated_samples(mutated, hostile):
    directory, seeds, cases = mutated
    assert len(cases) >= 2000, f"only {len(cases)} mutations from {len(seeds)} seeds"
    hostile.check("mutations", cases, directory=directory)
