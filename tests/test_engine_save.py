"""The engines that write deployable files do it through the registry (``Saver.save``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from onebyone.deploy import optimize
from onebyone.deploy.engines import registry

HAVE_OV = importlib.util.find_spec("openvino") is not None
HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def test_only_engines_that_write_files_are_savers() -> None:
    assert isinstance(registry.saver("onnxruntime"), registry.Saver)
    assert isinstance(registry.saver("openvino"), registry.Saver)
    with pytest.raises(ValueError, match=r"argument `name`.*Received 'torch'"):
        registry.saver("torch")


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime, onnx or onnxscript not installed")
def test_onnxruntime_saves_the_verified_build_it_kept(tmp_path: Path) -> None:
    import onnxruntime as ort

    x = torch.randn(2, 3, 5, 5)
    fast, report = optimize(_net(), x, engine="onnxruntime", measure=False)
    written = registry.saver("onnxruntime").save(fast, tmp_path / "m.onnx")
    assert written.read_bytes() == report.exports["onnx"]  # the build, not a new export
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), fast(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"argument `built`.*Received str"):
        registry.saver("onnxruntime").save("m", tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.skipif(not HAVE_OV, reason="openvino not installed")
def test_openvino_saves_the_verified_build_it_kept(tmp_path: Path) -> None:
    import openvino as ov

    x = torch.randn(2, 3, 5, 5)
    fast, report = optimize(_net(), x, engine="openvino", measure=False)
    xml = registry.saver("openvino").save(fast, tmp_path / "ir")
    assert xml == tmp_path / "ir" / "model.xml" and xml.with_suffix(".bin").exists()
    read = ov.Core().read_model(str(xml))
    assert read.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str) == "f32"
    assert len(read.get_ops()) == len(report.exports["openvino"].get_ops())
    compiled = ov.Core().compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = torch.from_numpy(compiled(x.numpy())[0].copy())
    torch.testing.assert_close(out, fast(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"argument `built`.*Received int"):
        registry.saver("openvino").save(3, tmp_path / "other")
    assert not (tmp_path / "other").exists()
