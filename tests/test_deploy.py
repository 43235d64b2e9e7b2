"""``optimize``: torch.export capture, ATen-graph passes, the engines, verification, refusals."""

from __future__ import annotations

import copy
import importlib.util
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onebyone as obo
from onebyone.deploy import EngineUnavailableError, capture, optimize
from onebyone.deploy.engines import onnxruntime as ort_engine
from onebyone.deploy.engines import torch as torch_engine
from onebyone.deploy.passes import count_norms_after_layers
from onebyone.nn import Conv1x1
from transform_models import ResidualBlock, assert_unchanged, snapshot

from helpers import randomize_norms

HAVE = {
    "onnxruntime": ort_engine.available() is None,
    "openvino": importlib.util.find_spec("openvino") is not None,
}
ENGINES = [
    "torch",
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAVE["onnxruntime"],
                                                         reason="onnxruntime not installed")),
    pytest.param("openvino", marks=pytest.mark.skipif(not HAVE["openvino"],
                                                      reason="openvino not installed")),
]  # fmt: skip


class Net(nn.Module):
    """Conv-BN-ReLU, a residual block, a Conv1x1 and a `.view(y.size(0), -1)` head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = ResidualBlock()
        self.point = Conv1x1(16, 8, activation="silu")
        self.head = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.point(self.block(self.stem(x)))
        return self.head(y.view(y.size(0), -1))


def _net() -> nn.Module:
    return randomize_norms(Net())


def _same(model: nn.Module, fast: nn.Module, x: torch.Tensor, rtol: float = 1e-4) -> None:
    report = obo.verify(model, fast, x, rtol=rtol, atol=1e-5)
    assert report.ok, report


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_equals_the_original_on_any_batch_size(engine: str) -> None:
    model = _net()
    before = snapshot(model)
    x = torch.randn(1, 3, 6, 6)
    fast, report = optimize(model, x, engine=engine, measure=False)
    assert report.engine == engine and report.capture == "torch.export" and report.dynamic_batch
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert report.pass_counts()["fold_norms"] == norms == 4  # each follows a convolution
    for n in (1, 3, 4):
        _same(model, fast, torch.randn(n, 3, 6, 6))
    assert report.verify is not None and report.verify_other is not None
    assert report.verify.ok and report.verify_other.ok
    assert_unchanged(model, before)


@pytest.mark.skipif(not all(HAVE.values()), reason="needs onnxruntime and openvino")
def test_auto_builds_every_engine_and_keeps_the_fastest() -> None:
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    fast, report = optimize(model, x)
    names = {c.name for c in report.candidates}
    assert {"torch/float32", "onnxruntime/float32", "openvino/float32", "original/float32"} <= names
    timed = {c.name: c.latency_ms for c in report.candidates if c.ok}
    assert all(v is not None for v in timed.values())
    assert timed[f"{report.engine}/{report.precision}"] == min(timed.values())  # type: ignore[type-var]
    assert report.latency_before_ms == timed["original/float32"]
    assert all(
        c.top1_agreement == 1.0 for c in report.candidates if c.ok and c.engine != "original"
    )
    _same(model, fast, torch.randn(5, 3, 6, 6))
    assert "onnxruntime/float32" in str(report)


class _Norms(nn.Module):
    """The same norm, made three ways: a module, F.batch_norm, a frozen x * s + t."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(4, 6, 3, padding=1) for _ in range(3))
        self.bn = nn.BatchNorm2d(6)
        self.register_buffer("scale", torch.rand(6) + 0.5)
        self.register_buffer("shift", torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        a = bn(self.a(x))
        b = F.batch_norm(self.b(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
        c = self.c(x) * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        return a + b + c


def test_norms_fold_whatever_produced_them() -> None:
    model = randomize_norms(_Norms()).eval()
    x = torch.randn(2, 4, 5, 5)
    fast, report = optimize(model, x, engine="torch", measure=False)
    folds = report.passes[0]
    assert folds.count == 3, folds
    program = report.program
    assert count_norms_after_layers(program) == 0
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert "aten.mul.Tensor" not in ops and ops == ["aten.convolution.default"]  # summed
    _same(model, fast, torch.randn(3, 4, 5, 5))


def test_timm_batchnorm_act_and_torchvision_frozen_norm_fold() -> None:
    external = pytest.importorskip("onebyone.models.external")
    try:
        timm = external.import_timm()
        torchvision = external.import_torchvision()
    except ImportError as exc:
        pytest.skip(f"timm/torchvision not installed: {exc}")
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), timm.layers.BatchNormAct2d(8, act_layer=nn.SiLU),
        nn.Conv2d(8, 8, 1), FrozenBatchNorm2d(8),
    )  # fmt: skip
    randomize_norms(model)
    with torch.no_grad():
        model[3].running_mean.normal_()
        model[3].weight.uniform_(0.5, 1.5)
    model.eval()
    assert torchvision is not None
    fast, report = optimize(model, torch.randn(1, 3, 8, 8), engine="torch", measure=False)
    assert report.passes[0].count == 2
    _same(model, fast, torch.randn(3, 3, 8, 8))


class _SharedNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c1(x)) * self.bn(self.c2(x))


