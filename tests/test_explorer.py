"""The explorer page's files and embedded data, checked against the library; its commands."""

from __future__ import annotations

import fnmatch
import re
import tempfile
import webbrowser
from pathlib import Path

import numpy as np
import pytest

import onebyone as obo
from onebyone.cli import main
from onebyone.explain import (
    SEED_MAPS,
    bottleneck_comparison,
    depth_example,
    fc_equivalence,
    fusion_example,
    reduction_examples,
    worked_example,
)
from onebyone.explain import explorer as page_module
from onebyone.explain.explorer import (
    DATA_FILE,
    EXPLORER_MODELS,
    PAGE_FILES,
    model_profile,
    read_explorer_data,
    write_explorer,
)

ROOT = Path(__file__).resolve().parents[1]

# DESIGN.md's public reference numbers (torchvision's variants)
REFERENCE = {
    "resnet50": (25_557_032, 4.089),
    "mobilenet_v2": (3_504_872, 0.301),
    "googlenet": (6_624_904, 1.498),
    "squeezenet1_1": (1_235_496, None),
}


@pytest.fixture(scope="module")
def data(explorer_page: Path) -> dict:
    return read_explorer_data(explorer_page.parent / DATA_FILE)


# ---------------------------------------------------------------- the files


def test_page_folder_holds_every_file(explorer_page):
    assert explorer_page.name == "index.html"
    assert sorted(p.name for p in explorer_page.parent.iterdir()) == sorted(
        (*PAGE_FILES, DATA_FILE)
    )
    assert (explorer_page.parent / DATA_FILE).read_text().startswith("// Computed by onebyone")


def test_page_refers_only_to_its_own_files(explorer_page):
    folder = explorer_page.parent
    html = explorer_page.read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert "data.js" in refs and "explorer.js" in refs and "style.css" in refs
    for ref in refs:
        assert ref.startswith("#") or (folder / ref).is_file(), ref
    anchors = {ref[1:] for ref in refs if ref.startswith("#")}
    assert anchors <= set(re.findall(r'id="([^"]+)"', html))
    for name in PAGE_FILES:
        text = (folder / name).read_text()
        assert not re.search(r"https?://|//cdn|@import|url\(", text), name
    script = (folder / "explorer.js").read_text()
    assert not re.search(r"\bfetch\(|XMLHttpRequest|\bimport\(", script)


def test_page_files_are_package_data():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["onebyone"]
    shipped = sorted(p.name for p in (ROOT / "src/onebyone/explain/page").iterdir())
    assert shipped == sorted(PAGE_FILES)
    for name in shipped:
        assert any(fnmatch.fnmatch(f"explain/page/{name}", pattern) for pattern in patterns), name


# ---------------------------------------------------------------- the data against the library


def test_worked_example_data(data):
    ex = worked_example()
    worked = data["worked"]
    np.testing.assert_array_equal(worked["maps"], SEED_MAPS)
    np.testing.assert_array_equal(worked["kernel"], ex.kernel[0])
    np.testing.assert_array_equal(worked["output"], ex.output)  # JSON keeps every float64 bit
    assert worked["mismatches"] == [[5, 2]] == [list(p) for p in ex.mismatches]
    assert worked["printed"][5][2] == 0.6
    assert worked["output"][5][2] == pytest.approx(4 * 0.1 + 7 * 0.2 + 7 * 0.4)
    assert worked["spelled"]["5,2"] == ex.spelled_sum(5, 2) == "4*0.1 + 7*0.2 + 7*0.4 = 4.60"
    assert worked["stated_size"] == [5, 5] != list(np.shape(worked["output"]))


def test_depth_fusion_and_fc_data(data):
    depth = depth_example()
    assert data["depth"]["names"] == depth.names
    np.testing.assert_array_equal(data["depth"]["filters"], depth.filters)
    np.testing.assert_array_equal(data["depth"]["outputs"], depth.outputs)

    fusion = fusion_example()
    f = data["fusion"]
    assert (f["a"], f["b"], f["weight"]) == (fusion.a, fusion.b, fusion.weight[0].tolist())
    for d in (2, 3):
        np.testing.assert_array_equal(f["maps"][str(d)], fusion.maps[d])
        np.testing.assert_array_equal(f["combined"][str(d)], fusion.combined[d])
        # the symbolic pattern the page rebuilds the maps from gives the library's maps
        rebuilt = [
            [[{"a": fusion.a, "b": fusion.b, "0": 0.0}[ch] for ch in row] for row in m]
            for m in f["pattern"][str(d)]
        ]
        np.testing.assert_array_equal(rebuilt, fusion.maps[d])
    assert f["differing"] == [list(p) for p in fusion.differing["combined"]]

    eq = fc_equivalence()
    fc = data["fc"]
    np.testing.assert_array_equal(fc["conv_output"], eq.conv_output)
    x, w, b = (np.array(fc[k]) for k in ("x", "weight", "bias"))
    per_pixel = np.einsum("kc,nchw->nkhw", w, x) + b[None, :, None, None]  # W x + b at each pixel
    np.testing.assert_allclose(fc["conv_output"], per_pixel, atol=1e-5)


