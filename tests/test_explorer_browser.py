"""The explorer page in a real headless Chromium: what it computes equals the library.

Chromium is Debian's (``chromium``), driven by Playwright; Playwright's own
browser download is not used. Without a browser these tests skip, saying why.
Set ``ONEBYONE_EXPLORER_SHOTS=docs`` to also write the README's screenshots
(``docs/explorer-worked.png``, ``docs/explorer-costs.png``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import onebyone as obo
from onebyone.explain import SEED_MAPS, fc_equivalence, fusion_example, worked_example
from onebyone.explain.explorer import EXPLORER_MODELS, model_profile
from pngfile import assert_sensible_png

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECTIONS = ("worked", "depth", "fusion", "costs", "linear", "models")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (apt-get install chromium); browser tests skipped")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the [dev] extra has it)"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Session:
    """One page at 1280x800 with every console message and request it made."""

    def __init__(self, browser: Any, url: str) -> None:
        self.url = url
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None,
        )
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.reload()

    def reload(self) -> Any:
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='true']", timeout=10_000)
        return self.page

    def values(self, selector: str) -> np.ndarray:
        """The exact values of a grid's cells (``data-value``), as a 2-D array."""
        cells = self.page.eval_on_selector_all(
            f"{selector} td[data-row]",
            "els => els.map(e => [+e.dataset.row, +e.dataset.col, +e.dataset.value])",
        )
        h = 1 + max(int(r) for r, _, _ in cells)
        w = 1 + max(int(c) for _, c, _ in cells)
        out = np.full((h, w), np.nan)
        for r, c, v in cells:
            out[int(r), int(c)] = v
        return out

    def vector(self, selector: str) -> np.ndarray:
        return np.array(
            self.page.eval_on_selector_all(
                f"{selector} td[data-value]", "els => els.map(e => +e.dataset.value)"
            )
        )

    def number(self, selector: str) -> int:
        return int(self.page.get_attribute(selector, "data-value"))

    def number_attr(self, selector: str, key: str) -> int:
        return int(self.page.get_attribute(selector, f"data-{key}"))


@pytest.fixture(scope="module")
def session(browser: Any, explorer_page: Path) -> Session:
    return Session(browser, explorer_page.as_uri())


def test_page_loads_offline_without_errors(session):
    assert session.errors == []
    assert session.requests and all(url.startswith("file://") for url in session.requests), [
        url for url in session.requests if not url.startswith("file://")
    ]
    assert session.page.is_hidden("#load-error")


def test_every_section_renders(session, tmp_path):
    page = session.reload()
    page.hover("#worked-t-5-2")
    shots = os.environ.get("ONEBYONE_EXPLORER_SHOTS")
    for name in SECTIONS:
        section = page.locator(f"#{name}")
        box = section.bounding_box()
        assert box and box["width"] > 1000 and box["height"] > 300, (name, box)
        path = tmp_path / f"{name}.png"
        section.screenshot(path=path)
        assert_sensible_png(path)
        if shots and name in ("worked", "costs"):
            shutil.copy(path, Path(shots) / f"explorer-{name}.png")
    counts = {
        "#worked-output td[data-value]": 36,
        "#depth-outputs table": 3,
        "#fusion-grids table": 7,
        "#calc-table tbody tr": 4,
        "#linear-pixels button": 12,
        "#models-chart .bar": len(model_profile(EXPLORER_MODELS[0])["layers"]),
    }
    for selector, n in counts.items():
        assert page.locator(selector).count() == n, selector


# ---------------------------------------------------------------- 1. worked example


def test_output_map_follows_the_kernel_and_the_maps(session):
    page = session.reload()
    ex = worked_example()
    np.testing.assert_allclose(session.values("#worked-output"), ex.output, rtol=1e-12)
    marked = page.get_attribute("#worked-output-table", "data-marked")
    assert marked == ";".join(f"{r},{c}" for r, c in ex.mismatches) == "5,2"

    page.fill("#worked-w-1", "0.5")
    changed = session.values("#worked-output")
    assert not np.allclose(changed, ex.output)
    np.testing.assert_allclose(
        changed, obo.numpy.conv1x1(SEED_MAPS, np.array([[0.1, 0.5, 0.4]]))[0], rtol=1e-12
    )
    assert page.get_attribute("#worked-output-table", "data-marked") == ""  # not the seed's

    page.fill("#worked-map-2-4-1", "-3.5")
    page.fill("#worked-w-0", "-1.25")
    maps = SEED_MAPS.copy()
    maps[2, 4, 1] = -3.5
    np.testing.assert_allclose(
        session.values("#worked-output"),
        obo.numpy.conv1x1(maps, np.array([[-1.25, 0.5, 0.4]]))[0],
        rtol=1e-12,
    )
    page.fill("#worked-w-0", "")
    assert page.get_attribute("#worked-w-0", "aria-invalid") == "true"

    page.click("#worked-reset")
    np.testing.assert_allclose(session.values("#worked-output"), ex.output, rtol=1e-12)
    assert page.get_attribute("#worked-output-table", "data-marked") == "5,2"