def test_a_norm_shared_by_two_convolutions_folds_into_each() -> None:
    model = randomize_norms(_SharedNorm()).eval()
    fast, report = optimize(model, torch.randn(2, 3, 7, 7), engine="torch", measure=False)
    assert report.passes[0].count == 2
    _same(model, fast, torch.randn(3, 3, 7, 7))


class _InPlaceThroughViews(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0
        y = self.bn(self.conv(x))
        x.view(-1).mul_(0.5)  # changes x after the convolution read it
        nn.functional.relu(x[:, :2], inplace=True)
        return torch.relu(y + x)


def test_in_place_writes_through_views_stay_exact() -> None:
    model = randomize_norms(_InPlaceThroughViews()).eval()
    fast, _ = optimize(model, torch.randn(2, 4, 5, 5), engine="torch", measure=False)
    _same(model, fast, torch.randn(3, 4, 5, 5))


class _GhostShortcut(nn.Module):
    """timm's GhostNet: a concatenation sliced to its own channel count, then added to in
    place (``x[:, :C] += shortcut`` once functional), and a slice that keeps half."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1)[:, :4]
        y += x
        return y[:, :3] * 2


def test_whole_slices_and_writes_into_them_are_dropped() -> None:
    model = _GhostShortcut().eval()
    fast, report = optimize(model, torch.randn(2, 4, 5, 5), engine="torch", measure=False)
    dropped = next(p for p in report.passes if p.name == "drop_whole_slices")
    assert dropped.count >= 2  # the batch slice and the slice_scatter of the write
    targets = [str(n.target) for n in report.program.graph.nodes if n.op == "call_function"]
    assert "aten.slice_scatter.default" not in targets
    assert targets.count("aten.slice.Tensor") == 1  # [:, :3] keeps 3 of 4 channels
    _same(model, fast, torch.randn(3, 4, 5, 5))
    _same(model, fast, torch.randn(1, 4, 5, 5))


class _Structured(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        y = self.conv(x)
        return {"pooled": y.mean((2, 3)), "pair": (y, y.amax(1))}


def test_dict_and_tuple_outputs_keep_their_structure() -> None:
    model = _Structured().eval()
    x = torch.randn(2, 3, 4, 4)
    for engine in [e.values[0] if hasattr(e, "values") else e for e in ENGINES]:
        if engine != "torch" and not HAVE[engine]:
            continue
        fast, _ = optimize(model, x, engine=engine, measure=False)
        out = fast(torch.randn(3, 3, 4, 4))
        assert set(out) == {"pooled", "pair"} and isinstance(out["pair"], tuple)
        _same(model, fast, x)


class _MutatesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.relu_())


def test_a_model_that_writes_to_its_input_leaves_the_callers_tensor_alone() -> None:
    model = _MutatesInput().eval()
    x = torch.randn(2, 3, 4, 4)
    kept = x.clone()
    fast, report = optimize(model, x, engine="torch", measure=False)
    assert torch.equal(x, kept)
    assert report.verify is not None and report.verify.ok
    assert torch.equal(x, kept)
    with torch.inference_mode():
        expected = model(x.clone())
    torch.testing.assert_close(fast(x.clone()), expected)


def test_linear_then_batchnorm1d_folds_only_on_n_f() -> None:
    flat = randomize_norms(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))).eval()
    _, report = optimize(flat, torch.randn(3, 6), engine="torch", measure=False)
    assert report.passes[0].count == 1
    seq = randomize_norms(nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))).eval()
    fast, report = optimize(seq, torch.randn(2, 5, 5), engine="torch", measure=False)
    assert report.passes[0].count == 0 and "(N, F)" in report.passes[0].skipped[0][1]
    _same(seq, fast, torch.randn(3, 5, 5))


class _FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.offset = nn.Parameter(torch.randn(2, 4, 1, 1))  # one row per image: batch 2 only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.offset


def test_a_model_that_fixes_its_batch_size_is_captured_with_static_shapes() -> None:
    model = _FixedBatch().eval()
    x = torch.randn(2, 3, 4, 4)
    fast, report = optimize(model, x, engine="torch", measure=False)
    assert report.capture == "torch.export (static shapes)" and not report.dynamic_batch
    assert report.capture_attempts and "batch" in report.capture_attempts[0][1]
    _same(model, fast, torch.randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError):  # the original cannot run batch 3 either
        fast(torch.randn(3, 3, 4, 4))


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > 0:  # data-dependent control flow: neither export nor fx captures it
            return y.relu()
        return y


def test_an_uncapturable_model_falls_back_and_says_why() -> None:
    model = randomize_norms(_DataDependent()).eval()
    x = torch.randn(1, 3, 4, 4)
    fast, report = optimize(model, x, engine="torch", measure=False)
    assert report.capture == "eager" and report.program is None
    assert [route for route, _ in report.capture_attempts] == [
        "torch.export (dynamic batch)",
        "torch.export (static shapes)",
    ]
    assert all(why for _, why in report.capture_attempts)
    _same(model, fast, x)
    if HAVE["onnxruntime"]:
        with pytest.raises(EngineUnavailableError, match=r"torch\.export"):
            optimize(model, x, engine="onnxruntime", measure=False)


def test_the_result_is_frozen_and_owns_its_weights() -> None:
    model = _net()
    x = torch.randn(1, 3, 6, 6)
    fast, _ = optimize(model, x, engine="torch", measure=False)
    with torch.inference_mode():
        before = fast(x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # the original changes afterwards: the optimised copy does not
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), before)
    assert not any(p.requires_grad for p in fast.parameters())
    clone = copy.deepcopy(fast)
    with torch.inference_mode():
        torch.testing.assert_close(clone(x), before)
    with pytest.raises(TypeError, match="save_onnx"):
        pickle.dumps(fast)


@pytest.mark.usefixtures("always_pack")
def test_packed_weights_are_opaque_and_survive_copies() -> None:
    model = randomize_norms(
        nn.Sequential(nn.Conv2d(8, 64, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3))
    ).eval()
    x = torch.randn(1, 8, 3, 3)  # 64 filters on at most 9 pixels: packing pays
    fast, _ = optimize(model, x, engine="torch", measure=False)
    packed = [v for v in vars(fast.graph_module).values()
              if isinstance(v, torch_engine.PackedWeight)]  # fmt: skip
    assert len(packed) == 2
    with pytest.raises((RuntimeError, TypeError)):
        packed[0].tensor.numpy()  # nothing can write a packed weight
    _same(model, fast, x)
    _same(model, copy.deepcopy(fast), torch.randn(2, 8, 3, 3))


def test_bad_arguments_are_refused_with_the_argument_named(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match=r"`model`.*eval mode"):
        optimize(copy.deepcopy(model).train(), x)
    with pytest.raises(ValueError, match=r"`example_input`\. Expected \(N, 3, H, W\)"):
        optimize(model, torch.randn(1, 4, 6, 6))
    with pytest.raises(TypeError, match=r"`example_input`.*float32"):
        optimize(model, x.double())
    with pytest.raises(TypeError, match=r"`model`.*float32"):
        optimize(copy.deepcopy(model).double(), x.double())
    with pytest.raises(ValueError, match=r"`engine`"):
        optimize(model, x, engine="tensorrt")
    with pytest.raises(ValueError, match=r"`precision`"):
        optimize(model, x, precision="int8")
    with pytest.raises(ValueError, match=r"`tolerance`"):
        optimize(model, x, tolerance=0)
    with pytest.raises(TypeError, match=r"`tolerance`"):
        optimize(model, x, tolerance="small")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`example_input`"):
        optimize(model, [x, "not a tensor"])  # type: ignore[list-item]
    monkeypatch.setattr(ort_engine, "available", lambda: "onnxruntime is not installed: "
                        "pip install 'onebyone[onnx]'")  # fmt: skip
    with pytest.raises(EngineUnavailableError, match=r"onebyone\[onnx\]"):
        optimize(model, x, engine="onnxruntime")
    _, report = optimize(model, x, measure=False)  # auto skips it and says why
    reason = next(c.why for c in report.candidates if c.engine == "onnxruntime")
    assert "pip install" in reason


def test_bfloat16_is_an_explicit_lossy_choice() -> None:
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    native = "bfloat16" in torch_engine.precisions() or (
        HAVE["openvino"] and "bfloat16" in __import__(
            "onebyone.deploy.engines.openvino", fromlist=["x"]).precisions()
    )  # fmt: skip
    if not native:
        with pytest.raises(ValueError, match=r"`precision`.*bfloat16"):
            optimize(model, x, precision="bfloat16")
        pytest.skip("this CPU has no native bfloat16 (the refusal is checked)")
    _fast, report = optimize(model, x, precision="bfloat16", measure=False)
    assert report.precision == "bfloat16"
    assert report.max_rel_error is not None and 0 < report.max_rel_error < 6e-2
    _, both = optimize(model, x, precision="bfloat16", tolerance=0.1, measure=False)
    assert {c.precision for c in both.candidates} >= {"float32", "bfloat16"}


class _Cancelling(nn.Module):
    """Outputs that are differences of near-equal channels: bfloat16's rounding of the
    weights (relative 4e-3) is far larger than the outputs, float32's is not."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 16, 3, padding=1)
        self.difference = nn.Conv2d(16, 8, 1, bias=False)
        with torch.no_grad():
            self.features.weight[8:] = self.features.weight[:8] * (1 + 1e-3)
            self.features.bias[8:] = self.features.bias[:8]
            self.difference.weight.zero_()
            for k in range(8):
                self.difference.weight[k, k], self.difference.weight[k, k + 8] = -1.0, 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.difference(torch.relu(self.features(x)))  # the ReLU: no merge


def test_bfloat16_beyond_the_tolerance_lets_float32_compete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch_engine, "precisions", lambda: ("float32", "bfloat16"))
    model = _Cancelling().eval()
    x = torch.randn(2, 3, 6, 6)
    fast, report = optimize(model, x, precision="bfloat16", measure=False)
    refused = [c for c in report.candidates if c.precision == "bfloat16"]
    assert refused and not any(c.ok for c in refused)
    torch_bf16 = next(c for c in refused if c.engine == "torch")
    assert torch_bf16.max_rel_error is not None and torch_bf16.max_rel_error > 6e-2
    assert any("no bfloat16 candidate met the tolerance" in n for n in report.notes)
    assert any(c.ok for c in report.candidates if c.precision == "float32" and c.engine == "torch")
    assert report.precision == "float32"  # a float32 engine, or the original if none is faster
    _same(model, fast, torch.randn(3, 3, 6, 6))


