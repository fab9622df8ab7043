"""Every qinspect command the README and the reference pages show on the bundled samples
runs as written, and every relative link between those pages leads somewhere.

The pages are README.md, SECURITY.md and every ``docs/*.md``. Commands run in-process
through ``qinspect.cli.main``, in page order, from one scratch folder per page that links
``sample_checkpoints/`` (so ``--output report.json`` lands there and a later
``--baseline report.json`` on the same page reads it); an example may demonstrate a
failing check (exit 1) but never a usage/input error or a crash. CI recipes that name
the reader's own files (``models/model_int8.pt``) are templates and are not run.

A pasted output (a ``text`` block) that follows a marker
``<!-- output at 80 columns: qinspect ARGS -->`` is compared with what the command prints
at that width: the block's lines must appear in the output as written, in order, each
run of lines contiguous; ``...`` on a line of its own marks where lines were left out
(also at the start or the end). After an intended change of output, blocks without
``...`` are rewritten with ``QINSPECT_UPDATE_GOLDEN=1`` (then read the diff); the failure
message of an excerpt shows the fresh output to paste from.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
# the pages whose relative links must resolve: the documentation and the samples' README
LINKED_PAGES = [*PAGES, ROOT / "sample_checkpoints" / "README.md"]
PREFIXES = (".venv/bin/qinspect ", "qinspect ")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
README_MAX_BYTES = 20_000


@dataclass(frozen=True)
class Example:
    """A command on a page, ``id`` its place (``docs/check.md:12``)."""

    page: Path
    line: int
    command: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def page_commands(page: Path) -> list[Example]:
    """The ``qinspect ... sample_checkpoints/...`` lines of the page's sh blocks, with the
    line each starts on (a command continued with a backslash is joined)."""
    text = page.read_text()
    examples = []
    for block in FENCE.finditer(text):
        if block.group(1) not in ("sh", "bash", "shell"):
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        pending: list[str] = []
        for offset, raw in enumerate(block.group(2).splitlines()):
            pending.append(raw.rstrip("\\").strip())
            if raw.endswith("\\"):
                continue
            line = " ".join(pending).split(" #", 1)[0].strip()
            start = first + offset - len(pending) + 1
            pending = []
            if line.startswith(PREFIXES) and "sample_checkpoints/" in line:
                examples.append(Example(page, start, line))
    return examples


def all_commands() -> list[Example]:
    return [example for page in PAGES for example in page_commands(page)]


# Pages that document a command or a format, with the least number of runnable examples
# each must keep; pages absent here (architecture, performance, development, security,
# the index) explain without sample commands.
MIN_EXAMPLES = {
    "README.md": 15,
    "docs/show.md": 3,
    "docs/diff.md": 3,
    "docs/verify.md": 5,
    "docs/check.md": 7,
    "docs/html.md": 3,
    "docs/formats.md": 8,
    "docs/hf-formats.md": 5,
}


def test_pages_have_examples():
    counts = {str(page.relative_to(ROOT)): len(page_commands(page)) for page in PAGES}
    assert set(MIN_EXAMPLES) <= set(counts), "a page that documents a command is missing"
    short = {page: counts[page] for page, least in MIN_EXAMPLES.items()
             if counts[page] < least}
    assert not short, f"pages with fewer examples than they had: {short}"


def test_readme_is_a_front_door():
    """The README stays a page (under 20 KB) and starts with the two set-up commands."""
    readme = ROOT / "README.md"
    assert readme.stat().st_size < README_MAX_BYTES
    first_block = FENCE.search(readme.read_text())
    assert first_block is not None
    lines = [line.split("#", 1)[0].strip() for line in first_block.group(2).splitlines()]
    assert lines == ["make demo", "make test"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> dict[Path, Path]:
    """One scratch folder per page, each linking the samples."""
    folders = {}
    for page in PAGES:
        folder = tmp_path_factory.mktemp(page.stem)
        (folder / "sample_checkpoints").symlink_to(ROOT / "sample_checkpoints")
        folders[page] = folder
    return folders


@pytest.mark.parametrize("example", all_commands(), ids=lambda example: example.id)
def test_page_command_runs(cli, example, monkeypatch, scratch):
    monkeypatch.chdir(scratch[example.page])
    argv = shlex.split(example.command)[1:]
    result = cli(*argv)
    assert result.code in (0, 1), f"{example.id}: {example.command}\n{result.err}"
    assert "Traceback" not in result.err
    assert result.out.strip(), f"{example.id}: {example.command} printed nothing"


# --- pasted outputs ----------------------------------------------------------------------

OUTPUT = re.compile(r"^<!-- output at (\d+) columns: (qinspect [^\n]*?) -->\n\n?```text\n(.*?)^```",
                    flags=re.S | re.M)
ELLIPSIS = "..."


@dataclass(frozen=True)
class Pasted(Example):
    """A pasted output: the command's output at ``columns`` columns, as shown."""

    columns: int
    text: str