def test_hover_and_focus_spell_out_the_sum(session):
    page = session.reload()
    ex = worked_example()
    page.hover("#worked-t-5-2")
    text = page.text_content("#worked-sum")
    assert text.startswith(f"T[5,2] = {ex.spelled_sum(5, 2)}") and "the seed prints 0.6" in text
    assert page.locator("#worked-maps td.lit").count() == 3  # the three values it sums
    page.focus("#worked-t-0-0")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.id") == "worked-t-1-0"
    assert page.text_content("#worked-sum") == f"T[1,0] = {ex.spelled_sum(1, 0)}"
    notes = page.text_content("#worked-notes")
    assert "T[5,2] = 0.6" in notes and ex.spelled_sum(5, 2) in notes and "5×5" in notes


# ---------------------------------------------------------------- 2. depth


def _bank(session: Session) -> np.ndarray:
    k = int(session.page.get_attribute("#depth-summary", "data-filters"))
    return np.array(
        [[float(session.page.input_value(f"#depth-w-{i}-{c}")) for c in range(3)] for i in range(k)]
    )


def _depth_outputs(session: Session) -> np.ndarray:
    k = session.page.locator("#depth-outputs table").count()
    return np.stack([session.values(f"#depth-out-{i}") for i in range(k)])


def test_k_filters_give_k_maps(session):
    page = session.reload()
    for action, k in (("#depth-add", 4), ("#depth-add", 5), ("#depth-filter-0 button", 4)):
        page.click(action)
        assert page.locator("#depth-outputs table").count() == k
        np.testing.assert_allclose(
            _depth_outputs(session), obo.numpy.conv1x1(SEED_MAPS, _bank(session)), rtol=1e-12
        )
    page.fill("#depth-w-2-1", "2.5")
    np.testing.assert_allclose(
        _depth_outputs(session), obo.numpy.conv1x1(SEED_MAPS, _bank(session)), rtol=1e-12
    )
    assert "4 × 3 (12 weights)" in page.text_content("#depth-summary")


# ---------------------------------------------------------------- 3. fusion


@pytest.mark.parametrize(
    ("a", "b", "weight"),
    [(1.0, 2.0, (2.0, -1.0)), (0.5, -3.0, (0.25, 1.5)), (1.0, 2.0, (1.0, 0.0))],
)
def test_fusion_follows_the_weights(session, a, b, weight):
    page = session.reload()
    for key, value in zip(("a", "b", "w1", "w2"), (a, b, *weight), strict=True):
        page.fill(f"#fusion-{key}", str(value))
    ex = fusion_example(a, b, weight)
    for d in (2, 3):
        np.testing.assert_array_equal(session.values(f"#fusion-fused-{d}"), ex.combined[d])
        np.testing.assert_array_equal(session.values(f"#fusion-map-{d}-1"), ex.maps[d][1])
    np.testing.assert_array_equal(session.values("#fusion-difference"), ex.difference)
    differing = page.get_attribute("#fusion-summary", "data-differing")
    assert differing == ";".join(f"{r},{c}" for r, c in ex.differing["combined"])
    outlined = page.eval_on_selector_all(
        "#fusion-fused-2 td.differ", "els => els.map(e => [+e.dataset.row, +e.dataset.col])"
    )
    assert [tuple(p) for p in outlined] == ex.differing["combined"]


def test_fusion_slider_works_from_the_keyboard(session):
    page = session.reload()
    page.focus("#fusion-w1-range")
    page.keyboard.press("ArrowRight")
    assert page.input_value("#fusion-w1") == "1.25"
    np.testing.assert_array_equal(
        session.values("#fusion-fused-2"), fusion_example(weight=(1.25, 1.0)).combined[2]
    )


# ---------------------------------------------------------------- 4. calculator


