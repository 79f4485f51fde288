"""The docs cannot rot: every ```python block of README.md and docs/*.md runs and prints what
the page shows, every command of a shell block names a real make target or `jaxscale` flag,
and every generated table and chart equals what `python -m benchmarks.report --docs` makes of
the committed results under benchmarks/results/.

A ```python block followed (blank lines apart) by a ```text block must print exactly that
text. The blocks of one page run in order in one namespace, in a temporary folder where
`mnist` is the real MNIST folder (pages that read it are skipped without it).
"""

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
PAGES = report.doc_pages(ROOT)
# Pages whose python blocks another test runs, because they train for minutes.
RUN_ELSEWHERE = {
    "docs/keras.md": "tests/test_keras_training.py::"
                     "test_docs_keras_examples_run_and_print_what_the_page_shows",
}
# Pages whose blocks take long enough to run only under `make test-slow` (none yet: the
# blocks are kept small; list a page here rather than letting `make test` grow).
SLOW_PAGES: set[str] = set()
README_LINES = 200

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_blocks(page: Path) -> list[tuple[str, str, int, int, int]]:
    """(language, body, first line, start, end offset) of every fenced block of a page."""
    text = page.read_text()
    return [(m["lang"], m["body"], text.count("\n", 0, m.start()) + 1, m.start(), m.end())
            for m in _FENCE.finditer(text)]


def python_examples(page: Path) -> list[tuple[str, str | None, int]]:
    """(code, the output the page shows or None, line) of every python block."""
    text = page.read_text()
    blocks = fenced_blocks(page)
    examples = []
    for index, (lang, body, line, _, end) in enumerate(blocks):
        if lang != "python":
            continue
        shown = None
        if index + 1 < len(blocks):
            next_lang, next_body, _, next_start, _ = blocks[index + 1]
            if next_lang == "text" and not text[end:next_start].strip():
                shown = next_body
        examples.append((body, shown, line))
    return examples


def _run_here() -> list:
    return [pytest.param(p, marks=pytest.mark.slow) if _name(p) in SLOW_PAGES else p
            for p in PAGES if _name(p) not in RUN_ELSEWHERE and python_examples(p)]


@pytest.mark.parametrize("page", _run_here(), ids=_name)
def test_python_blocks_run_and_print_what_the_page_shows(page, tmp_path, monkeypatch,
                                                         request):
    from jaxscale.training import models

    examples = python_examples(page)
    if any('"mnist"' in code and "data_dir" in code for code, _, _ in examples):
        (tmp_path / "mnist").symlink_to(request.getfixturevalue("mnist_dir"))
    monkeypatch.chdir(tmp_path)
    registered = dict(models.MODELS)  # a page may register a model: forget it afterwards
    namespace = {"__name__": "__docs__"}
    try:
        for code, shown, line in examples:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"{_name(page)}:{line}", "exec"), namespace)  # noqa: S102
            if shown is not None:
                assert printed.getvalue().rstrip() == shown.rstrip(), (
                    f"{_name(page)}:{line} printed\n{printed.getvalue()}")
    finally:
        models.MODELS.clear()
        models.MODELS.update(registered)


def test_pages_run_elsewhere_are_run_by_a_test_that_exists():
    for page, test in RUN_ELSEWHERE.items():
        path, name = test.split("::")
        assert (ROOT / page).exists() and f"def {name}(" in (ROOT / path).read_text()


def _commands(body: str) -> list[list[str]]:
    """The words of each command of a shell block (continuations joined, comments and
    prompts dropped, `a && b`, `a; b` split)."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command = []
        for word in words + [";"]:
            if word in (";", "&&", "||", "|", "&"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_shell_blocks_name_real_make_targets_flags_and_modules():
    from jaxscale.training.cli import build_parser

    targets = _make_targets()
    checked = 0
    for page in PAGES:
        for lang, body, line, _, _ in fenced_blocks(page):
            if lang not in ("sh", "bash", "console"):
                continue
            for words in _commands(body):
                where = f"{_name(page)}:{line}: {' '.join(words)}"
                program = Path(words[0]).name
                if program == "make":
                    for target in (w for w in words[1:] if "=" not in w and
                                   not w.startswith("-")):
                        assert target in targets, where
                    checked += 1
                elif program == "jaxscale":
                    try:
                        build_parser().parse_args(words[1:])
                    except SystemExit as error:
                        assert error.code == 0, where  # --help exits 0
                    checked += 1
                elif program.startswith("python") and words[1:2] == ["-m"]:
                    assert importlib.util.find_spec(words[2]) is not None, where
                    checked += 1
    assert checked > 0


def test_generated_tables_and_charts_equal_the_committed_results():
    stale = report.update_docs(ROOT, check=True)
    assert not stale, ("out of date (run `make docs-tables` and commit): "
                       + ", ".join(str(p.relative_to(ROOT)) for p in stale))


def test_every_chart_a_page_shows_exists():
    for page in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{_name(page)}: {target}"


def test_the_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines"
