"""The Triton kernels, forward and backward, against the NumPy op and nn.Conv2d.

Without CUDA the kernels run on CPU tensors through Triton's interpreter, so CI
exercises them: this module sets ``TRITON_INTERPRET=1`` before it first imports
``onebyone.kernels.triton``, because ``triton.jit`` reads the variable when the
kernels are decorated (and Triton reads it again at launch, so it stays set).
If the kernel module was imported earlier without it, it is reloaded here.
With CUDA the same small tests run compiled on the GPU (set ``TRITON_INTERPRET=1``
yourself to interpret them there instead), and the large-shape tests run too.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install 'onebyone[triton]')")

import hypothesis.strategies as st
import torch.nn.functional as F
from hypothesis import given, settings

import onebyone as obo
from onebyone import geometry
from onebyone.kernels import routing
from onebyone.kernels import triton as tk

from helpers import ACTS, TOLERANCES, assert_close, reference

if os.environ.get("TRITON_INTERPRET") == "1" and not tk.INTERPRETED:
    tk = importlib.reload(tk)  # imported before the variable was set: decorate again

DEVICE = "cpu" if tk.INTERPRETED else "cuda"
CUDA = torch.cuda.is_available() and not tk.INTERPRETED
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU running the compiled kernels")
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")

SHAPES = [
    # (N, C, K, H, W, stride, groups): no size is a multiple of the 16-wide
    # interpreter tiles; the second needs several reduction steps and channel tiles
    (2, 6, 10, 5, 3, 1, 1),
    (2, 40, 36, 7, 5, 2, 2),
    (1, 12, 20, 5, 6, (2, 1), 4),
    (3, 8, 8, 4, 5, 1, 8),  # depthwise
]


def _pair(s):
    return (s, s) if isinstance(s, int) else s


def make_case(n, c, k, h, w, stride, groups, *, dtype, channels_last, bias=True, residual=True):
    """Inputs in ``dtype`` on DEVICE, rounded once so float64 references see the same values."""
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + k)
    sh, sw = _pair(stride)
    x = 2 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)  # 2x: reach the kinks
    wt = torch.randn(k, c // groups, generator=g, dtype=torch.float64) / (c // groups) ** 0.5
    b = torch.randn(k, generator=g, dtype=torch.float64) if bias else None
    shape_out = (n, k, -(-h // sh), -(-w // sw))
    r = torch.randn(shape_out, generator=g, dtype=torch.float64) if residual else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(dtype).to(memory_format=fmt)
    wt, b, r = (None if t is None else t.to(dtype) for t in (wt, b, r))
    return tuple(None if t is None else t.to(DEVICE).requires_grad_() for t in (x, wt, b, r))


def conv2d_grads(x, wt, b, r, stride, groups, activation, grad_y):
    """Gradients of the same loss through nn.Conv2d's functional form in float64."""
    leaves = [
        None if t is None else t.detach().cpu().double().requires_grad_() for t in (x, wt, b, r)
    ]
    x64, w64, b64, r64 = leaves
    z = F.conv2d(x64, w64[:, :, None, None], b64, stride=stride, groups=groups)
    if r64 is not None:
        z = z + r64
    ACTS[activation](z).backward(grad_y.detach().cpu().double())
    return [None if t is None else t.grad for t in leaves]


def check_forward_backward(shape, *, activation, dtype, channels_last, bias=True, residual=True):
    """The whole contract on one case: values, layout, gradients, inputs untouched."""
    stride, groups = shape[5], shape[6]
    inputs = make_case(
        *shape, dtype=dtype, channels_last=channels_last, bias=bias, residual=residual
    )
    x, wt, b, r = inputs
    before = [None if t is None else t.detach().clone() for t in inputs]
    y = obo.conv1x1(
        x, wt, b, stride=stride, groups=groups, activation=activation, residual=r, backend="triton"
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=fmt)
    assert_close(y, reference(x, wt, b, stride, groups, activation, r), dtype)

    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    y.backward(grad_y)
    expected = conv2d_grads(x, wt, b, r, stride, groups, activation, grad_y)
    for name, t, e in zip(("x", "weight", "bias", "residual"), inputs, expected, strict=True):
        if t is None:
            continue
        assert t.grad is not None, f"no gradient for {name}"
        assert t.grad.shape == t.shape, name
        scale = max(1.0, e.abs().max().item())  # sums over many pixels: relative to their size
        assert_close(t.grad / scale, e / scale, dtype)
    assert x.grad.is_contiguous(memory_format=fmt)
    for t, old in zip(inputs, before, strict=True):
        if t is not None:
            assert torch.equal(t.detach(), old), "an input was modified"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation", list(ACTS))
