"""The PyTorch op: every backend against the NumPy op, nn.Conv2d and F.linear on the pixel view."""

from __future__ import annotations

import warnings

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

import onebyone as obo
from onebyone import functional
from onebyone.kernels import onednn, routing
from onebyone.nn import Conv1x1

from helpers import ACTS, TOLERANCES, assert_close, reference

SHAPES = [
    # (N, C, K, H, W, stride, groups)
    (2, 72, 80, 7, 5, 1, 1),
    (2, 72, 80, 7, 5, 2, 2),
    (1, 12, 20, 5, 6, (2, 1), 4),
    (3, 8, 8, 4, 5, 1, 8),  # depthwise
]


def make(n, c, k, h, w, groups, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = (torch.randn(k, c // groups, generator=g) / (c // groups) ** 0.5).to(dtype)
    b = torch.randn(k, generator=g).to(dtype)
    return x, wt, b


@pytest.mark.parametrize("backend", ["gemm", "onednn", "auto"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("n", "c", "k", "h", "w", "stride", "groups"), SHAPES)
def test_backends_match_numpy_and_conv2d(backend, channels_last, n, c, k, h, w, stride, groups):
    x, wt, b = make(n, c, k, h, w, groups)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = obo.conv1x1(x, wt, b, stride=stride, groups=groups, backend=backend)
    assert_close(y, reference(x, wt, b, stride, groups))
    ref = F.conv2d(x, wt[:, :, None, None], b, stride=stride, groups=groups)
    assert_close(y, ref)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


def test_equals_linear_on_pixel_view():
    x, wt, b = make(2, 72, 80, 7, 5, 1)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 72)  # (N*H*W, C)
    ref = F.linear(rows, wt, b).reshape(2, 7, 5, 80).permute(0, 3, 1, 2)
    for backend in ("gemm", "onednn"):
        assert_close(obo.conv1x1(x, wt, b, backend=backend), ref)


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("backend", ["gemm", "onednn"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_epilogue(activation, backend, with_residual, channels_last):
    x, wt, b = make(2, 12, 8, 5, 3, 2, seed=3)
    x = x * 3  # reach the kinks of relu6 / hardswish
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(memory_format=fmt)
    r = torch.randn(2, 8, 3, 2) if with_residual else None
    with torch.no_grad():
        y = obo.conv1x1(x, wt, b, stride=(2, 2), groups=2, activation=activation,
                        residual=r, backend=backend)  # fmt: skip
    assert_close(y, reference(x, wt, b, (2, 2), 2, activation, r))
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["auto", "gemm"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtypes(dtype, backend, channels_last):
    x, wt, b = make(2, 24, 16, 5, 7, 2, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    r = torch.randn(2, 16, 5, 7).to(dtype)
    y = obo.conv1x1(x, wt, b, groups=2, activation="relu", residual=r, backend=backend)
    assert y.dtype == dtype
    assert_close(y, reference(x, wt, b, 1, 2, "relu", r), dtype)


def test_unbatched():
    x, wt, b = make(1, 6, 4, 5, 3, 1)
    r = torch.randn(4, 3, 2)
    for backend in ("gemm", "onednn"):
        y = obo.conv1x1(x[0], wt, b, stride=2, residual=r, backend=backend)
        assert y.shape == (4, 3, 2)
        assert_close(y, reference(x, wt, b, 2, 1, None, r[None])[0])


def test_four_d_weight_accepted():
    x, wt, b = make(2, 6, 4, 5, 3, 1)
    assert_close(obo.conv1x1(x, wt[:, :, None, None], b), obo.conv1x1(x, wt, b))


@pytest.mark.parametrize("backend", ["auto", "gemm"])
def test_empty_inputs(backend):
    wt = torch.randn(4, 6)
    assert obo.conv1x1(torch.randn(0, 6, 5, 5), wt, backend=backend).shape == (0, 4, 5, 5)
    assert obo.conv1x1(torch.randn(2, 6, 0, 5), wt, backend=backend).shape == (2, 4, 0, 5)
    assert obo.conv1x1(torch.randn(2, 6, 3, 0), wt, stride=2, backend=backend).shape == (2, 4, 2, 0)


@pytest.mark.parametrize("backend", ["gemm", "onednn"])
def test_nan_inf_propagate_like_conv2d(backend):
    x = torch.randn(1, 4, 3, 3)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 2, 2] = float("inf")
    wt = torch.randn(3, 4)
    y = obo.conv1x1(x, wt, backend=backend)
    ref = F.conv2d(x, wt[:, :, None, None])
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))


def test_inputs_never_modified():
    x, wt, b = make(2, 6, 4, 5, 3, 1)
    r = torch.randn(2, 4, 5, 3)
    before = [t.clone() for t in (x, wt, b, r)]
    for backend in ("gemm", "onednn"):
        for act in ("relu", "silu"):
            obo.conv1x1(x, wt, b, residual=r, activation=act, backend=backend)
    xg, rg = x.clone().requires_grad_(), r.clone().requires_grad_()
    obo.conv1x1(xg, wt, b, residual=rg, activation="silu").sum().backward()
    for t, c in zip((x, wt, b, r), before, strict=True):
        assert torch.equal(t, c)


@pytest.mark.parametrize("activation", list(ACTS))
def test_gradcheck_every_input(activation):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=g).requires_grad_()
    wt = torch.randn(6, 2, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, generator=g).requires_grad_()
    r = torch.randn(2, 6, 2, 3, dtype=torch.float64, generator=g).requires_grad_()

    def fn(x, wt, b, r):
        return obo.conv1x1(x, wt, b, stride=(2, 1), groups=2, activation=activation, residual=r)

    assert torch.autograd.gradcheck(fn, (x, wt, b, r))
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(fn, (xc, wt, b, r))


def test_training_gradients_match_conv2d():
    x, wt, b = make(2, 12, 8, 5, 4, 2)
    r = torch.randn(2, 8, 3, 2)
    leaves = [t.clone().requires_grad_() for t in (x, wt, b, r)]
    ours = obo.conv1x1(leaves[0], leaves[1], leaves[2], stride=2, groups=2,
                       activation="relu6", residual=leaves[3])  # fmt: skip
    theirs_leaves = [t.clone().requires_grad_() for t in (x, wt, b, r)]
    xt, wtt, bt, rt = theirs_leaves
    theirs = F.relu6(F.conv2d(xt, wtt[:, :, None, None], bt, stride=2, groups=2) + rt)
    grad = torch.randn_like(theirs)
    ours.backward(grad)
    theirs.backward(grad)
    assert_close(ours, theirs)
    for a, e in zip(leaves, theirs_leaves, strict=True):
        assert_close(a.grad, e.grad)


def test_grouped_is_concat_of_per_group():
    x, wt, b = make(2, 12, 9, 4, 4, 3)
    parts = [
        obo.conv1x1(x[:, 4 * i : 4 * i + 4], wt[3 * i : 3 * i + 3], b[3 * i : 3 * i + 3])
        for i in range(3)
    ]
    assert_close(obo.conv1x1(x, wt, b, groups=3), torch.cat(parts, dim=1))


@pytest.fixture
def kernel_calls(monkeypatch):
    """The names of the kernels that ``conv1x1`` calls, in order."""
    calls = []
    for name, module in routing._KERNELS.items():
        original = module.conv1x1

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "conv1x1", spy)
    return calls


def test_auto_picks_the_kernel_by_layout_shape_grad_and_dtype(kernel_calls):
    thin = make(1, 6, 4, 3, 3, 1)  # a weight of 24 values
    wide = make(1, 256, 160, 28, 28, 1)  # 160 filters, 256 input channels
    large_map = make(1, 96, 64, 28, 28, 1)  # 64 filters, but on 784 pixels
    grouped = make(1, 96, 64, 28, 28, 2)
    with torch.no_grad():
        for x, wt, b in (thin, wide, large_map):
            obo.conv1x1(x, wt, b)
        x, wt, b = grouped
        obo.conv1x1(x, wt, b, groups=2)
        x, wt, b = thin
        obo.conv1x1(x.to(memory_format=torch.channels_last), wt, b)
    x, wt, b = thin
    obo.conv1x1(x, wt.requires_grad_(), b)
    obo.conv1x1(x.double(), wt.detach().double(), b.double())
    assert kernel_calls == [
        "gemm",  # NCHW inference of a thin product: MKL on the planes, no reorder
        "onednn",  # NCHW inference, wide on both sides
        "onednn",  # NCHW inference, thin on a large map
        "gemm",  # NCHW inference, grouped
        "onednn",  # channels-last inference
        "onednn",  # training
        "gemm",  # float64, which oneDNN does not run
    ]


def test_a_remembered_call_decides_again_when_layout_grad_or_arguments_change(kernel_calls):
    x, wt, b = make(1, 6, 4, 3, 3, 1)  # thin: NCHW inference runs the GEMM
    r = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        obo.conv1x1(x, wt, b, residual=r)
        obo.conv1x1(x, wt, b, residual=r)
        obo.conv1x1(x.to(memory_format=torch.channels_last), wt, b, residual=r)
    xg = x.clone().requires_grad_()
    y = obo.conv1x1(xg, wt, b, residual=r)
    assert kernel_calls == ["gemm", "gemm", "onednn", "onednn"]
    y.sum().backward()
    assert_close(xg.grad, wt.sum(0)[None, :, None, None].expand(1, 6, 3, 3))
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"argument `residual`.*\(1, 4, 3, 3\)"):
            obo.conv1x1(x, wt, b, residual=torch.randn(1, 4, 3, 2))
        with pytest.raises(TypeError, match=r"argument `bias`.*torch.float32"):
            obo.conv1x1(x, wt, b.double(), residual=r)
        with pytest.raises(ValueError, match=r"argument `activation`"):
            obo.conv1x1(x, wt, b, residual=r, activation="swish")
        with pytest.raises(TypeError, match=r"argument `residual`.*torch.Tensor"):
            obo.conv1x1(x, wt, b, residual=r.numpy())


def test_explicit_backend_that_cannot_run_says_why():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(obo.BackendUnavailableError, match=r"backend='onednn'.*CPU tensors.*meta"):
        obo.conv1x1(x.to("meta"), torch.randn(3, 4, device="meta"), backend="onednn")
    with pytest.raises(obo.BackendUnavailableError, match=r"does not run torch\.float64"):
        obo.conv1x1(x.double(), torch.randn(3, 4).double(), backend="onednn")


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_onednn_training_gradients(activation, channels_last, with_residual):
    """The fused oneDNN forward + convolution backward against float64 autograd on the GEMM path."""
    x, wt, b = make(2, 12, 8, 5, 4, 2, seed=11)
    x = (2 * x).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    r = torch.randn(2, 8, 3, 2) if with_residual else None
    grad = torch.randn(2, 8, 3, 2)

    def run(dtype, backend):
        leaves = [t.detach().to(dtype).clone().requires_grad_() for t in (x, wt, b)]
        res = None if r is None else r.detach().to(dtype).clone().requires_grad_()
        y = obo.conv1x1(*leaves, stride=2, groups=2, activation=activation, residual=res,
                        backend=backend)  # fmt: skip
        y.backward(grad.to(dtype))
        return y, [t.grad for t in leaves] + ([] if res is None else [res.grad])

    y, grads = run(torch.float32, "onednn")
    y_ref, grads_ref = run(torch.float64, "gemm")
    assert_close(y, y_ref)
    for g, e in zip(grads, grads_ref, strict=True):
        assert_close(g, e)


def test_onednn_training_updates_only_requested_gradients():
    x, wt, b = make(1, 6, 4, 3, 3, 1)
    w = wt.clone().requires_grad_()
    obo.conv1x1(x, w, b, activation="silu", backend="onednn").sum().backward()
    assert w.grad is not None and x.grad is None and b.grad is None


@pytest.mark.parametrize("write", ["data", "numpy", "in_place"])
def test_a_changed_weight_is_never_served_stale(write):
    """Writes through ``.data`` or NumPy bump no version counter: the op keeps no copy of
    a weight, so every call reads the weight as it is (here one whose packing would pay:
    2048 filters on 4 output pixels)."""
    layer = Conv1x1(256, 2048, bias=False).eval()
    x = torch.randn(1, 256, 2, 2).to(memory_format=torch.channels_last)
    with torch.no_grad():
        first = layer(x)
        if write == "data":
            layer.weight.data.mul_(2)
        elif write == "numpy":
            layer.weight.detach().numpy()[...] *= 2
        else:
            layer.weight.mul_(2)
        second = layer(x)
    assert_close(second, 2 * first)


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_onednn_inference_routes_agree(activation, with_residual, channels_last):
    """Every inference route computes the same thing and keeps the caller's layout; the
    packing rule (weights that outweigh the output pixels, K/g > N*H'*W', in products of
    at least 2^21 multiply-adds) is what frozen models use."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for n, c, k, h, stride, groups, packs in [
        (1, 512, 1024, 4, 2, 1, True),  # 1024 filters, 4 output pixels: 2^21 MACs
        (1, 256, 1024, 4, 2, 1, False),  # the same, but 2^20 MACs: tiny
        (2, 32, 64, 8, 1, 2, False),  # 32 filters per group, 128 pixels
        (1, 128, 576, 7, 1, 1, True),  # 576 filters, 49 pixels
    ]:
        x, wt, b = make(n, c, k, h, h, groups)
        x = x.to(memory_format=fmt)
        ho = -(-h // stride)
        r = torch.randn(n, k, ho, ho).to(memory_format=fmt) if with_residual else None
        assert routing.packing_pays(k // groups, c // groups, n * ho * ho) is packs
        with torch.no_grad():
            y = obo.conv1x1(
                x, wt, b, stride=stride, groups=groups, activation=activation, residual=r,
                backend="onednn",
            )  # fmt: skip
        assert y.is_contiguous(memory_format=fmt)
        assert_close(y, reference(x, wt, b, stride, groups, activation, r))


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(onednn, "is_available", lambda: False)
    monkeypatch.setattr(routing, "_warned", set())
    monkeypatch.setattr(functional, "_PLANS", {})  # plans made with oneDNN at hand
    x, wt, b = make(1, 6, 4, 3, 3, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            y1 = obo.conv1x1(x, wt, b)
            y2 = obo.conv1x1(x, wt, b)
    assert len([w for w in caught if "oneDNN" in str(w.message)]) == 1
    assert_close(y1, reference(x, wt, b, 1, 1))
    assert torch.equal(y1, y2)
    with pytest.raises(obo.BackendUnavailableError, match=r"no torch\.ops\.mkldnn"):
        obo.conv1x1(x, wt, b, backend="onednn")


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 2),
    groups=st.sampled_from([1, 2, 3]),
    cg=st.integers(1, 5),
    kg=st.integers(1, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    channels_last=st.booleans(),
    backend=st.sampled_from(["auto", "gemm"]),
)
def test_property_shapes(n, groups, cg, kg, h, w, stride, channels_last, backend):
    x, wt, b = make(n, cg * groups, kg * groups, h, w, groups)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = obo.conv1x1(x, wt, b, stride=stride, groups=groups, backend=backend)
    assert_close(y, reference(x, wt, b, stride, groups))


def test_tolerance_table_covers_every_dtype():
    assert set(TOLERANCES) == {torch.float16, torch.bfloat16, torch.float32, torch.float64}


@pytest.mark.parametrize("grad", [False, True])
def test_torch_compile_traces_without_graph_breaks(grad):
    import torch._dynamo as dynamo

    from onebyone.nn import Conv1x1

    model = torch.nn.Sequential(Conv1x1(8, 8, activation="relu"), Conv1x1(8, 4, stride=2))
    with torch.set_grad_enabled(grad):
        explanation = dynamo.explain(model)(torch.randn(1, 8, 4, 4))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_records_grad_asks_grad_mode_and_every_given_tensor():
    from onebyone.kernels.epilogue import records_grad

    plain, leaf = torch.ones(2), torch.ones(2, requires_grad=True)
    assert not records_grad(plain, None, plain)
    assert records_grad(plain, None, leaf)
    assert not records_grad()
    with torch.no_grad():
        assert not records_grad(leaf)


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_add_then_activate_computes_act_of_the_sum(activation, dtype):
    from onebyone.kernels.epilogue import add_then_activate_

    y = torch.randn(2, 5, 3, 4).to(dtype)
    for addend in (torch.randn(2, 5, 3, 4).to(dtype), torch.randn(1, 5, 1, 1).to(dtype)):
        out = y.clone()
        result = add_then_activate_(out, addend, activation)
        if activation in (None, "relu"):
            assert result.data_ptr() == out.data_ptr()  # no new output
        expected = ACTS[activation](y.double() + addend.double())
        assert_close(result, expected, dtype)
