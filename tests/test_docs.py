"""The documentation site: ``mkdocs build --strict`` passes and the API pages carry the
docstrings of the public names, with their examples rendered as code."""

from __future__ import annotations

import html
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import onebyone as obo

ROOT = Path(__file__).resolve().parents[1]

# public name -> (the object, the API page that documents it)
DOCUMENTED = {
    "onebyone.conv1x1": (obo.conv1x1, "api/op"),
    "onebyone.numpy.conv1x1": (obo.numpy.conv1x1, "api/op"),
    "onebyone.nn.Conv1x1": (obo.nn.Conv1x1, "api/nn"),
    "onebyone.optimize": (obo.optimize, "api/deploy"),
    "onebyone.deploy.OptimizeReport": (obo.deploy.OptimizeReport, "api/deploy"),
    "onebyone.profile": (obo.profile, "api/cost"),
}


def _missing() -> str | None:
    for module, package in (
        ("mkdocs", "mkdocs"),
        ("mkdocstrings", "mkdocstrings"),
        ("mkdocstrings_handlers.python", "mkdocstrings[python]"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return package
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = _missing()
    if missing is not None:
        pytest.skip(f"{missing} is not installed (pip install -e '.[dev]'): docs not built")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _text(markup: str) -> str:
    """Visible text of an HTML fragment without any whitespace (highlighted code is split
    into spans, so only the characters are compared)."""
    return "".join(html.unescape(re.sub(r"<[^>]+>", "", markup)).split())


def _plain(docstring_text: str) -> str:
    """A docstring's text as the page shows it: ``code`` markup gone, no whitespace."""
    return "".join(docstring_text.replace("``", "").split())


def _section(site: Path, page: str, name: str) -> str:
    """The HTML of ``name``'s entry on ``page``: from its heading to the next top heading."""
    markup = (site / page / "index.html").read_text(encoding="utf-8")
    start = markup.find(f'id="{name}"')
    assert start >= 0, f"{page} has no entry {name}"
    end = markup.find("<h2 ", start + 1)
    return markup[start : end if end > 0 else len(markup)]


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_api_pages_show_the_docstring_and_its_example(site: Path, name: str) -> None:
    obj, page = DOCUMENTED[name]
    doc = inspect.getdoc(obj)
    assert doc, name
    text = _text(_section(site, page, name))
    summary = _plain(doc.split("\n\n")[0])
    assert summary in text
    lines = [line.strip() for line in doc.splitlines()]
    examples = [line for line in lines if line.startswith(">>>")]
    if examples:  # shown as code: Markdown would have made ">>>" a block quote
        assert _plain(examples[0]) in text
    else:  # the first documented argument or attribute, with its description
        entry = lines[next(i for i, line in enumerate(lines) if line in ("Args:", "Attributes:"))
                      + 1]  # fmt: skip
        assert _plain(entry.partition(": ")[2]) in text


def test_every_page_of_the_nav_is_built(site: Path) -> None:
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    built = [p for p in pages if (site / ("" if p == "index" else p) / "index.html").is_file()]
    assert built == pages
    op = _text((site / "op" / "index.html").read_text(encoding="utf-8"))
    assert "onebyone.kernels.routing.THRESHOLDS" in op
    assert "torch.jit.script" in op