def test_every_activation_forward_and_backward(activation, channels_last):
    check_forward_backward(
        SHAPES[0], activation=activation, dtype=torch.float32, channels_last=channels_last
    )


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    ("shape", "activation", "bias", "residual"),
    [
        (SHAPES[0], "relu", False, False),
        (SHAPES[1], "gelu", True, True),
        (SHAPES[2], "hardswish", True, False),
        (SHAPES[3], "sigmoid", False, True),
    ],
)
def test_strides_groups_layouts(shape, activation, bias, residual, channels_last):
    check_forward_backward(
        shape,
        activation=activation,
        dtype=torch.float32,
        channels_last=channels_last,
        bias=bias,
        residual=residual,
    )


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype, channels_last):
    check_forward_backward(SHAPES[1], activation="silu", dtype=dtype, channels_last=channels_last)


@pytest.mark.parametrize("activation", ["silu", "tanh"])  # derivative from z, and from y
def test_gradcheck_float64(activation):
    x, wt, b, r = make_case(
        1, 4, 6, 3, 4, 2, 2, dtype=torch.float64, channels_last=activation == "tanh"
    )

    def f(x, wt, b, r):
        return obo.conv1x1(
            x, wt, b, stride=2, groups=2, activation=activation, residual=r, backend="triton"
        )

    assert torch.autograd.gradcheck(f, (x, wt, b, r), eps=1e-6, atol=1e-6, fast_mode=True)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 2),
    cg=st.integers(1, 20),
    kg=st.integers(1, 20),
    groups=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    channels_last=st.booleans(),
)
def test_forward_property(n, cg, kg, groups, h, w, sh, sw, channels_last):
    shape = (n, cg * groups, kg * groups, h, w, (sh, sw), groups)
    x, wt, b, r = make_case(*shape, dtype=torch.float32, channels_last=channels_last)
    with torch.no_grad():
        y = obo.conv1x1(x, wt, b, stride=(sh, sw), groups=groups, residual=r, backend="triton")
    assert_close(y, reference(x, wt, b, (sh, sw), groups, None, r))


def test_strided_views_unbatched_and_expanded_gradients():
    """A non-dense input view, an unbatched call, a 4-D weight and a stride-0 gradient."""
    base = torch.randn(2, 12, 7, 9, dtype=torch.float64)
    x = base[:, ::2, :, 1:].to(DEVICE).requires_grad_()  # (2, 6, 7, 8), not dense
    wt = torch.randn(5, 6, 1, 1, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = obo.conv1x1(x, wt, stride=(3, 2), activation="leaky_relu", backend="triton")
    y.sum().backward()  # grad_y is an expanded (stride-0) tensor
    ref = F.leaky_relu(F.conv2d(x.detach(), wt.detach(), stride=(3, 2)), 0.01)
    assert_close(y, ref, torch.float64)
    xr = x.detach().clone().requires_grad_()
    wr = wt.detach().clone().requires_grad_()
    F.leaky_relu(F.conv2d(xr, wr, stride=(3, 2)), 0.01).sum().backward()
    assert_close(x.grad, xr.grad, torch.float64)
    assert_close(wt.grad, wr.grad, torch.float64)
    assert wt.grad.shape == (5, 6, 1, 1)

    single = obo.conv1x1(x[0].detach(), wt.detach(), stride=(3, 2), backend="triton")
    assert_close(single, F.conv2d(x[:1].detach(), wt.detach(), stride=(3, 2))[0], torch.float64)


@pytest.mark.parametrize("trained", ["x", "weight", "bias", "residual"])
def test_gradient_of_one_input_only(trained):
    """Frozen inputs get no gradient; the trained one gets the right one."""
    shape = SHAPES[1]
    stride, groups = shape[5], shape[6]
    inputs = make_case(*shape, dtype=torch.float64, channels_last=False)
    names = ("x", "weight", "bias", "residual")
    for name, t in zip(names, inputs, strict=True):
        t.requires_grad_(name == trained)
    x, wt, b, r = inputs
    y = obo.conv1x1(
        x, wt, b, stride=stride, groups=groups, activation="gelu", residual=r, backend="triton"
    )
    grad_y = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2))
    y.backward(grad_y.to(DEVICE))
    expected = conv2d_grads(x, wt, b, r, stride, groups, "gelu", grad_y)
    for name, t, e in zip(names, inputs, expected, strict=True):
        if name == trained:
            assert_close(t.grad, e, torch.float64)
        else:
            assert t.grad is None, name


