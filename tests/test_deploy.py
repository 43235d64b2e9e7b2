"""``optimize``: torch.export capture, ATen-graph passes, the engines, verification, refusals."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import pickle
import warnings
from collections.abc import Callable, Iterator

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
    assert report.capture == "torch.export" and not report.dynamic_batch
    assert report.serves == "(2, 3, 4, 4)"
    assert any("fixes the batch size" in note for note in report.notes)
    _same(model, fast, torch.randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError), pytest.warns(UserWarning, match="not proven"):
        fast(torch.randn(3, 3, 4, 4))  # the original runs it, and cannot either


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
        "torch.export (the example's shapes)",
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
    packed = [v for v in vars(fast.engine.graph_module).values()
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
        optimize(model, x, precision="float16")
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
    lossy = [c for c in report.candidates if c.precision == "bfloat16" and c.ok]
    assert lossy and all(0 < c.max_rel_error < 6e-2 for c in lossy)  # type: ignore[operator]
    # the fastest is kept, bfloat16 or the original: which one depends on the CPU
    timed = {c.name: c.latency_ms for c in report.candidates if c.ok and c.latency_ms is not None}
    assert timed[f"{report.engine}/{report.precision}"] == min(timed.values())  # type: ignore[type-var]
    if report.precision == "bfloat16":
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
    engine = fast.engine
    assert engine.batch == 2 and engine._batch_symbol == "batch"
    engine._sessions.clear()  # as after a copy: sessions are made on first use
    fast._single.clear()  # (a copy's own calls hold its own sessions)
    _same(model, fast, torch.randn(2, 3, 6, 6))
    assert set(engine._sessions) == {True}
    _same(model, fast, torch.randn(5, 3, 6, 6))
    assert set(engine._sessions) == {True, False}


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
    assert {t.dtype for t in fast.engine.graph_module.parameters()} == {torch.bfloat16}


# ---- issue: what the result serves


def _timm(name: str) -> nn.Module:
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    from onebyone.models.external import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


@pytest.mark.skipif(not HAVE["openvino"], reason="openvino not installed")
@pytest.mark.filterwarnings("ignore:optimized model")
def test_openvino_serves_only_the_image_size_it_was_captured_at() -> None:
    model = _timm("mobilevit_xxs")
    fast, report = optimize(model, torch.randn(1, 3, 64, 64), engine="openvino", measure=False)
    assert report.serves.startswith("(batch, 3, 64, 64)")
    x = torch.randn(1, 3, 96, 96)  # the original takes it; the capture never proved it
    with pytest.warns(UserWarning, match="not proven"):
        out = fast(x)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


class _BranchesOnBatch(nn.Module):
    """Batch 1 takes another branch, and the head squeezes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        if x.shape[0] == 1:
            y = y * 2
        return y.squeeze()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.filterwarnings("ignore:optimized model")
def test_batch_one_is_served_only_when_proven(engine: str) -> None:
    model = _BranchesOnBatch().eval()
    try:
        fast, _ = optimize(model, torch.randn(3, 3, 8, 8), engine=engine, measure=False)
    except EngineUnavailableError as exc:  # a converter that gets the squeeze wrong is refused
        assert "another batch size" in str(exc) or "(4, 3, 8, 8)" in str(exc)
        return
    for n in (1, 2, 5):
        x = torch.randn(n, 3, 8, 8)
        with torch.inference_mode():
            expected, got = model(x), fast(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


class _ImageSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 2 if x.shape[-1] > 8 else y


@pytest.mark.filterwarnings("ignore:optimized model")
def test_the_torch_engine_keeps_export_guards_on_the_image_size() -> None:
    model = _ImageSize().eval()
    fast, _ = optimize(model, torch.randn(2, 3, 8, 8), engine="torch", dynamic=("height", "width"),
                       measure=False)  # fmt: skip
    for side in (8, 12):
        x = torch.randn(2, 3, side, side)
        with torch.inference_mode():
            torch.testing.assert_close(fast(x), model(x))


def test_dynamic_image_sizes_are_served_and_verified_at_two_sizes() -> None:
    model = _net_conv()
    fast, report = optimize(model, torch.randn(1, 3, 16, 16), engine="torch",
                            dynamic=("height", "width"), measure=False)  # fmt: skip
    assert "height" in report.serves and "width" in report.serves
    labels = [c for c in report.candidates if c.ok]
    assert labels, report
    x = torch.randn(2, 3, 24, 20)
    with warnings_as_errors(), torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="`dynamic`"):
        optimize(model, torch.randn(1, 3, 16, 16), dynamic=("depth",))


