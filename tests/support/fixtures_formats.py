"""Live objects from the real flows of ``sample_checkpoints/make_format_samples.py``, and
the files they save, shared by the format tests (made once per session)."""

from __future__ import annotations

import warnings

import make_format_samples as mfs  # on sys.path via tests/conftest.py
import pytest
import torch

warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def fx_made():
    return mfs.fx_flow()


@pytest.fixture(scope="session")
def fx_files(fx_made, tmp_path_factory):
    d = tmp_path_factory.mktemp("fx")
    q = fx_made.quantized
    files = {"state_dict": d / "fx_sd.pt", "ts": d / "fx_ts.pt", "pickle": d / "fx_gm.pt"}
    torch.save(q.state_dict(), files["state_dict"])
    torch.jit.save(torch.jit.script(q), files["ts"])
    torch.save(q, files["pickle"])
    return files


@pytest.fixture(scope="session")
def eager_made():
    return mfs.eager_flow()


@pytest.fixture(scope="session")
def eager_ts_file(eager_made, tmp_path_factory):
    path = tmp_path_factory.mktemp("eager") / "eager_ts.pt"
    torch.jit.save(torch.jit.script(eager_made.quantized), path)
    return path


@pytest.fixture(scope="session", params=["xnnpack", "x86"])
def pt2e(request, tmp_path_factory):
    made = mfs.pt2e_flow(request.param)
    path = tmp_path_factory.mktemp("pt2e") / f"pt2e_{request.param}.pt2"
    torch.export.save(made.quantized, path)
    return made, path


@pytest.fixture(scope="session", params=["int8wo", "int8dyn", "int4wo"])
def torchao_made(request, tmp_path_factory):
    made = mfs.torchao_flow(request.param)
    path = tmp_path_factory.mktemp("ao") / f"{request.param}.pt"
    torch.save(made.quantized.state_dict(), path)
    return request.param, made, path
