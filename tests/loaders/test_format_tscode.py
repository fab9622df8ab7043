"""The one TorchScript code walker (qinspect.loaders.tscode) under its two users: the
loader's symbolic walk (tsgraph.GraphWalker) and verify's interpreter. Hand-written code
in the shape TorchScript prints, and the sample archive with its forward rewritten the
way a hostile file would: the walk follows what it should, stays bounded, runs nothing."""

from __future__ import annotations

import zipfile
from pathlib import Path

from qinspect.loaders.tscode import parse_archive, parse_fx
from qinspect.loaders.tsgraph import GraphWalker

ROOT = "__torch__.Net"
SAMPLE = "eager_mlp_int8_ts.pt"
INPUT = "format_net_input.npy"


def _walk(forward: str, helpers: str = "") -> GraphWalker:
    source = ("class Net(Module):\n"
              "  def forward(self: __torch__.Net, x: Tensor) -> Tensor:\n" + forward)
    code = parse_archive({"code/__torch__.py": source,
                          "code/__torch__/helpers.py": helpers})
    walker = GraphWalker(code, {"": ROOT, "fc": "__torch__.Fc"}, {"fc"}, lambda s, z: None)
    walker.run(ROOT)
    return walker


def test_the_walk_follows_helpers_keywords_and_both_branches():
    walker = _walk(
        "    _0 = __torch__.helpers.quant(x, zp=3, scale=0.5)\n"
        "    if torch.__is__(x, None):\n"
        "      y = x\n"
        "    else:\n"
        "      y = (self.fc).forward(_0, )\n"
        "    return y\n",
        "def quant(x: Tensor, scale: float, zp: int=0) -> Tensor:\n"
        "  return torch.quantize_per_tensor(x, scale, zp, 13)\n")
    graph = walker.graph
    [q] = graph.quantizes
    assert (q.name, q.scale, q.zero_point, q.source) == ("quantize_per_tensor#1", 0.5, 3,
                                                         None)
    assert graph.inputs == {"fc": ["quantize_per_tensor#1"]}
    assert graph.order == ["quantize_per_tensor#1", "fc"] and not graph.problems


def test_recursion_stops_at_the_depth_budget():
    walker = _walk("    return self.forward(x)\n")
    assert walker.steps == walker.max_depth + 1 and not walker.graph.problems


def test_exponential_code_stops_at_the_step_budget_and_says_so():
    walker = _walk("    a = self.forward(x)\n"
                   "    b = self.forward(a)\n"
                   "    while True:\n"
                   "      pass\n"
                   "    return (self.fc).forward(b, )\n")
    assert walker.steps == walker.max_steps + 1
    assert walker.graph.problems == ["graph too large to walk; input sources beyond this "
                                     "point are not known"]


def test_unparseable_code_is_a_problem_not_an_error():
    code = parse_archive({"code/__torch__/bad.py": "def f(:\n"})
    assert code.problems == ("code/__torch__/bad.py: not parseable (SyntaxError)",)
    assert parse_fx(None, "root").problems == ("no _code in the pickle: layer inputs are "
                                               "not known",)
    assert parse_fx("def forward(self, x):\n    return x\n", "root").method(
        "root", "forward") is not None


def _rewritten(samples: Path, tmp: Path, name: str, old: str, new: str) -> Path:
    """The sample archive with a line of its root forward replaced."""
    out = tmp / f"{name}.pt"
    with zipfile.ZipFile(samples / SAMPLE) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("code/__torch__.py"):
                text = data.decode()
                assert old in text
                data = text.replace(old, new).encode()
            dst.writestr(info, data)
    return out


def test_verify_refuses_code_outside_its_allow_list_and_runs_none(cli, samples, tmp_path):
    marker = tmp_path / "ran"
    path = _rewritten(samples, tmp_path, "evil", "    x1 = torch.flatten(x0, 1)\n",
                      "    x1 = torch.flatten(x0, 1)\n"
                      f"    _9 = __import__('os').system('touch {marker}')\n")
    shown = cli("show", path)
    assert shown.code == 0 and "fc1" in shown.out
    verified = cli("verify", path, "--input", samples / INPUT)
    assert verified.code == 2 and "internal error" not in verified.err
    assert "verify cannot run '__import__' from a graph yet" in verified.err
    assert not marker.exists()


def test_verify_stops_recursive_code_at_the_depth_budget(cli, samples, tmp_path):
    path = _rewritten(samples, tmp_path, "recursive", "    return _2\n",
                      "    return self.forward(x)\n")
    assert cli("show", path).code == 0
    verified = cli("verify", path, "--input", samples / INPUT)
    assert verified.code == 2
    assert "calls nested too deeply to run" in verified.err