def _net_conv() -> nn.Module:
    return randomize_norms(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
        )
    ).eval()


@contextlib.contextmanager
def warnings_as_errors() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("engine", ENGINES)
def test_results_accept_keyword_calls(engine: str) -> None:
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    fast, _ = optimize(model, x, engine=engine, measure=False)

    class Named(nn.Module):  # a forward whose input has a name
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.inner(image)

    named = Named(model).eval()
    fast_named, _ = optimize(named, x, engine=engine, measure=False)
    with torch.inference_mode(), warnings_as_errors():
        torch.testing.assert_close(fast_named(image=x), named(image=x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_the_engine_module_takes_positional_tensors_directly_and_refuses_the_rest(
    engine: str,
) -> None:
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    fast, _ = optimize(model, x, engine=engine, measure=False)
    inner = fast.engine  # one tensor in, one out: the call skips the pytree work
    assert inner._positional and inner._one_tensor
    with torch.inference_mode():
        out = inner(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
        y = x.clone()
        before = inner(y)
        y.zero_()  # the engine read the caller's memory in place; its result is its own
        torch.testing.assert_close(before, out)
        with pytest.raises(TypeError, match=r"dtype torch\.float32 at position 0"):
            inner(x.double())
        with pytest.raises(TypeError, match="optimised for \\(1 tensor"):
            inner(x, x)
        with pytest.raises(TypeError, match="optimised for"):
            inner([x])
        # through the returned module: a shape proven once is served without the checks,
        # each call on its own input, into its own result
        first, z = fast(x), torch.randn_like(x)
        torch.testing.assert_close(fast(z), model(z), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(first, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.filterwarnings("ignore:optimized model")
def test_a_proven_shape_runs_on_the_tensors_memory_and_other_calls_are_checked_again(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    fast, _ = optimize(model, x, engine=engine, measure=False)
    checked: list[int] = []
    forward = fast.forward
    monkeypatch.setattr(fast, "forward", lambda *a, **k: checked.append(1) or forward(*a, **k))
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
        # proven while optimize verified it; one tensor in, one out: a single call
        assert not checked and (tuple(x.shape), x.numpy().dtype.num) in fast._single
        z = torch.randn_like(x)
        torch.testing.assert_close(fast(z), model(z), rtol=1e-4, atol=1e-5)
        strided = z.contiguous(memory_format=torch.channels_last)  # same shape, other layout
        torch.testing.assert_close(fast(strided), model(z), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(z[:, :, :, :]), model(z), rtol=1e-4, atol=1e-5)
        wide = torch.randn(2, 3, 6, 12)[..., ::2]  # a view with a step: copied first
        torch.testing.assert_close(fast(wide), model(wide), rtol=1e-4, atol=1e-5)
        assert not checked  # decided on the arrays' shape and dtype alone
        first, second = fast(x), fast(z)  # each call into its own result
        torch.testing.assert_close(first, model(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(second, model(z), rtol=1e-4, atol=1e-5)
        with warnings.catch_warnings(record=True) as caught:  # same shape, another dtype:
            warnings.simplefilter("always")  # the original's, which takes float32 only
            with pytest.raises(RuntimeError, match="double"):
                fast(z.double())
        assert any("not proven" in str(w.message) for w in caught) and len(checked) == 1
        batch, known = torch.randn(7, 3, 6, 6), len(fast._single)  # a new batch size:
        torch.testing.assert_close(fast(batch), model(batch), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(batch), model(batch), rtol=1e-4, atol=1e-5)
        assert len(checked) == 2 and len(fast._single) == known + 1  # checked once
        clone = copy.deepcopy(fast)  # its own engine: nothing of this one's session
        assert not clone._single
        torch.testing.assert_close(clone(z), model(z), rtol=1e-4, atol=1e-5)
    # a tensor that needs grad goes through the checks and is read detached
    grad = torch.randn_like(x).requires_grad_(True)
    got = fast(grad)
    with torch.no_grad():
        torch.testing.assert_close(got, model(grad), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_hooks_on_the_returned_module_run(engine: str) -> None:
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    fast, _ = optimize(model, x, engine=engine, measure=False)
    seen: list[str] = []
    own = fast.register_forward_hook(lambda m, i, o: seen.append("own"))
    every = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(type(m).__name__)
    )
    try:
        with torch.inference_mode():
            fast(x)
    finally:
        own.remove()
        every.remove()
    assert seen[-2:] == ["Served", "own"]  # every module's hooks first, then its own
    before = len(seen)
    with torch.inference_mode():
        fast(x)
    assert len(seen) == before  # removed: none runs


def test_the_engines_public_calls_serve_where_the_compiled_ones_are_missing() -> None:
    from onebyone.deploy.engines import openvino as ov_engine

    class Session:  # an onnxruntime session without ``_sess``
        def get_outputs(self) -> list[object]:
            return [type("Output", (), {"name": "y"})()]

        def run(self, names: list[str], feed: dict[str, object], options: object) -> list[str]:
            return [f"{names} {sorted(feed)} {options}"]

    assert ort_engine._runner(Session())({"x": 1}, None) == ["['y'] ['x'] None"]

    class Results:
        def to_tuple(self) -> tuple[object, ...]:
            return ("out",)

    class Request:  # an openvino request whose class has no compiled ``infer``
        model_outputs = ("port",)

        def infer(self, feed: dict[int, object], share_inputs: bool) -> Results:
            assert share_inputs and list(feed) == [0]
            return Results()

    pytest.importorskip("openvino")
    assert ov_engine._infer(Request())([torch.zeros(2).numpy()]) == ["out"]


# ---- frozen, nothing of the caller's


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_owns_its_weights(engine: str) -> None:
    model = _net()
    x = torch.randn(2, 3, 6, 6)
    fast, _ = optimize(model, x, engine=engine, measure=False)
    clone = copy.deepcopy(fast)
    with torch.inference_mode():
        before = fast(x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), before)
        torch.testing.assert_close(clone(x), before)


def test_auto_never_returns_the_callers_object(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    from onebyone.deploy.engines import openvino as ov_engine

    for module in (ort_engine, ov_engine):
        monkeypatch.setattr(module, "available", lambda: "absent")
    import sys

    from onebyone.deploy.timing import Timing

    def fake_timing(models: dict[str, nn.Module], inputs: object) -> dict[str, Timing]:
        return {k: Timing(*(0.5 if k.startswith("original") else 1.0,) * 3, 5) for k in models}

    monkeypatch.setattr(sys.modules["onebyone.deploy.optimize"], "_time_each", fake_timing)
    fast, report = optimize(model, torch.randn(2, 3, 6, 6))
    assert report.engine == "original" and fast is not model
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        next(model.parameters()).mul_(2)
    assert not torch.equal(next(model.parameters()), next(fast.parameters()))


class _Counting(nn.Module):
    """A forward that updates a buffer and a Python attribute (a step counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.register_buffer("running_max", torch.zeros(()))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.running_max.copy_(torch.maximum(self.running_max, x.abs().max()))
        return self.conv(x)


def test_optimize_profile_and_analyze_leave_the_callers_model_and_tensors_bit_identical() -> None:
    model = _Counting().eval()
    x = torch.randn(2, 3, 8, 8)
    x_before = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimize(model, x, engine="torch", measure=False)
    obo.profile(model, x)
    obo.profile(model, (1, 3, 8, 8))
    assert model.calls == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(x, x_before)


# ---- a verification that means something


class _Vanishing(nn.Module):
    """Outputs dominated by a bias: any input gives (nearly) the same output."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.mul_(gain)
            self.conv.bias.zero_()
            self.head.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


def test_a_check_that_cannot_tell_inputs_apart_is_not_called_verified() -> None:
    _, report = optimize(_Vanishing(0.0).eval(), torch.randn(2, 3, 8, 8), engine="torch",
                         measure=False)  # fmt: skip
    assert not report.exercised and not report.verified
    assert any("prove nothing" in n for n in report.notes)
    assert "NOT VERIFIED" in str(report)


def test_a_better_conditioned_input_is_drawn_where_one_exists() -> None:
    _, report = optimize(_Vanishing(1e-6).eval(), torch.randn(2, 3, 8, 8), engine="torch",
                         measure=False)  # fmt: skip
    assert report.exercised and report.verified
    assert any("the checks use" in n for n in report.notes)


def test_the_absolute_floor_scales_with_tiny_outputs() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(1e-9)
        model[0].bias.zero_()
    from onebyone.deploy.example import Check
    from onebyone.deploy.optimize import _verify
    from onebyone.deploy.report import Candidate

    x = torch.randn(2, 3, 4, 4)
    with torch.inference_mode():
        ref = model(x)
    wrong = nn.Sequential(copy.deepcopy(model[0])).eval()
    with torch.no_grad():
        wrong[0].weight.mul_(1.5)  # 50% off, yet ~1e-9 in absolute terms
    candidate = Candidate("torch", "float32")
    _verify(candidate, wrong, [Check("x", (x,), ref)], 1e-4)
    assert not candidate.ok


# ---- errors (argument named, reason true)


def test_small_promises_of_the_arguments() -> None:
    model = _net()
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(TypeError, match="`progress`"):
        optimize(model, x, progress=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch of at least one.*\(0, 3, 6, 6\)"):
        optimize(model, torch.randn(0, 3, 6, 6))

    class Nothing(nn.Module):
        def forward(self, x: torch.Tensor) -> None:
            return None

    with pytest.raises(ValueError, match=r"`model`.*returns tensors.*NoneType"):
        optimize(Nothing().eval(), x)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"`model`.*model\.float\(\)") as info:
        optimize(bf16, x, precision="bfloat16")
    assert "pass precision='bfloat16'" not in str(info.value)


@pytest.mark.skipif(not HAVE["onnxruntime"], reason="onnxruntime not installed")
def test_bfloat16_on_onnxruntime_says_the_true_reason() -> None:
    with pytest.raises(ValueError, match="ONNX Runtime's CPU kernels here have no native bfloat16"):
        optimize(_net(), torch.randn(1, 3, 6, 6), precision="bfloat16", engine="onnxruntime")


# ---- self-describing artifacts


@pytest.mark.skipif(not HAVE["onnxruntime"], reason="onnxruntime not installed")
def test_the_onnx_file_names_its_dimensions_and_keeps_static_ones_static(tmp_path: object) -> None:
    import onnx

    from onebyone.deploy import save_onnx

    model = _net()
    x = torch.randn(1, 3, 6, 6)
    _, report = optimize(model, x, engine="torch", measure=False)
    path, _ = save_onnx(report.program, (x,), tmp_path / "m.onnx", original=model,  # type: ignore[operator]
                        call=report.call_spec)  # fmt: skip
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 6, 6]


@pytest.mark.skipif(not HAVE["openvino"], reason="openvino not installed")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_openvino_ir_records_its_precision_and_runs_as_reported(
    tmp_path: object, precision: str
) -> None:
    import openvino as ov

    from onebyone.deploy import save_openvino
    from onebyone.deploy.engines import openvino as ov_engine

    if precision not in ov_engine.precisions():
        pytest.skip("OpenVINO reports no bfloat16 on this CPU")
    model = _timm("edgenext_xx_small")
    x = torch.randn(1, 3, 64, 64)
    _, report = optimize(model, x, engine="torch", measure=False)
    xml, written = save_openvino(report.program, (x,), tmp_path / "ir",  # type: ignore[operator]
                                 original=model, tolerance=0.06, precision=precision,
                                 call=report.call_spec)  # fmt: skip
    core = ov.Core()
    read = core.read_model(str(xml))
    hint = read.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str)
    assert hint == ("f32" if precision == "float32" else "bf16")
    # as a user loads it: plainly where the recorded precision is OpenVINO's default
    # here (bfloat16), with the recorded hint otherwise
    config = {} if precision == "bfloat16" else {"INFERENCE_PRECISION_HINT": hint}
    compiled = core.compile_model(str(xml), "CPU", config)
    [shape] = [port.get_partial_shape() for port in compiled.inputs]
    assert shape.is_static and list(shape.to_shape()) == [1, 3, 64, 64]  # what was proven
    with torch.inference_mode():
        ref = model(x)
    out = torch.from_numpy(compiled(x.numpy())[0].copy())
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel == pytest.approx(written.max_rel, rel=1e-2, abs=1e-6)
    if precision == "float32":
        assert rel < 1e-4


def _runtime_counts(compiled: object) -> dict[str, int]:
    from collections import Counter

    ops = compiled.get_runtime_model().get_ops()  # type: ignore[attr-defined]
    return dict(Counter(op.get_rt_info()["layerType"].astype(str) for op in ops))


@pytest.mark.skipif(not (HAVE["openvino"] and HAVE["onnxruntime"]), reason="no openvino/onnx")
def test_openvino_graph_has_no_more_reorders_than_openvino_reading_the_onnx_export() -> None:
    import openvino as ov

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(8, 8, 1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(8, 4, 1),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 15, 15)
    fast, _ = optimize(model, x, engine="openvino", measure=False)
    engine = fast.engine
    # every pooling's unread indices are gone: one-output MaxPool, as from ONNX
    pools = [op for op in engine.ov_model.get_ops() if op.get_type_name() == "MaxPool"]
    assert len(pools) == 2 and all(op.get_output_size() == 1 for op in pools)
    ours = _runtime_counts(engine._request("fixed").get_compiled_model())
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(model, (x,), dynamo=True).model_proto.SerializeToString()
    core = ov.Core()
    theirs = _runtime_counts(core.compile_model(core.read_model(proto, b""), "CPU",
                                                {"INFERENCE_PRECISION_HINT": "f32"}))  # fmt: skip
    assert ours.get("Reorder", 0) <= theirs.get("Reorder", 0)
    assert ours.get("Output", 0) == theirs.get("Output", 0) == 1
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
        other = torch.randn(3, 3, 15, 15)  # the dynamic-batch model too
        torch.testing.assert_close(fast(other), model(other), rtol=1e-4, atol=1e-5)


# ---- verification on the user's data


def _digits(batches: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = sklearn_datasets.load_digits()
    n = batches * size
    x = torch.tensor(digits.images[:n], dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8)
    return x, torch.tensor(digits.target[:n])


def _digit_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(
        nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
        )
    ).eval()  # fmt: skip


def test_data_checks_every_candidate_with_agreement_and_accuracy() -> None:
    x, y = _digits()
    model = _digit_net()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    _, report = optimize(model, x[:2], engine="torch", data=loader, measure=False)
    assert (report.data_batches, report.data_rows) == (2, 32)
    with torch.inference_mode():
        expected = float((model(x).argmax(1) == y).float().mean())
    assert report.data_accuracy_original == pytest.approx(expected)
    torch_c = next(c for c in report.candidates if c.engine == "torch")
    assert torch_c.ok and torch_c.data_top1_agreement == 1.0
    assert torch_c.data_accuracy == pytest.approx(expected)
    assert torch_c.data_max_rel_error is not None and torch_c.data_max_rel_error < 1e-4
    assert "data: 32 rows in 2 batches" in str(report)
    # a plain iterable of inputs (no labels): agreement, no accuracy
    _, plain = optimize(model, x[:2], engine="torch", data=[x[:5], x[5:9]], measure=False)
    c = next(c for c in plain.candidates if c.engine == "torch")
    assert c.data_top1_agreement == 1.0 and c.data_accuracy is None


def test_bad_data_is_refused_naming_data() -> None:
    x, y = _digits(1, 4)
    model = _digit_net()
    cases: list[tuple[object, str]] = [
        ([], "at least one batch"),
        ([torch.randn(2, 1, 9, 9)], r"shaped like example_input"),
        ([(x, y.float())], "integer class labels"),
        (x, "an iterable"),
    ]
    for data, message in cases:
        with pytest.raises((ValueError, TypeError), match=rf"`data`.*{message}"):
            optimize(model, x[:2], engine="torch", data=data, measure=False)  # type: ignore[arg-type]

    class Picky(nn.Module):  # takes the example, not every batch of the data
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 3:
                raise ValueError("at most 3 images")
            return x.flatten(1)

    with pytest.raises(ValueError, match=r"`data`.*the model takes"):
        optimize(Picky().eval(), x[:2], engine="torch", data=[x], measure=False)


# ---- timing that holds on a shared machine


def test_time_alone_gives_median_spread_and_runs() -> None:
    from onebyone.deploy.timing import time_alone

    calls = []
    timing = time_alone(lambda: calls.append(1), batch=4, warmup_s=0.0, block_s=0.0, min_runs=7)
    assert timing.runs == 7 and len(calls) >= 8  # the first call is never timed
    assert timing.p10_ms <= timing.median_ms <= timing.p90_ms
    assert timing.throughput == pytest.approx(4 / (timing.median_ms / 1e3))


def test_the_close_candidates_are_timed_again_in_rotating_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from onebyone.deploy.timing import Timing

    opt = sys.modules["onebyone.deploy.optimize"]
    monkeypatch.setattr(opt, "RETIME_ROUNDS", 3)
    # each block's median, in turn: b's first block was a slow one, and a had one fast one
    script = {"a": [1.0, 1.2, 1.1, 1.15], "b": [1.05, 0.9, 0.95, 1.0], "c": [2.0],
              "d": [1.08, 1.3, 1.3, 1.3]}  # fmt: skip
    timed: list[str] = []

    class Model(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            timed.append(self.name)
            return x

    def block(call: Callable[[], object], *, batch: int = 1) -> Timing:
        call()  # the model says who it is
        name = timed[-1]
        ms = script[name][timed.count(name) - 1]
        return Timing(ms, ms * 0.9, ms * 1.1, 10, batch)

    monkeypatch.setattr(opt, "time_alone", block)
    models = {name: Model(name) for name in script}
    timings = opt._time_each(models, (torch.zeros(2, 3),))
    # a, b and d within 10% of the fastest: three more rounds, the order rotating
    # (slowest first), c once; each close one keeps the median of its four blocks
    assert timed == ["a", "b", "c", "d", "d", "b", "a", "b", "a", "d", "a", "d", "b"]
    assert timings["a"].median_ms == pytest.approx(1.125) and timings["a"].runs == 40
    assert timings["b"].median_ms == pytest.approx(0.975) and timings["c"].runs == 10
    assert timings["d"].median_ms == pytest.approx(1.3)
    assert timings["a"].p10_ms == pytest.approx(0.9) and timings["a"].p90_ms == pytest.approx(1.32)
    assert min(timings, key=lambda k: timings[k].median_ms) == "b"
    script["b"], script["d"] = [1.5], [1.6]  # apart: one block each
    timed.clear()
    timings = opt._time_each(models, (torch.zeros(2, 3),))
    assert timed == ["a", "b", "c", "d"] and timings["a"].median_ms == 1.0

    # a block slowed part of the time: median 1.5, but its fastest tenth beat a's median
    def slowed(call: Callable[[], object], *, batch: int = 1) -> Timing:
        t = block(call, batch=batch)
        if timed[-1] == "d" and timed.count("d") == 1:
            return Timing(1.5, 0.95, 1.7, 10, batch)
        return t

    script["d"] = [1.5, 0.9, 0.95, 0.92]
    monkeypatch.setattr(opt, "time_alone", slowed)
    timed.clear()
    timings = opt._time_each(models, (torch.zeros(2, 3),))
    assert timed == ["a", "b", "c", "d", "d", "a", "a", "d", "d", "a"]
    assert timings["d"].median_ms == pytest.approx(0.935) and timings["b"].runs == 10
    assert min(timings, key=lambda k: timings[k].median_ms) == "d"


@pytest.mark.parametrize(
    ("others_rate", "own_rate", "busy"),
    [(1.5, 0.0, True), (0.2, 0.0, False), (0.0, 1.5, False), (2.0, 0.5, True)],
)
def test_the_machine_is_busy_when_other_work_uses_the_cores(
    monkeypatch: pytest.MonkeyPatch, others_rate: float, own_rate: float, busy: bool
) -> None:
    """Busy is what other processes used while optimize waited: this process's own CPU
    time (its engines' threads still spinning) is not counted against the machine."""
    import time

    from onebyone.deploy import timing

    start = time.perf_counter()

    def own() -> float:  # as if this process's threads used own_rate cores
        return own_rate * (time.perf_counter() - start)

    def all_busy() -> float:  # every process together: this one and the others
        return (others_rate + own_rate) * (time.perf_counter() - start)

    monkeypatch.setattr(timing, "_busy_cpu_seconds", all_busy)
    monkeypatch.setattr(timing.time, "process_time", own)
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    load = timing.machine_load()
    assert load is not None and load.others is not None
    assert load.others == pytest.approx(min(2.0, others_rate), abs=0.05)
    assert load.busy is busy and load.average == 3.0
    assert str(load) == f"load average 3.0 on 2 cores, other work using {load.others:.1f} of them"


def test_the_load_average_decides_where_the_cores_cannot_be_watched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onebyone.deploy import timing

    monkeypatch.setattr(timing, "_busy_cpu_seconds", lambda: None)
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    for average, busy in ((0.4, False), (1.5, True)):
        monkeypatch.setattr(timing.os, "getloadavg", lambda a=average: (a, a, a))
        load = timing.machine_load()
        assert load is not None and load.others is None and load.busy is busy
        assert str(load) == f"load average {average:.1f} on 2 cores"


def test_the_cores_are_watched_on_this_machine() -> None:
    import os

    from onebyone.deploy import timing

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here: the load average decides")
    load = timing.machine_load()
    assert load is not None and load.others is not None
    assert 0.0 <= load.others <= load.cores


def test_the_report_gives_the_spread_the_load_and_throughput(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json
    import sys

    from onebyone.deploy import timing

    opt = sys.modules["onebyone.deploy.optimize"]
    monkeypatch.setattr(opt, "machine_load", lambda: timing.Load(7.5, 2))  # a busy machine
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    monkeypatch.setattr(timing, "BLOCK_S", 0.05)
    model = _net()
    _, report = optimize(model, torch.randn(2, 3, 6, 6), engine="torch")
    assert report.latency_before is not None and report.latency_after is not None
    assert report.latency_before.runs >= timing.MIN_RUNS
    low, high = report.speedup_range  # type: ignore[misc]
    assert low <= report.speedup <= high  # type: ignore[operator]
    assert set(report.throughput) == {"original", "optimized"}
    assert set(report.throughput["optimized"]) == {2, 8}  # the example's batch and a larger one
    assert any(n.startswith("the machine was busy (load average 7.5 on 2 cores)")
               for n in report.notes)  # fmt: skip
    data = json.loads(report.to_json())
    assert data["load"]["busy"] and data["latency_after"]["runs"] >= timing.MIN_RUNS


# ---- the engine registry


class _SlowEngine:
    """A fake engine: the exported program's own module behind a sleep."""

    name = "slow"
    built = 0

    def available(self) -> str | None:
        return None

    def precisions(self) -> tuple[str, ...]:
        return ("float32",)

    def build(self, graph: object, precision: str) -> nn.Module:
        import time as _time

        program = graph.program  # type: ignore[attr-defined]
        inner = copy.deepcopy(program).module()
        _SlowEngine.built += 1

        class Slow(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: torch.Tensor) -> object:
                _time.sleep(0.002)
                return self.inner(*args)

        return Slow()


def test_a_registered_engine_is_built_verified_timed_and_can_lose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from onebyone.deploy import timing
    from onebyone.deploy.engines import openvino as ov_engine
    from onebyone.deploy.engines.registry import REGISTRY, register

    monkeypatch.setitem(REGISTRY, "slow", _SlowEngine())  # removed afterwards
    assert register(REGISTRY["slow"]).name == "slow"
    for module in (ort_engine, ov_engine):
        monkeypatch.setattr(module, "available", lambda: "absent")
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    monkeypatch.setattr(timing, "BLOCK_S", 0.02)
    opt = sys.modules["onebyone.deploy.optimize"]
    real = opt._time_each

    def slower(models: dict[str, nn.Module], inputs: object) -> dict[str, object]:
        timings = real(models, inputs)  # each really timed; "slow" made the slowest
        worst = max(t.median_ms for t in timings.values()) + 1.0
        timings["slow/float32"] = timing.Timing(worst, worst, worst, 5)
        return timings

    monkeypatch.setattr(opt, "_time_each", slower)
    model = _net()
    _, report = optimize(model, torch.randn(2, 3, 6, 6))
    slow = next(c for c in report.candidates if c.engine == "slow")
    assert _SlowEngine.built == 1 and slow.ok and slow.max_rel_error is not None
    assert slow.latency is not None and report.engine != "slow"
    _, only = optimize(model, torch.randn(2, 3, 6, 6), engine="slow", measure=False)
    assert only.engine == "slow" and only.verify is not None
    with pytest.raises(ValueError, match="`engine`"):
        register(type("Auto", (_SlowEngine,), {"name": "auto"})())  # type: ignore[arg-type]


def test_the_example_is_cloned_once_and_never_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3, 6, 6)
    reads: list[str] = []
    real_clone, real_detach = torch.Tensor.clone, torch.Tensor.detach

    def clone(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self is x:
            reads.append("clone")
        return real_clone(self, *args, **kwargs)  # type: ignore[arg-type]

    def detach(self: torch.Tensor) -> torch.Tensor:
        if self is x:
            reads.append("detach")
        return real_detach(self)

    monkeypatch.setattr(torch.Tensor, "clone", clone)
    monkeypatch.setattr(torch.Tensor, "detach", detach)
    optimize(_net(), x, engine="torch", measure=False)
    assert reads == ["detach"]  # detach().clone(): one copy, made by Example.of


def test_the_torch_engine_at_another_image_size_runs_the_original() -> None:
    model = _net_conv()
    fast, _ = optimize(model, torch.randn(1, 3, 16, 16), engine="torch", measure=False)
    x = torch.randn(2, 3, 20, 20)
    with pytest.warns(UserWarning, match=r"not proven.*shape") as caught:
        out = fast(x)
        fast(x)  # warned once per shape
    assert len(caught) == 1
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x))


@pytest.mark.skipif(not HAVE["onnxruntime"], reason="onnxruntime not installed")
def test_writing_onnx_reuses_what_optimize_exported(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onebyone.deploy import save_onnx

    model = _net()
    x = torch.randn(1, 3, 6, 6)
    _, report = optimize(model, x, engine="onnxruntime", measure=False)
    assert isinstance(report.exports.get("onnx"), bytes)

    def no_export(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("exported again")

    monkeypatch.setattr(ort_engine, "export_onnx", no_export)
    path, check = save_onnx(report.program, (x,), tmp_path / "m.onnx", original=model,  # type: ignore[operator]
                            call=report.call_spec, built=report.exports["onnx"])  # fmt: skip
    assert path.read_bytes() == report.exports["onnx"] and check.ok


class _WithNone(nn.Module):
    """Tensors beside a None: ONNX and OpenVINO graphs have no such output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None, dict[str, torch.Tensor]]:
        y = self.conv(x)
        return y, None, {"twice": 2 * y}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_none_output_beside_tensors_is_kept_by_every_engine(engine: str) -> None:
    model = _WithNone().eval()
    x = torch.randn(2, 3, 6, 6)
    fast, report = optimize(model, x, engine=engine, measure=False)
    assert report.engine == engine
    for batch in (2, 5):
        x = torch.randn(batch, 3, 6, 6)
        y, nothing, named = fast(x)
        assert nothing is None
        torch.testing.assert_close(y, model(x)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(named["twice"], 2 * model(x)[0], rtol=1e-4, atol=1e-5)