def test_skipped_pixels_get_zero_gradient():
    x = torch.randn(1, 3, 5, 4, device=DEVICE, requires_grad=True)
    wt = torch.randn(2, 3, device=DEVICE)
    obo.conv1x1(x, wt, stride=2, backend="triton").sum().backward()
    mask = torch.zeros(5, 4, dtype=torch.bool)
    mask[::2, ::2] = True
    grad = x.grad.cpu()
    assert torch.all(grad[..., ~mask] == 0)
    assert_close(grad[0, :, 0, 0], wt.sum(0).cpu())  # every output channel's weight, once


def test_empty_inputs():
    wt = torch.randn(4, 6, device=DEVICE)
    empty = torch.randn(0, 6, 5, 5, device=DEVICE)
    assert obo.conv1x1(empty, wt, backend="triton").shape == (0, 4, 5, 5)
    assert obo.conv1x1(torch.randn(2, 6, 3, 0, device=DEVICE), wt, backend="triton").shape == (
        2,
        4,
        3,
        0,
    )


def test_auto_never_picks_triton_for_cpu_tensors():
    x = torch.randn(1, 4, 3, 3)
    geo = geometry.geometry(x.shape, (5, 4), None, stride=(1, 1), groups=1)
    assert routing.choose("auto", x, True, geo) is not tk
    assert routing.choose("auto", x, False, geo) is not tk
    assert routing.choose("triton", x.to(DEVICE), True, geo) is tk


@needs_cuda
def test_auto_picks_triton_on_cuda():
    x = torch.randn(1, 4, 3, 3, device="cuda")
    geo = geometry.geometry(x.shape, (5, 4), None, stride=(1, 1), groups=1)
    assert routing.choose("auto", x, True, geo) is tk
    assert routing.choose("auto", x, False, geo) is tk


def test_float32_uses_tf32_only_when_matmul_may():
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert tk._dot_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert tk._dot_precision(torch.float32) == "tf32"
        assert tk._dot_precision(torch.bfloat16) == "ieee"  # 16-bit operands: exact products
        assert tk._dot_precision(torch.float64) == "ieee"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_unsupported_says_why():
    assert "int32" in tk.unsupported(torch.zeros(1, 1, 1, 1, dtype=torch.int32), False)
    meta = torch.empty(1, 1, 1, 1, device="meta")
    assert "meta" in tk.unsupported(meta, False)


