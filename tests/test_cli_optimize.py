"""``onebyone optimize``: the report, ONNX written atomically, weights, bad input.

The output rule itself (onebyone._files) is tested in test_cli_output.py.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import types
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

import onebyone as obo
from onebyone.cli import main

SMALL = ["squeezenet1_1", "--input", "1x3x32x32", "--engine", "torch"]
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"
)
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed"
)


def test_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "onebyone optimize squeezenet1_1" in out
    for text in ("captured by torch.export", "fold_norms", "max rel error vs original", "speed-up"):
        assert text in out


@needs_onnx
def test_onnx_is_written_checked_and_not_clobbered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "model.onnx"
    assert main(["optimize", *SMALL, "--onnx", str(target)]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime vs the original: max rel error" in out
    onnx.checker.check_model(str(target))
    assert stat.S_IMODE(target.stat().st_mode) & 0o077 == 0  # nobody else reads it
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or p.name.endswith(".tmp")]
    stamp = target.stat().st_mtime_ns
    assert main(["optimize", *SMALL, "--onnx", str(target)]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for argument `--onnx`. Expected a file that does not exist yet" in err
    assert target.stat().st_mtime_ns == stamp
    assert main(["optimize", *SMALL, "--onnx", str(target), "--force"]) == 0


@needs_openvino
def test_openvino_ir_is_written_into_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import openvino as ov

    target = tmp_path / "ir"
    assert main(["optimize", *SMALL, "--openvino", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["model.bin", "model.xml"]
    model = ov.Core().read_model(str(target / "model.xml"))
    assert model.inputs[0].get_partial_shape()[0].is_dynamic  # any batch size
    assert "OpenVINO vs the original: max rel error" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir"]
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [target, *target.iterdir()]}
    assert modes == {"ir": 0o700 & ~mask, "model.bin": 0o600 & ~mask, "model.xml": 0o600 & ~mask}


def test_weights_load_from_safetensors_and_torch_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = obo.create_model("squeezenet1_1").state_dict()
    safe = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    assert main(["optimize", *SMALL, "--weights", str(safe)]) == 0
    pt = tmp_path / "w.pt"
    torch.save(state, pt)
    assert main(["optimize", *SMALL, "--weights", str(pt)]) == 0
    wrong = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(1)}, str(wrong))
    assert main(["optimize", *SMALL, "--weights", str(wrong)]) == 2
    assert "Invalid value for argument `--weights`" in capsys.readouterr().err


def test_bfloat16_is_refused_or_reports_its_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", *SMALL, "--precision", "bfloat16"])
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert code == 2
        assert "precision='bfloat16'" in capsys.readouterr().err
        return
    assert code == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "max rel error vs original" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optimize", "resnet51"], "Invalid value for argument `MODEL`"),
        (["optimize", "squeezenet1_1", "--input", "1x3xQ"], "Invalid value for argument `--input`"),
        (["optimize", "squeezenet1_1", "--input", "1x4x32x32"], "rejected --input 1x4x32x32"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def _sample_images(folder: Path) -> list[Path]:
    """scikit-learn's two sample photographs (china, flower) as PNG files."""
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in zip(("china", "flower"), datasets.load_sample_images().images, strict=True):
        path = folder / f"{name}.png"
        Image.fromarray(image[::8, ::8]).save(path)  # (427, 640, 3) -> (54, 80, 3)
        paths.append(path)
    return paths


def test_data_folder_and_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    tree = tmp_path / "classes"
    _sample_images(tree / "a")
    _sample_images(tree / "b")
    out = tmp_path / "report"
    assert main(["optimize", *SMALL, "--data", str(tree), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on the data (4 inputs; the original's accuracy" in text
    assert "top-1 agreement 100.0%" in text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data_rows"] == 4 and report["data_batches"] == 4
    torch_c = next(c for c in report["candidates"] if c["engine"] == "torch")
    assert torch_c["data_top1_agreement"] == 1.0 and torch_c["data_accuracy"] is not None
    assert {"serves", "verified", "passes", "notes", "latency_before_ms"} <= set(report)
    # tensors, a flat folder: agreement without accuracy
    flat = tmp_path / "tensors"
    flat.mkdir()
    import numpy as np

    np.save(flat / "x.npy", np.random.default_rng(0).standard_normal((3, 3, 32, 32)))
    torch.save(torch.randn(3, 32, 32), flat / "y.pt")
    assert main(["optimize", *SMALL, "--data", str(flat)]) == 0
    assert "on the data (4 inputs):" in capsys.readouterr().out


def test_bad_data_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    torch.save(torch.randn(3, 16, 16), wrong / "x.pt")
    images = tmp_path / "images"
    _sample_images(images)
    cases = [
        ([*SMALL, "--data", str(empty)], "no such files"),
        ([*SMALL, "--data", str(wrong)], "Expected tensors of shape (3, 32, 32)"),
        (["squeezenet1_1", "--input", "1x5x32x32", "--engine", "torch", "--data", str(images)],
         "images need an input of shape"),
    ]  # fmt: skip
    json_out = tmp_path / "r.json"
    for argv, message in cases:
        assert main(["optimize", *argv, "--json", str(json_out)]) == 2
        err = capsys.readouterr().err
        assert "`--data`" in err and message in err and len(err.strip().splitlines()) == 1
        assert not json_out.exists()


class _Counting(torch.nn.Module):
    """A forward that updates its buffers: a step counter and an observer's running max."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("running_max", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        self.running_max.copy_(torch.maximum(self.running_max, x.abs().max()))
        return self.conv(x)


def test_the_factorys_model_is_never_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = _Counting().eval()  # a factory may hand out a model it keeps
    module = types.ModuleType("obo_counting_factory")
    module.make = lambda: shared  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "obo_counting_factory", module)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    argv = ["optimize", "obo_counting_factory:make", "--input", "2x3x8x8", "--engine", "torch"]
    assert main(argv) == 0
    assert "kept torch" in capsys.readouterr().out
    for key, value in shared.state_dict().items():
        assert torch.equal(value, before[key]), key