def test_capture_traces_at_batch_two_so_batch_one_stays_dynamic() -> None:
    model = _net()
    captured = capture(model, (torch.randn(1, 3, 6, 6),))
    assert captured.dynamic_batch and captured.program is not None
    x = [n for n in captured.program.graph.nodes if n.op == "placeholder"][-1]
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    assert not is_concrete_int(x.meta["val"].shape[0])


@pytest.mark.skipif(not HAVE["onnxruntime"], reason="onnxruntime not installed")
def test_onnxruntime_fixes_the_example_batch_and_opens_a_dynamic_session_for_others() -> None:
    model = _net()
    fast, _ = optimize(model, torch.randn(2, 3, 6, 6), engine="onnxruntime", measure=False)
    assert fast.batch == 2 and fast._batch_symbol is not None
    fast._sessions.clear()  # as after a copy: sessions are made on first use
    _same(model, fast, torch.randn(2, 3, 6, 6))
    assert set(fast._sessions) == {True}
    _same(model, fast, torch.randn(5, 3, 6, 6))
    assert set(fast._sessions) == {True, False}


def test_the_torch_engine_in_bfloat16_keeps_a_float32_interface(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the bfloat16 path runs on any CPU (slowly where oneDNN has no bfloat16): let the
    # engine offer it here, so its casts and its error check are exercised everywhere
    monkeypatch.setattr(torch_engine, "precisions", lambda: ("float32", "bfloat16"))
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    fast, report = optimize(model, x, precision="bfloat16", engine="torch", measure=False)
    assert report.precision == "bfloat16" and report.tolerance == 6e-2
    assert report.max_rel_error is not None and 0 < report.max_rel_error < 6e-2
    with torch.inference_mode():
        out = fast(torch.randn(3, 3, 6, 6))
    assert out.dtype == torch.float32 and out.shape == (3, 5)
    assert {t.dtype for t in fast.graph_module.parameters()} == {torch.bfloat16}
