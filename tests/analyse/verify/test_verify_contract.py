"""The runner contract: every verify runner, on a sample of its format, fills the same
report fields and the same per-row metrics, and honours or refuses (exit 2, with its
reason) every option; none is ignored."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import qinspect
from qinspect.analyse.verify import InputKind
from qinspect.analyse.verify.runner import runners
from qinspect.analyse.verify.types import OPTION_FLAGS
from qinspect.errors import InputError
from qinspect.render.verify import verify_json

SAMPLES = Path(__file__).resolve().parents[3] / "sample_checkpoints"
MLP_MODEL = f"{SAMPLES / 'models.py'}:MnistMLP"
CASES = {  # runner -> (file, options that make it run on real data)
    "state_dict": ("mlp_int8_fbgemm.pt", {"input": "sample.npy"}),
    "model": ("mlp_int8_fbgemm.pt", {"input": "sample.npy", "reference": "mlp_fp32.pt",
                                     "model": MLP_MODEL}),
    "torchscript": ("eager_mlp_int8_ts.pt", {"input": "format_net_input.npy"}),
    "fx-pickle": ("fx_mlp_int8_graphmodule.pt", {"input": "format_net_input.npy"}),
    "pt2": ("pt2e_mlp_x86.pt2", {"input": "format_net_input.npy"}),
    "torchao": ("torchao_int8dyn.pt", {}),
    "hf": ("hf/ct_w8a8_int", {"input": "hf/inputs/tokens.npy"}),
}
REFERENCE = {"state_dict": "mlp_fp32.pt", "model": "mlp_fp32.pt",
             "torchscript": "format_net_fp32.pt", "fx-pickle": "format_net_fp32.pt",
             "pt2": "format_net_fp32.pt", "torchao": None, "hf": "hf/llama_bf16"}
SCHEMA = json.loads(resources.files("qinspect").joinpath("schemas/verify-2.json").read_text())


def _options(name: str, **extra: object) -> dict[str, object]:
    base = {k: (v if k == "model" else SAMPLES / v) for k, v in CASES[name][1].items()}
    return {**base, **extra}


def _run(name: str, **extra: object):
    options = _options(name, **extra)
    return qinspect.verify(SAMPLES / CASES[name][0], **{
        ("layer_glob" if k == "layer" else k): v for k, v in options.items()})


def _runner(name: str):
    return next(r for r in runners() if r.name == name)


REFUSING: dict[str, Path] = {}  # runners that refuse their format, for now (none: hf runs)


def test_every_runner_has_a_case():
    assert {r.name for r in runners()} == set(CASES) | set(REFUSING)


@pytest.mark.parametrize("name", sorted(REFUSING))
def test_a_runner_that_cannot_run_its_format_says_so(name, cli):
    result = cli("verify", REFUSING[name], "--quiet")
    assert result.code == 2
    line = result.err.strip()
    assert "\n" not in line and "does not run" in line and "internal error" not in line


@pytest.mark.parametrize("name", sorted(CASES))
def test_runner_fills_the_same_fields(name):
    report = _run(name)
    assert report.runner == name
    assert report.scope and report.engine and report.engine_reason and report.float_domain
    assert report.input_text and report.layers
    jsonschema.validate(verify_json(report), SCHEMA)
    checked = 0
    for row in report.layers:
        assert row.verified, (row.name, row.reason)
        assert row.input_kind is not None and row.input_shape and row.elements > 0
        assert row.sqnr_db is not None and row.max_abs_error is not None
        if row.kernel is None:  # only a float output with nothing to requantize
            assert row.output_scale is None and row.notes, row.name
            continue
        assert row.kernel.elements > 0 and row.kernel.agree, (row.name, row.kernel)
        checked += 1
    assert checked >= len(report.layers) - 1
    if report.mode in ("graph", "model"):  # the whole model ran: an end-to-end number
        assert report.end_to_end is not None and report.end_to_end.elements > 0
        assert all(r.input_kind is InputKind.MODEL for r in report.layers)


def _given(name: str, field: str, tmp: Path) -> dict[str, object]:
    """A value of ``field`` for runner ``name`` that it must honour or refuse."""
    if field == "input":
        if name == "torchao":  # an input whose last dimension fits its first Linear
            x = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32)
            np.save(tmp / "x128.npy", x)
            return {"input": tmp / "x128.npy"}
        return {"input": SAMPLES / CASES[name][1]["input"]}
    if field == "reference":
        return {"reference": _perturbed_reference(name, tmp)}
    if field == "layer_glob" and name == "hf":
        return {"layer_glob": "*.q_proj"}
    return {"model": {"model": MLP_MODEL, "reference": SAMPLES / "mlp_fp32.pt",
                      "input": SAMPLES / "sample.npy"},
            "engine": {"engine": "qnnpack"}, "layer_glob": {"layer_glob": "fc1"},
            "seed": {"seed": 3}, "batch": {"batch": 2}}[field]


def _perturbed_reference(name: str, tmp: Path) -> Path:
    """A float reference that pairs with the runner's sample, every float weight 3 %
    larger than the checkpoint's own (so the float domain visibly changes with it)."""
    import torch

    if name == "hf":  # a Hugging Face base folder: safetensors beside its config.json
        import shutil

        from safetensors.torch import load_file, save_file

        base = SAMPLES / REFERENCE[name]
        out = tmp / "hf_base"
        out.mkdir()
        shutil.copy(base / "config.json", out / "config.json")
        state = load_file(str(base / "model.safetensors"))
        save_file({k: (v * 1.03).to(v.dtype) if k.endswith("weight") else v
                   for k, v in state.items()}, str(out / "model.safetensors"))
        return out
    if REFERENCE[name] is not None:
        state = torch.load(SAMPLES / REFERENCE[name], weights_only=True)
    else:  # torchao: the dequantized weights under the same names
        from qinspect.analyse.verify.torchao import _spec
        from qinspect.quant.affine import dequantize_blockwise

        state = {}
        for layer in qinspect.load(SAMPLES / CASES[name][0]).layers:
            spec = _spec(layer)
            if isinstance(spec, str):  # not a torchao weight (a float layer)
                continue
            w = dequantize_blockwise(spec.qdata, spec.scale, spec.zero_point, spec.block_size)
            state[f"{layer.name}.weight"] = torch.from_numpy(np.asarray(w, np.float32))
            if layer.bias is not None:
                state[f"{layer.name}.bias"] = torch.from_numpy(np.asarray(layer.bias,
                                                                          np.float32))
    state = {k: v * 1.03 if v.is_floating_point() and k.endswith("weight") else v
             for k, v in state.items()}
    path = tmp / f"{name}_fp32.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("field", sorted(OPTION_FLAGS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_option_is_honoured_or_refused(name, field, cli, tmp_path):
    runner = _runner(name)
    if name == "state_dict" and field == "model":
        pytest.skip("--model on a state_dict selects the model runner (tested there)")
    if field in runner.refuses:
        options = {**_options(name), **_given(name, field, tmp_path)}
        args = ["verify", SAMPLES / CASES[name][0]]
        for key, value in options.items():
            args += [OPTION_FLAGS[key], value]
        result = cli(*args)
        assert result.code == 2, result.err
        line = result.err.strip()
        assert "\n" not in line and OPTION_FLAGS[field] in line
        assert runner.refuses[field].split(":")[0][:30] in line
        return
    given = _given(name, field, tmp_path)
    with_option = _run(name, **given)
    _HONOURED[field](name, with_option, given)