def _run_python(script: str, **env_changes: str | None) -> dict:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_explicit_backend_that_cannot_run_raises_with_the_reason():
    """Checked in a fresh interpreter: without TRITON_INTERPRET, and without Triton."""
    out = _run_python(
        """
        import json, sys
        import torch
        sys.modules["triton"] = None  # as if Triton were not installed
        import onebyone as obo
        x, w = torch.randn(1, 4, 3, 3), torch.randn(2, 4)
        out = {"plain_import": "onebyone.kernels.triton" not in sys.modules}
        out["auto_works"] = obo.conv1x1(x, w).shape == (1, 2, 3, 3)
        try:
            obo.conv1x1(x, w, backend="triton")
        except obo.BackendUnavailableError as error:
            out["missing"] = str(error)
        del sys.modules["triton"]  # Triton is back, kernels compiled for the GPU
        try:
            obo.conv1x1(x, w, backend="triton")
        except obo.BackendUnavailableError as error:
            out["cpu"] = str(error)
        print(json.dumps(out))
        """,
        TRITON_INTERPRET=None,
        CUDA_VISIBLE_DEVICES="",
    )
    assert out["plain_import"] and out["auto_works"]
    assert "backend='triton' cannot run here: Triton cannot be imported" in out["missing"]
    assert "pip install 'onebyone[triton]'" in out["missing"]
    assert "x is a CPU tensor" in out["cpu"]
    assert "TRITON_INTERPRET=1" in out["cpu"]


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    """The GPU code path (not the interpreter) compiles for sm_90 without a GPU:
    16-bit GEMMs on wgmma tensor cores with cp.async pipelining, every activation."""
    out = _run_python(
        """
        import inspect, json
        import triton, triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from onebyone.kernels import triton as tk

        def build(kernel, cfg, pointers, ones, meta):
            names = list(inspect.signature(kernel.fn).parameters)
            sig, consts, attrs = {}, {}, {}
            for i, name in enumerate(names):
                if name in meta or name in ones:  # unit strides arrive as constants
                    sig[name], consts[name] = "constexpr", meta.get(name, 1)
                else:
                    sig[name] = pointers.get(name, "i32")
                    attrs[(i,)] = [["tt.divisibility", 16]]  # 16-aligned, like 64-channel layers
            source = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
            options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)

        out = {}
        gemm_ptrs = ("a_ptr", "b_ptr", "out_ptr", "bias_ptr", "res_ptr", "pre_ptr")
        for dtype, acc, act in (("bf16", tl.float32, 5), ("fp16", tl.float32, 6),
                                ("fp32", tl.float32, 4), ("fp64", tl.float64, 8)):
            size = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}[dtype]
            cfg = tk._GEMM_FIXED[size]
            meta = dict(ACT=act, HAS_BIAS=True, HAS_RESIDUAL=True, STORE_PREACTIVATION=True,
                        ACC=acc, DOT_PRECISION="ieee", UPCAST=False, **cfg.kwargs)
            k = build(tk._gemm_kernel, cfg, {p: "*" + dtype for p in gemm_ptrs},
                      ("stride_ak", "stride_oc", "stride_rc", "stride_bk"), meta)  # NHWC
            out["gemm_" + dtype] = k.asm["ptx"]
        cfg = tk._GEMM_FIXED[2]
        # NCHW, pixel grid flattened (height 1, unit pixel strides); other activations above
        for act in (0, 1, 2, 3, 7):
            meta = dict(ACT=act, HAS_BIAS=False, HAS_RESIDUAL=False, STORE_PREACTIVATION=False,
                        ACC=tl.float32, DOT_PRECISION="ieee", UPCAST=False, **cfg.kwargs)
            build(tk._gemm_kernel, cfg, {p: "*bf16" for p in gemm_ptrs},
                  ("height", "stride_aw", "stride_ow", "stride_bk"), meta)
        cfg = tk._WGRAD_FIXED[2]
        meta = dict(HAS_BIAS=True, ACC=tl.float32, DOT_PRECISION="ieee", UPCAST=False,
                    **cfg.kwargs)
        ptrs = {"g_ptr": "*bf16", "x_ptr": "*bf16", "dw_ptr": "*fp32", "db_ptr": "*fp32"}
        k = build(tk._weight_grad_kernel, cfg, ptrs, ("stride_gc", "stride_xc", "stride_wc"), meta)
        out["wgrad_bf16"] = k.asm["ptx"]
        for act in range(1, 9):
            ptrs = {p: "*bf16" for p in ("gy_ptr", "saved_ptr", "gz_ptr")}
            build(tk._activation_grad_kernel, tk._config(4, 1), ptrs, (),
                  dict(ACT=act, ACC=tl.float32, BLOCK=1024))
        print(json.dumps({name: {"wgmma": "wgmma.mma_async" in ptx, "cp_async": "cp.async" in ptx}
                          for name, ptx in out.items()}))
        """,
        TRITON_INTERPRET=None,
    )
    for name in ("gemm_bf16", "gemm_fp16", "wgrad_bf16"):
        assert out[name] == {"wgmma": True, "cp_async": True}, name
    assert out["gemm_fp32"]["cp_async"] and out["gemm_fp64"]["cp_async"]


