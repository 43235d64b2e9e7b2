"""optimize: fold -> merge -> fuse -> layout, verified, measured, on either engine."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.transforms import OnnxRuntimeModule, OptimizeReport
from transform_models import ResidualBlock, assert_unchanged, randomize_norms, snapshot


def _block_model() -> nn.Module:
    return randomize_norms(nn.Sequential(ResidualBlock(), ResidualBlock(projection=True)))


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "auto"])
def test_each_engine_returns_a_verified_faster_form(engine: str) -> None:
    model = _block_model()
    before = snapshot(model)
    x = torch.randn(2, 16, 8, 8)
    fast, report = obo.optimize(model, x, engine=engine)
    assert isinstance(report, OptimizeReport)
    assert report.engine in ("torch", "onnxruntime") and (
        engine == "auto" or report.engine == engine
    )
    assert isinstance(fast, OnnxRuntimeModule) == (report.engine == "onnxruntime")
    assert report.pass_counts() == {
        "fold_batchnorm": 7, "merge_pointwise": 0, "fuse_epilogues": 7, "layout": 1,
    }  # fmt: skip
    assert report.layers_before is not None and report.layers_after is not None
    assert (report.layers_before.batch_norms, report.layers_after.batch_norms) == (7, 0)
    assert report.layers_after.adds == report.layers_after.activations == 0
    assert report.verify is not None and report.verify.ok
    assert report.max_rel_error is not None and report.max_rel_error < 1e-4
    assert report.latency_before_ms is not None and report.latency_after_ms is not None
    if engine == "auto":
        assert set(report.engine_ms) == {"torch", "onnxruntime"}
        assert report.engine == min(report.engine_ms, key=report.engine_ms.__getitem__)
    # an independent check of the result, and the original is untouched
    assert obo.verify(model, fast, torch.randn(2, 16, 8, 8)).ok
    assert_unchanged(model, before)
    assert "fold_batchnorm: 7" in str(report)


def test_other_input_shapes_still_work() -> None:
    model = _block_model()
    fast, _ = obo.optimize(model, torch.randn(1, 16, 8, 8), engine="onnxruntime", measure=False)
    other = torch.randn(3, 16, 5, 5)
    assert obo.verify(model, fast, other).ok


def test_pointwise_merges_that_pay_are_applied() -> None:
    model = nn.Sequential(nn.Conv2d(8, 32, 1), nn.Conv2d(32, 8, 1), nn.ReLU()).eval()
    _, report = obo.optimize(model, torch.randn(1, 8, 6, 6), engine="torch", measure=False)
    assert report.pass_counts()["merge_pointwise"] == 1
    assert report.layers_after is not None and report.layers_after.convolutions == 1
    assert report.latency_before_ms is None


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bfloat16"
)
def test_bfloat16_error_is_reported_and_checked() -> None:
    model = _block_model()
    x = torch.randn(2, 16, 8, 8)
    fast, report = obo.optimize(model, x, dtype=torch.bfloat16, measure=False)
    assert report.engine == "torch" and report.dtype == torch.bfloat16
    assert any("float32 only" in n for n in report.notes)
    assert report.verify is not None and 0 < report.verify.max_rel < 6e-2
    with torch.inference_mode():
        assert fast(x).dtype == torch.float32
    with pytest.raises(obo.VerificationError, match="differs by up to"):
        obo.optimize(model, x, dtype=torch.bfloat16, rtol=1e-6, measure=False)


def test_a_model_that_does_not_export_runs_on_the_torch_engine() -> None:
    class Sorted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(torch.relu(self.conv(x)), dim=1).values

    model = Sorted().eval()
    x = torch.randn(1, 3, 8, 8)
    _, report = obo.optimize(model, x, measure=False)
    assert report.engine == "torch"
    assert any("onnxruntime engine not used" in n and "sort" in n for n in report.notes)
    with pytest.raises(ValueError, match=r"argument `engine`\. Expected an engine that can run"):
        obo.optimize(model, x, engine="onnxruntime", measure=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"dtype": torch.float16},
            ValueError,
            r"argument `dtype`\. Expected None, torch.float32 or torch.bfloat16",
        ),
        ({"dtype": "bf16"}, TypeError, r"argument `dtype`"),
        ({"engine": "tvm"}, ValueError, r"argument `engine`\. Expected one of 'auto', 'torch'"),
        ({"verify": "yes"}, TypeError, r"argument `verify`\. Expected True or False"),
        ({"rtol": -1}, ValueError, r"argument `rtol`"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        obo.optimize(_block_model(), torch.randn(1, 16, 4, 4), **kwargs)  # type: ignore[arg-type]


def test_bad_models_and_inputs() -> None:
    model = _block_model()
    with pytest.raises(ValueError, match=r"Expected a model in eval mode"):
        obo.optimize(copy.deepcopy(model).train(), torch.randn(1, 16, 4, 4))
    with pytest.raises(
        ValueError, match=r"argument `example_input`\. Expected an input the original model accepts"
    ):
        obo.optimize(model, torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match=r"argument `example_input`\. Expected the model's dtype"):
        obo.optimize(model, torch.randn(1, 16, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"argument `model`\. Expected float32 parameters"):
        obo.optimize(copy.deepcopy(model).double(), torch.randn(1, 16, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"argument `example_input`\. Expected a torch.Tensor"):
        obo.optimize(model, [[1.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", obo.list_models())
def test_every_builtin_model_optimizes_on_both_engines(name: str) -> None:
    model = randomize_norms(obo.create_model(name))
    x = torch.randn(1, 3, 32, 32)
    fast, report = obo.optimize(model, x, measure=False)
    assert set(report.candidate_errors) == {"torch", "onnxruntime"}
    assert all(err < 1e-4 for err in report.candidate_errors.values())
    assert report.layers_after is not None and report.layers_after.batch_norms == 0
    assert obo.verify(model, fast, x).ok


def test_several_outputs_keep_their_container() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            y = torch.relu(self.conv(x))
            return [y, y.mean((2, 3))]

    model = TwoHeads().eval()
    x = torch.randn(2, 3, 8, 8)
    for engine in ("onnxruntime", "torch"):
        fast, _ = obo.optimize(model, x, engine=engine, measure=False)
        with torch.inference_mode():
            out = fast(x)
        assert isinstance(out, list) and len(out) == 2
        assert obo.verify(model, fast, x).ok
