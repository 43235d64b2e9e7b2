"""``onebyone compress``: the report and the file it writes (reloadable in one call), --data
folders of tensors and images, and bad input with no partial file."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import onebyone as obo
from onebyone.cli import main

FACTORY = """
    import torch
    from torch import nn

    def net(width=32):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(), nn.Conv2d(width, 2 * width, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, 5),
        )
"""
MODEL = ["obo_compress_models:net", "--input", "1x3x12x12", "--no-latency"]


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "obo_compress_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "obo_compress_models", raising=False)
    return folder


def _tensor_folder(root: Path, channels: int = 3) -> Path:
    """Two class sub-folders: one batch file of 20 and single inputs (.npy and .pt)."""
    g = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        np.save(root / label / "batch.npy", g.standard_normal((20, channels, 12, 12)).astype("f4"))
        torch.save(torch.randn(channels, 12, 12), root / label / "one.pt")
    return root


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial" in p.name]


def test_writes_a_reloadable_file_and_reports_what_was_lost(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _tensor_folder(tmp_path / "data")
    out = tmp_path / "small"
    argv = ["compress", *MODEL, "--data", str(data), "--finetune-epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for expected in ("energy", "tucker2", "MACs", "lost: output rel error", "held out (8)",
                     "after 1 fine-tune epochs", "obo.load_compressed(path, model)"):  # fmt: skip
        assert expected in text
    path = out.with_suffix(".safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["onebyone.compress"])
    assert meta["model"] is None and meta["layers"]  # a user's factory is never imported back
    from obo_compress_models import net  # type: ignore[import-not-found]

    original = net()
    small = obo.load_compressed(path, original)
    x = torch.randn(1, 3, 12, 12)
    assert obo.profile(small, x).total.macs <= 0.5 * obo.profile(original, x).total.macs
    assert _leftovers(tmp_path) == []


def test_a_registered_model_is_rebuilt_from_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sq.safetensors"
    argv = ["compress", "squeezenet1_1", "--option", "num_classes=10", "--input", "1x3x32x32",
            "--target-macs", "0.7", "--no-latency", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "obo.load_compressed(path) rebuilds it" in capsys.readouterr().out
    small = obo.load_compressed(out)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_images_in_class_folders_are_data(factory: Path, tmp_path: Path) -> None:
    from PIL import Image

    g = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(6):
            pixels = g.integers(0, 255, (16, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / label / f"{i}.png")
    from onebyone.commands.compress import load_data

    x, y = load_data(str(tmp_path / "img"), (1, 3, 12, 12))
    assert x.shape == (12, 3, 12, 12) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert y is not None and y.tolist() == [0] * 6 + [1] * 6
    argv = ["compress", *MODEL, "--data", str(tmp_path / "img"), "--out", str(tmp_path / "m")]
    assert main(argv) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-macs", "0"], "Invalid value for argument `--target-macs`"),
        (["--target-macs", "1.5"], "Invalid value for argument `--target-macs`"),
        (["--target-macs", "0.001"], "Expected a fraction this model can reach: at least"),
        (["--data", "missing"], "Invalid value for argument `--data`. Expected a folder"),
        (["--data", "wrong"], "Invalid value for argument `--data`. Expected inputs the model"),
        (["--finetune-epochs", "2"], "Invalid value for argument `--finetune-epochs`"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    factory: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    _tensor_folder(tmp_path / "wrong", channels=4)
    extra = [str(tmp_path / e) if e in ("missing", "wrong") else e for e in extra]
    out = tmp_path / "m.safetensors"
    assert main(["compress", *MODEL, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_an_existing_out_is_kept_without_force(
    factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"mine")
    assert main(["compress", *MODEL, "--out", str(out)]) == 2
    assert "Expected a file that does not exist yet" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert main(["compress", *MODEL, "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != b"mine"