# ------------------------------------------------------------------ CUDA only


def _bf16_case(n, c, k, h, w, channels_last):
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.bfloat16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wt = (torch.randn(k, c, device="cuda") / c**0.5).to(torch.bfloat16)
    b = torch.randn(k, device="cuda", dtype=torch.bfloat16)
    return x, wt, b


@needs_cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("c", "k", "hw", "stride"), [(256, 64, 56, 1), (512, 1024, 28, 2)])
def test_large_shapes_bf16(c, k, hw, stride, channels_last):
    x, wt, b = _bf16_case(32, c, k, hw, hw, channels_last)
    ho = -(-hw // stride)
    r = torch.randn(32, k, ho, ho, device="cuda", dtype=torch.bfloat16)
    leaves = [t.requires_grad_() for t in (x, wt, b, r)]
    y = obo.conv1x1(x, wt, b, stride=stride, activation="silu", residual=r, backend="triton")
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    xf, wf, bf, rf = ref_leaves
    yf = F.silu(F.conv2d(xf, wf[:, :, None, None], bf, stride=stride) + rf)
    yf.backward(grad_y.float())
    atol, rtol = TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(y.float(), yf, atol=atol, rtol=rtol)
    for t, e in zip(leaves, ref_leaves, strict=True):
        scale = e.grad.abs().max()
        torch.testing.assert_close(t.grad.float() / scale, e.grad / scale, atol=atol, rtol=rtol)


@needs_cuda
def test_offsets_past_2_31_elements():
    """Input and output of more than 2**31 elements: the last pixels are right."""
    c = k = 32
    h, w = 8192, 8200  # 32 * 8192 * 8200 > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 10 * 2**30:
        pytest.skip(f"needs 10 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    x = torch.randn(1, c, h, w, device="cuda", dtype=torch.bfloat16)
    assert x.numel() > 2**31
    wt = (torch.randn(k, c, device="cuda") / c**0.5).to(torch.bfloat16)
    with torch.no_grad():
        y = obo.conv1x1(x, wt, activation="relu", backend="triton")
        tail = F.relu(F.conv2d(x[:, :, -3:].float(), wt.float()[:, :, None, None]))
    assert y.numel() > 2**31
    torch.testing.assert_close(y[:, :, -3:].float(), tail, atol=5e-2, rtol=2e-2)


@needs_cuda
def test_weight_gradient_is_reproducible():
    """Split pixel reductions are summed in a fixed order: bitwise-equal gradients."""
    x, wt, b = _bf16_case(64, 64, 64, 56, 56, channels_last=True)
    grads = []
    for _ in range(2):
        w = wt.detach().clone().requires_grad_()
        bb = b.detach().clone().requires_grad_()
        obo.conv1x1(x, w, bb, activation="relu", backend="triton").float().square().sum().backward()
        grads.append((w.grad, bb.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])


@needs_cuda
def test_deterministic_mode_uses_fixed_blocks():
    x, wt, b = _bf16_case(8, 96, 80, 28, 28, channels_last=False)
    tuned = obo.conv1x1(x, wt, b, backend="triton")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        fixed = obo.conv1x1(x, wt, b, backend="triton")
    finally:
        torch.use_deterministic_algorithms(previous)
    torch.testing.assert_close(fixed, tuned, atol=1e-2, rtol=1e-2)