def _input(name, report, given):
    assert str(given["input"]) in report.input_text or report.layers[0].input_kind in (
        InputKind.USER, InputKind.MODEL)
    assert any(r.input_kind in (InputKind.USER, InputKind.MODEL) for r in report.layers)


def _reference(name, report, given):
    assert report.reference == str(given["reference"])
    assert str(given["reference"]) in report.float_domain
    if "reference" in _runner(name).needs:
        return
    plain = _run(name)
    assert [r.sqnr_db for r in plain.layers] != [r.sqnr_db for r in report.layers]


def _model(name, report, given):
    assert report.runner == "model" and report.model == given["model"]


def _engine(name, report, given):
    assert report.engine == "qnnpack"
    assert all(r.kernel.engine == "qnnpack" for r in report.layers if r.kernel is not None)


def _layer_glob(name, report, given):
    from fnmatch import fnmatchcase

    assert report.layers and all(fnmatchcase(r.name, given["layer_glob"])
                                 for r in report.layers)
    assert len(report.layers) < len(_run(name).layers)


def _seed(name, report, given):
    assert report.seed == 3
    synthetic = [r for r in report.layers if r.input_kind is InputKind.SYNTHETIC]
    if not synthetic:  # the case's input feeds every layer: run without it
        other = {k: v for k, v in _options(name).items() if k != "input"}
        report = qinspect.verify(SAMPLES / CASES[name][0], seed=3, **other)
        synthetic = [r for r in report.layers if r.input_kind is InputKind.SYNTHETIC]
        again = qinspect.verify(SAMPLES / CASES[name][0], seed=4, **other)
    else:
        again = _run(name, seed=4)
    assert synthetic
    assert [r.sqnr_db for r in report.layers] != [r.sqnr_db for r in again.layers]