def test_cost_data_equals_conv_cost(data):
    g = data["costs"]["googlenet_5x5"]
    direct = obo.conv_cost(192, 32, 5, input_size=28, padding=2)
    reduce = obo.conv_cost(192, 16, input_size=28)
    after = obo.conv_cost(16, 32, 5, input_size=28, padding=2)
    assert g["direct"] == {"params": direct.params, "macs": direct.macs}
    assert g["reduce_1x1"] == {"params": reduce.params, "macs": reduce.macs}
    assert g["conv_after"] == {"params": after.params, "macs": after.macs}
    # the numbers the issue quotes for GoogLeNet's 5x5 branch
    assert (g["direct"]["macs"], g["reduced_total"]["macs"]) == (120_422_400, 12_443_648)

    cases = reduction_examples()
    assert [(r["title"], r["params"], r["macs"]) for r in data["costs"]["reductions"]] == [
        (c.title, c.params, c.macs) for c in cases
    ]
    cmp = bottleneck_comparison()
    bott = data["costs"]["bottleneck"]
    assert (bott["bottleneck"]["params"], bott["plain"]["params"]) == cmp.params
    assert (bott["bottleneck"]["macs"], bott["plain"]["macs"]) == cmp.macs


def test_model_data_against_references_and_conv_cost(data):
    assert [m["name"] for m in data["models"]] == list(EXPLORER_MODELS)
    for model in data["models"]:
        params, gmacs = REFERENCE[model["name"]]
        assert model["params"] == params
        if gmacs is not None:
            assert round(model["macs"] / 1e9, 3) == gmacs
        layers = model["layers"]
        assert sum(layer["macs"] for layer in layers) == model["macs"]
        pointwise = [layer for layer in layers if layer["category"] == "pointwise"]
        assert sum(layer["macs"] for layer in pointwise) == model["pointwise_macs"]
        assert all(layer["kernel"] == [1, 1] for layer in pointwise)
        assert 0 < model["pointwise_macs"] < model["macs"]
    resnet = next(m for m in data["models"] if m["name"] == "resnet50")
    stem = obo.conv_cost(3, 64, 7, input_size=224, stride=2, padding=3, bias=False)
    assert (resnet["layers"][0]["macs"], resnet["layers"][0]["params"]) == (stem.macs, stem.params)


def test_model_profile_is_a_fresh_copy_and_checks_its_name():
    first = model_profile("squeezenet1_1")
    first["layers"].clear()
    assert model_profile("squeezenet1_1")["layers"]
    with pytest.raises(ValueError, match="Invalid value for argument `name`"):
        model_profile("alexnet")
    with pytest.raises(ValueError, match="Invalid value for argument `models`"):
        page_module.explorer_data(models=["alexnet"])
    with pytest.raises(TypeError, match="Invalid value for argument `models`"):
        page_module.explorer_data(models="resnet50")


# ---------------------------------------------------------------- writing and the commands


def test_write_into_an_existing_folder_keeps_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "index.html").write_text("old")
    page = write_explorer(tmp_path, models=["squeezenet1_1"])
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert "onebyone explorer" in page.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(page_module, "PAGE_FILES", (*PAGE_FILES, "missing.css"))
    with pytest.raises(FileNotFoundError):
        write_explorer(tmp_path / "page", models=["squeezenet1_1"])
    assert list(tmp_path.iterdir()) == []  # neither the page nor its staging folder


def test_explain_html_prints_the_path(tmp_path, capsys):
    assert main(["explain", "--html", str(tmp_path / "page")]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "page" / "index.html")
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == sorted((*PAGE_FILES, DATA_FILE))


def test_explain_html_onto_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a file")
    assert main(["explain", "--html", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Invalid value for argument `--html`" in err
    assert target.read_text() == "a file" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("no_open", [True, False])
def test_explore_writes_a_temporary_page_and_opens_it(tmp_path, capsys, monkeypatch, no_open):
    opened: list[str] = []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert main(["explore", *(["--no-open"] if no_open else [])]) == 0
    page = Path(capsys.readouterr().out.strip())
    assert page.name == "index.html" and page.parent.parent == tmp_path
    assert page.parent.name.startswith("onebyone-explorer-")
    assert read_explorer_data(page.parent / DATA_FILE)["worked"]["mismatches"] == [[5, 2]]
    assert opened == ([] if no_open else [page.as_uri()])
