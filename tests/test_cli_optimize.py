"""``onebyone optimize``: the report, ONNX written atomically, weights, bad input.

The output rule itself (commands._output) is tested in test_cli_output.py.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

import onebyone as obo
from onebyone.cli import main

SMALL = ["squeezenet1_1", "--input", "1x3x32x32", "--engine", "torch"]


def test_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "onebyone optimize squeezenet1_1" in out
    for text in ("fold_batchnorm", "fuse_epilogues", "max rel error vs original", "speed-up"):
        assert text in out


def test_onnx_is_written_checked_and_not_clobbered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "model.onnx"
    assert main(["optimize", *SMALL, "--onnx", str(target)]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime vs the original" in out and "within" in out
    onnx.checker.check_model(str(target))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    stamp = target.stat().st_mtime_ns
    assert main(["optimize", *SMALL, "--onnx", str(target)]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for argument `--onnx`. Expected a file that does not exist yet" in err
    assert target.stat().st_mtime_ns == stamp
    assert main(["optimize", *SMALL, "--onnx", str(target), "--force"]) == 0


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


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bfloat16"
)
def test_bfloat16_reports_its_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", *SMALL[:3], "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "torch.bfloat16" in out and "max rel error vs original" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optimize", "resnet51"], "Invalid value for argument `MODEL`"),
        (["optimize", "squeezenet1_1", "--input", "1x3xQ"], "Invalid value for argument `--input`"),
        (["optimize", "squeezenet1_1", "--input", "1x4x32x32"], "argument `example_input`"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