def _batch(name, report, given):
    assert report.batch == 2
    assert all(r.input_shape[0] <= 2 for r in report.layers if len(r.input_shape) > 1)


_HONOURED = {"input": _input, "reference": _reference, "model": _model, "engine": _engine,
             "layer_glob": _layer_glob, "seed": _seed, "batch": _batch}


@pytest.mark.parametrize("name", sorted(CASES))
def test_needed_options_are_asked_for(name):
    runner = _runner(name)
    for field, message in runner.needs.items():
        options = {k: v for k, v in _options(name).items() if k != field}
        with pytest.raises(InputError, match=OPTION_FLAGS[field]):
            qinspect.verify(SAMPLES / CASES[name][0], **options)
        assert OPTION_FLAGS[field] in message


def test_a_batch_that_is_not_positive_is_refused():
    with pytest.raises(InputError, match="--batch"):
        qinspect.verify(SAMPLES / "mlp_int8_fbgemm.pt", batch=0)


def test_state_dict_says_first_that_no_graph_is_stored(cli):
    result = cli("verify", SAMPLES / "mlp_int8_fbgemm.pt")
    assert result.code == 0, result.err
    first = result.out.strip().splitlines()[0]
    assert "stores no graph" in first
    assert "worst" not in result.out  # synthetic rows make no headline
    assert "the range was calibrated too narrow" not in result.out


def test_synthetic_rows_never_headline():
    report = qinspect.verify(SAMPLES / "convnet_int8.pt")
    assert all(r.input_kind is InputKind.SYNTHETIC for r in report.layers if r.verified)
    assert report.worst is None and report.explanation() is None
    assert "no graph" in report.scope and "--model" in report.scope


def test_user_input_rows_still_headline():
    report = qinspect.verify(SAMPLES / "mlp_int8_fbgemm.pt", input=SAMPLES / "sample.npy")
    assert report.worst is not None
    assert report.worst.input_kind is not InputKind.SYNTHETIC


def test_model_builder_function_is_accepted(tmp_path):
    """--model may name any callable returning the model (torchvision-style builders)."""
    builder = tmp_path / "zoo.py"
    builder.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(SAMPLES)!r})\n"
        "from models import MnistMLP\n\n"
        "def mnist_mlp(pretrained: bool = False, quantize: bool = False):\n"
        "    return MnistMLP()\n\n"
        "NOT_A_MODEL = 3\n\n"
        "def returns_a_number():\n"
        "    return 3\n")
    by_class = qinspect.verify(SAMPLES / "mlp_int8_fbgemm.pt", input=SAMPLES / "sample.npy",
                               reference=SAMPLES / "mlp_fp32.pt", model=MLP_MODEL)
    by_builder = qinspect.verify(SAMPLES / "mlp_int8_fbgemm.pt", input=SAMPLES / "sample.npy",
                                 reference=SAMPLES / "mlp_fp32.pt",
                                 model=f"{builder}:mnist_mlp")
    assert by_builder.end_to_end.sqnr_db == by_class.end_to_end.sqnr_db
    assert [r.sqnr_db for r in by_builder.layers] == [r.sqnr_db for r in by_class.layers]
    for name, needle in (("NOT_A_MODEL", "not a model class or a function"),
                         ("returns_a_number", "returned a int, not a torch.nn.Module")):
        with pytest.raises(InputError, match=needle):
            qinspect.verify(SAMPLES / "mlp_int8_fbgemm.pt", input=SAMPLES / "sample.npy",
                            reference=SAMPLES / "mlp_fp32.pt", model=f"{builder}:{name}")


def test_graph_input_of_the_wrong_rank_is_an_input_error(tmp_path, cli):
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((2, 64), np.float32))
    for f in ("eager_mlp_int8_ts.pt", "fx_mlp_int8_graphmodule.pt"):
        result = cli("verify", SAMPLES / f, "--input", bad)
        assert result.code == 2, result.err
        line = result.err.strip()
        assert "\n" not in line and "internal error" not in line and "--input" in line