@pytest.mark.parametrize(
    ("c", "k", "size", "kernel", "r"),
    [(192, 32, 28, 5, 16), (192, 128, 28, 3, 96), (50, 20, 600, 1, 20), (2048, 4096, 1000, 7, 7)],
)
def test_calculator_equals_conv_cost(session, c, k, size, kernel, r):
    page = session.page
    for key, value in (("in_channels", c), ("out_channels", k), ("size", size), ("reduced", r)):
        page.fill(f"#calc-{key}", str(value))
    page.select_option("#calc-kernel_size", str(kernel))
    direct = obo.conv_cost(c, k, kernel, input_size=size, padding="same")
    reduce = obo.conv_cost(c, r, input_size=size)
    after = obo.conv_cost(r, k, kernel, input_size=size, padding="same")
    expected = {"direct": direct, "reduce": reduce, "after": after, "total": reduce + after}
    for row, cost in expected.items():
        assert session.number(f"#calc-{row}-params") == cost.params, row
        assert session.number(f"#calc-{row}-macs") == cost.macs, row


def test_calculator_presets_and_bad_input(session):
    page = session.reload()
    assert session.number("#calc-direct-macs") == 120_422_400  # GoogLeNet's 5x5 branch
    assert session.number("#calc-total-macs") == 12_443_648
    page.fill("#calc-in_channels", "0")
    assert page.is_visible("#calc-error")
    assert "input maps C" in page.text_content("#calc-error")
    assert page.locator("#calc-table tbody tr").count() == 0
    page.click("#calc-presets button >> nth=1")
    assert page.is_hidden("#calc-error")
    expected = obo.conv_cost(192, 128, 3, input_size=28, padding=1)
    assert session.number("#calc-direct-macs") == expected.macs


# ---------------------------------------------------------------- 5. per-pixel linear layer


def test_linear_layer_at_a_pixel_equals_conv1x1(session):
    page = session.reload()
    eq = fc_equivalence()
    page.select_option("#linear-image", "0")
    for r, c in ((0, 0), (2, 3)):
        page.click(f"#linear-pixel-{r}-{c}")
        x = eq.x[0, :, r, c]
        np.testing.assert_array_equal(session.vector("#linear-x"), x)
        np.testing.assert_allclose(
            session.vector("#linear-y"), eq.weight.astype(np.float64) @ x + eq.bias, rtol=1e-12
        )
        np.testing.assert_array_equal(session.vector("#linear-conv"), eq.conv_output[0, :, r, c])
        np.testing.assert_allclose(
            session.vector("#linear-y"), eq.conv_output[0, :, r, c], atol=1e-5
        )
    assert float(page.get_attribute("#linear-summary", "data-value")) < 1e-5


# ---------------------------------------------------------------- 6. real networks


def test_models_section_shows_the_profile(session):
    page = session.reload()
    for index, name in enumerate(EXPLORER_MODELS):
        page.select_option("#models-select", str(index))
        profile = model_profile(name)
        assert session.number_attr("#models-summary", "macs") == profile["macs"]
        assert session.number_attr("#models-summary", "pointwise-macs") == profile["pointwise_macs"]
        legend = dict(
            page.eval_on_selector_all(
                "#models-legend li", "els => els.map(e => [e.dataset.category, +e.dataset.macs])"
            )
        )
        by_category: dict[str, int] = {}
        for layer in profile["layers"]:
            by_category[layer["category"]] = by_category.get(layer["category"], 0) + layer["macs"]
        assert legend == by_category
        assert page.locator("#models-chart .bar.pointwise").count() == sum(
            layer["category"] == "pointwise" for layer in profile["layers"]
        )
    page.focus("#models-chart")
    page.keyboard.press("End")
    last = len(model_profile(EXPLORER_MODELS[-1])["layers"]) - 1
    assert page.get_attribute("#models-layer", "data-index") == str(last)
    page.keyboard.press("ArrowLeft")
    assert page.get_attribute("#models-layer", "data-index") == str(last - 1)


# ---------------------------------------------------------------- layout, and the whole session


def test_narrow_screen_has_no_sideways_scroll(browser, explorer_page, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(explorer_page.as_uri())
        page.wait_for_selector("body[data-ready='true']")
        for name in SECTIONS:
            page.locator(f"#{name}").scroll_into_view_if_needed()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, name
        page.screenshot(path=tmp_path / "narrow.png")
        assert_sensible_png(tmp_path / "narrow.png")
    finally:
        page.close()


def test_no_errors_after_all_the_interaction(session):
    assert session.errors == []
    assert all(url.startswith("file://") for url in session.requests)