def pasted_outputs(page: Path) -> list[Pasted]:
    text = page.read_text()
    return [Pasted(page, text.count("\n", 0, match.start()) + 1, match.group(2),
                   int(match.group(1)), match.group(3))
            for match in OUTPUT.finditer(text)]


def all_pasted() -> list[Pasted]:
    return [pasted for page in PAGES for pasted in pasted_outputs(page)]


def excerpt_matches(excerpt: list[str], output: list[str]) -> bool:
    """Whether ``excerpt`` is ``output`` with runs of lines replaced by ``...`` lines."""
    segments: list[list[str]] = [[]]
    for line in excerpt:
        if line == ELLIPSIS:
            segments.append([])
        else:
            segments[-1].append(line)
    pos = 0
    for k, segment in enumerate(segments):
        if not segment:
            continue
        starts = [i for i in range(pos, len(output) - len(segment) + 1)
                  if output[i:i + len(segment)] == segment]
        if k == 0:                      # no leading "...": the output's first line
            starts = [i for i in starts if i == 0]
        if not starts:
            return False
        pos = starts[0] + len(segment)
    return pos == len(output) or bool(excerpt) and excerpt[-1] == ELLIPSIS


def test_excerpt_matching_is_strict():
    output = ["a", "b", "c", "d"]
    assert excerpt_matches(["a", "b", "c", "d"], output)
    assert excerpt_matches(["...", "b", "...", "d"], output)
    assert excerpt_matches(["a", "...", "c", "..."], output)
    assert not excerpt_matches(["a", "c", "d"], output)          # a gap needs "..."
    assert not excerpt_matches(["b", "c", "d"], output)          # so does a cut start
    assert not excerpt_matches(["a", "b", "c"], output)          # and a cut end
    assert not excerpt_matches(["...", "c", "b", "..."], output)  # order kept
    assert not excerpt_matches(["...", "x", "..."], output)


def test_pages_have_pasted_outputs():
    """The comparison is not vacuous: the README's outputs are real and marked."""
    assert len(pasted_outputs(ROOT / "README.md")) >= 4
    assert len(all_pasted()) >= 10


@pytest.mark.parametrize("pasted", all_pasted(), ids=lambda pasted: pasted.id)
def test_pasted_output_is_real(cli, pasted, monkeypatch, scratch):
    monkeypatch.chdir(scratch[pasted.page])
    monkeypatch.setenv("COLUMNS", str(pasted.columns))
    result = cli(*shlex.split(pasted.command)[1:])
    output = [line.rstrip() for line in result.out.rstrip("\n").splitlines()]
    excerpt = [line.rstrip() for line in pasted.text.rstrip("\n").splitlines()]
    if excerpt_matches(excerpt, output):
        return
    if os.environ.get("QINSPECT_UPDATE_GOLDEN") == "1" and ELLIPSIS not in excerpt:
        page = pasted.page.read_text()
        fresh = "\n".join(output) + "\n"
        pasted.page.write_text(page.replace("```text\n" + pasted.text, "```text\n" + fresh, 1))
        return
    fresh = "\n".join(output)
    pytest.fail(f"{pasted.id}: the output of `{pasted.command}` at {pasted.columns} columns "
                f"no longer shows these lines; paste from the fresh output:\n{fresh}")


# --- links -------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped (but ``-`` and
    ``_``), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.*)$", text, flags=re.M):
        anchor = github_anchor(heading)
        n = 0
        while (candidate := anchor if n == 0 else f"{anchor}-{n}") in found:
            n += 1
        found.add(candidate)
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z]+:", target)]


def test_github_anchor_matches_github():
    assert github_anchor("`qinspect show`") == "qinspect-show"
    assert github_anchor("Regression gating with `--baseline`") == \
        "regression-gating-with---baseline"
    assert github_anchor("Hugging Face checkpoints (safetensors)") == \
        "hugging-face-checkpoints-safetensors"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_link_checker_sees_links():
    """The link test is not vacuous: the README links every reference page."""
    targets = {target.partition("#")[0] for target in relative_links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert str(page.relative_to(ROOT)) in targets, f"README does not link {page.name}"
