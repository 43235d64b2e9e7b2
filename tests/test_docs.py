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

# public name -> (the object, the API page that documents it, its entry's anchor). A
# function named like its module (onebyone.deploy.optimize.optimize) is documented by
# its full path: the short one would be the module.
DOCUMENTED = {
    "onebyone.conv1x1": (obo.conv1x1, "api/op", "onebyone.conv1x1"),
    "onebyone.numpy.conv1x1": (obo.numpy.conv1x1, "api/op", "onebyone.numpy.conv1x1"),
    "onebyone.nn.Conv1x1": (obo.nn.Conv1x1, "api/nn", "onebyone.nn.Conv1x1"),
    "onebyone.optimize": (obo.optimize, "api/deploy", "onebyone.deploy.optimize.optimize"),
    "onebyone.deploy.OptimizeReport": (
        obo.deploy.OptimizeReport,
        "api/deploy",
        "onebyone.deploy.OptimizeReport",
    ),
    "onebyone.profile": (obo.profile, "api/cost", "onebyone.profile"),
    "onebyone.verify": (obo.verify, "api/transforms", "onebyone.transforms.verify.verify"),
    "onebyone.compress": (obo.compress, "api/compress", "onebyone.transforms.compress.compress"),
    "onebyone.load_compressed": (obo.load_compressed, "api/compress", "onebyone.load_compressed"),
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


def _entry(site: Path, page: str, anchor: str) -> str:
    """The HTML of one entry on ``page``, its members left out: from its heading to the
    next object's heading."""
    markup = (site / page / "index.html").read_text(encoding="utf-8")
    at = markup.find(f'id="{anchor}"')
    assert at >= 0, f"{page} has no entry {anchor}"
    start = markup.rfind("<", 0, at)  # the heading's tag
    end = markup.find('class="doc doc-heading"', markup.index(">", start))
    return markup[start : end if end > 0 else len(markup)]


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_api_pages_show_the_docstring_and_its_example(site: Path, name: str) -> None:
    obj, page, anchor = DOCUMENTED[name]
    doc = inspect.getdoc(obj)
    assert doc, name
    text = _text(_entry(site, page, anchor))
    assert text.startswith(name)  # the heading shows the public name
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
