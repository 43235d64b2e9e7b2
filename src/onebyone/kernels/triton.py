"""CUDA path: the pointwise convolution as one Triton GEMM with the fused epilogue.

A 1x1 convolution is the product of the ``(N*H'*W', C/g)`` matrix of pixels and
the ``(C/g, K/g)`` weight, per group. Here that product reads the input where
it lies (NCHW or NHWC, through its strides; the convolution's pixel stride is
folded into the pixel strides of the loads), accumulates in float32 and
applies ``act(acc + bias + residual)`` before its single store, so bias,
residual and activation cost no extra pass through memory. Training runs on
the same kernels:

- forward: ``_gemm_kernel`` over output pixels; optionally also stores the
  pre-activation when the activation's derivative needs it (``silu``,
  ``gelu``, ``hardswish``); the others are differentiated from the output;
- ``_activation_grad_kernel``: ``grad_z = grad_y * act'(.)``, one pass;
- grad of the input: ``_gemm_kernel`` again, ``grad_z @ W``, storing onto the
  stride grid of a zero-filled ``grad_x`` (skipped pixels get zero gradient);
- grad of the weight and bias: ``_weight_grad_kernel``, ``grad_z^T @ x``
  reduced over pixels. Pixels are split into chunks whose partial sums
  (float32; float64 for float64) land in a workspace summed in a fixed
  order: no atomics, so for a given block configuration the result is the
  same on every run.

Offsets are computed in int64, so tensors of more than ``2**31`` elements are
addressed correctly. Block sizes are autotuned once per problem size over a
short list of configurations (``_GEMM_CONFIGS``, ``_WGRAD_CONFIGS``); with
``torch.use_deterministic_algorithms(True)`` one fixed configuration is used
instead, so results do not depend on which configuration won the timing.

Precision: float16 and bfloat16 operands are multiplied on tensor cores with
float32 accumulation. float32 operands use TF32 tensor cores only when the
user's setting allows it for ``torch.matmul`` too
(``torch.backends.cuda.matmul.allow_tf32`` /
``torch.set_float32_matmul_precision("high")``); otherwise full IEEE float32.
float64 is computed in float64.

With ``TRITON_INTERPRET=1`` in the environment *before this module is first
imported*, ``triton.jit`` builds interpreted kernels and the same code runs on
CPU tensors through Triton's NumPy interpreter (how the test suite exercises
it without a GPU). The interpreter stores bfloat16 as raw 16-bit integers and
cannot multiply them, so there bfloat16 tiles are widened to float32 right
before ``tl.dot`` (an exact widening; products of bfloat16 values are exact in
float32 either way).
"""

from __future__ import annotations

import contextlib
import functools
import linecache
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from onebyone.activations import TABLE
from onebyone.geometry import pointwise_output_size
from onebyone.kernels import gemm
from onebyone.kernels.epilogue import records_grad

__all__ = ["INTERPRETED", "TritonConv1x1", "conv1x1", "unsupported"]

# Kernel code of each activation: 0 is the identity, then the table's order.
_ACTIVATION_CODES: dict[str | None, int] = {None: 0} | {
    name: code for code, name in enumerate(TABLE, start=1)
}
# Activations whose derivative needs the pre-activation z; the others are
# differentiated from the output y = act(z) alone.
_NEEDS_PREACTIVATION = tuple(a.name for a in TABLE.values() if a.needs_preactivation)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------- kernels


def _branches(snippets: dict[int, str], indent: str) -> str:
    """``if ACT == 1: ... elif ACT == 2: ...`` from each code's statements."""
    lines = []
    for i, (code, body) in enumerate(snippets.items()):
        lines.append(f"{indent}{'if' if i == 0 else 'elif'} ACT == {code}:")
        lines += [f"{indent}    {line}" for line in body.splitlines()]
    return "\n".join(lines)


def _generated_source() -> str:
    """Triton source of ``_activate`` and ``_activation_derivative`` from ``TABLE``."""
    codes = {_ACTIVATION_CODES[name]: entry for name, entry in TABLE.items()}
    forward = _branches({c: e.triton for c, e in codes.items()}, "    ")
    backward = _branches({c: e.triton_derivative for c, e in codes.items()}, "    ")
    return f"""
import triton
import triton.language as tl


@triton.jit
def _activate(z, ACT: tl.constexpr):
    # act(z) on an accumulator tile; ACT is a code of _ACTIVATION_CODES
{forward}
    return z


@triton.jit
def _activation_derivative(s, ACT: tl.constexpr):
    # act' on a tile: s is z for the activations that need it, else y = act(z)
    one = tl.full(s.shape, 1.0, s.dtype)
    zero = tl.zeros(s.shape, s.dtype)
    d = one
{backward}
    return d
"""


def _compile_generated() -> tuple[Any, Any]:
    # Triton reads a kernel's source through `inspect`, which reads `linecache`:
    # the generated source is registered there under its own file name.
    name = "<onebyone.kernels.triton: activations>"
    source = _generated_source()
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict[str, Any] = {"__name__": __name__}
    exec(compile(source, name, "exec"), namespace)
    return namespace["_activate"], namespace["_activation_derivative"]


_activate, _activation_derivative = _compile_generated()


@triton.jit
def _gemm_kernel(
    # pointers
    a_ptr: tl.tensor,
    b_ptr: tl.tensor,
    out_ptr: tl.tensor,
    bias_ptr: tl.tensor,
    res_ptr: tl.tensor,
    pre_ptr: tl.tensor,
    # sizes: M pixels on an (images, height, width) grid; per group N outputs, K reduced
    height: tl.tensor,
    width: tl.tensor,
    M: tl.tensor,
    N: tl.tensor,
    K: tl.tensor,
    # strides, in elements; a and out pixel strides already include the pixel stride
    stride_an: tl.tensor,
    stride_ah: tl.tensor,
    stride_aw: tl.tensor,
    stride_ak: tl.tensor,
    stride_bk: tl.tensor,
    stride_bn: tl.tensor,
    stride_bg: tl.tensor,
    stride_on: tl.tensor,
    stride_oh: tl.tensor,
    stride_ow: tl.tensor,
    stride_oc: tl.tensor,
    stride_rn: tl.tensor,
    stride_rh: tl.tensor,
    stride_rw: tl.tensor,
    stride_rc: tl.tensor,
    # meta-parameters
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    STORE_PREACTIVATION: tl.constexpr,
    ACC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
) -> None:
    """``out[p, g*N + n] = act(sum_k a[p, g*K + k] * b[g][k, n] + bias + residual)``.

    Forward: ``a`` is the input, ``b[g][c, k] = weight[g*N + k, c]``. Grad of the
    input: ``a`` is grad_z, ``b[g][k, c] = weight[g*K + k, c]``, no epilogue.
    Program axis 0 walks (pixel tile, channel tile) pairs, grouped by GROUP_M
    pixel tiles so neighbouring programs share weight tiles in L2; axis 1 is
    the convolution group.
    """
    pid = tl.program_id(0)
    pid_g = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # pixel -> (image, row, column) in int64: offsets may pass 2**31 elements
    pix = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = pix < M
    mask_n = offs_n < N
    col = pix % width
    row = (pix // width) % height
    img = pix // width // height
    a_rows = img * stride_an + row * stride_ah + col * stride_aw  # (BLOCK_M,)
    chan_a = (pid_g * K).to(tl.int64)
    chan_out = pid_g.to(tl.int64) * N + offs_n  # (BLOCK_N,) global output channels
    offs_n64 = offs_n.to(tl.int64)
    b_group = b_ptr + pid_g.to(tl.int64) * stride_bg

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        kk64 = kk.to(tl.int64)
        a = tl.load(
            a_ptr + a_rows[:, None] + (chan_a + kk64)[None, :] * stride_ak,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_K)
        b = tl.load(
            b_group + kk64[:, None] * stride_bk + offs_n64[None, :] * stride_bn,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_N)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # epilogue: everything before the single store
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chan_out, mask=mask_n, other=0.0)
        acc += bias.to(ACC)[None, :]
    if HAS_RESIDUAL:
        r_rows = img * stride_rn + row * stride_rh + col * stride_rw
        res = tl.load(
            res_ptr + r_rows[:, None] + chan_out[None, :] * stride_rc, mask=mask, other=0.0
        )
        acc += res.to(ACC)
    o_rows = img * stride_on + row * stride_oh + col * stride_ow
    o_offs = o_rows[:, None] + chan_out[None, :] * stride_oc
    if STORE_PREACTIVATION:
        tl.store(pre_ptr + o_offs, acc.to(pre_ptr.dtype.element_ty), mask=mask)
    y = _activate(acc, ACT)
    tl.store(out_ptr + o_offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation_grad_kernel(
    gy_ptr: tl.tensor,
    saved_ptr: tl.tensor,
    gz_ptr: tl.tensor,
    numel: tl.tensor,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """``gz = gy * act'(saved)`` over three dense tensors with identical strides."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(ACC)
    s = tl.load(saved_ptr + offs, mask=mask, other=0.0).to(ACC)
    gz = gy * _activation_derivative(s, ACT)
    tl.store(gz_ptr + offs, gz.to(gz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _weight_grad_kernel(
    # pointers
    g_ptr: tl.tensor,
    x_ptr: tl.tensor,
    dw_ptr: tl.tensor,
    db_ptr: tl.tensor,
    # sizes: P pixels on an (images, height, width) grid; per group N outputs, C inputs
    height: tl.tensor,
    width: tl.tensor,
    P: tl.tensor,
    N: tl.tensor,
    C: tl.tensor,
    PIXELS_PER_SPLIT: tl.tensor,
    # strides, in elements; x's pixel strides already include the pixel stride
    stride_gn: tl.tensor,
    stride_gh: tl.tensor,
    stride_gw: tl.tensor,
    stride_gc: tl.tensor,
    stride_xn: tl.tensor,
    stride_xh: tl.tensor,
    stride_xw: tl.tensor,
    stride_xc: tl.tensor,
    stride_ws: tl.tensor,
    stride_wk: tl.tensor,
    stride_wc: tl.tensor,
    stride_bs: tl.tensor,
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
) -> None:
    """Partial sums over one chunk of pixels: ``dw[s, g*N + n, c] = sum_p gz[p, g*N + n] *
    x[p, g*C + c]`` and ``db[s, g*N + n] = sum_p gz[p, g*N + n]``.

    Program axes: (output tile, input tile) pairs, group, pixel chunk ``s``.
    Only the programs of the first input tile write ``db``.
    """
    pid = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_s = tl.program_id(2)
    num_pid_c = tl.cdiv(C, BLOCK_C)
    pid_n = pid // num_pid_c
    pid_c = pid % num_pid_c

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_P)
    mask_n = offs_n < N
    mask_c = offs_c < C
    chan_g = pid_g.to(tl.int64) * N + offs_n  # (BLOCK_N,) global output channels
    chan_x = pid_g.to(tl.int64) * C + offs_c  # (BLOCK_C,) global input channels

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC)
    p_start = pid_s * PIXELS_PER_SPLIT
    p_end = tl.minimum(p_start + PIXELS_PER_SPLIT, P)
    for p0 in range(p_start, p_end, BLOCK_P):
        pp = p0 + offs_p
        mask_p = pp < p_end
        pix = pp.to(tl.int64)
        col = pix % width
        row = (pix // width) % height
        img = pix // width // height
        g_cols = img * stride_gn + row * stride_gh + col * stride_gw  # (BLOCK_P,)
        x_rows = img * stride_xn + row * stride_xh + col * stride_xw  # (BLOCK_P,)
        gz = tl.load(
            g_ptr + chan_g[:, None] * stride_gc + g_cols[None, :],
            mask=mask_n[:, None] & mask_p[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_P)
        xs = tl.load(
            x_ptr + x_rows[:, None] + chan_x[None, :] * stride_xc,
            mask=mask_p[:, None] & mask_c[None, :],
            other=0.0,
        )  # (BLOCK_P, BLOCK_C)
        if UPCAST:
            gz = gz.to(tl.float32)
            xs = xs.to(tl.float32)
        acc = tl.dot(gz, xs, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(gz.to(ACC), axis=1)

    split = pid_s.to(tl.int64) * stride_ws
    dw_offs = chan_g[:, None] * stride_wk + offs_c.to(tl.int64)[None, :] * stride_wc
    tl.store(dw_ptr + split + dw_offs, acc, mask=mask_n[:, None] & mask_c[None, :])
    if HAS_BIAS:  # noqa: SIM102 (a compile-time test around a run-time one)
        if pid_c == 0:
            tl.store(db_ptr + pid_s.to(tl.int64) * stride_bs + chan_g, bias_acc, mask=mask_n)


# ------------------------------------------------------------------- configurations

INTERPRETED: bool = type(_gemm_kernel).__name__ == "InterpretedFunction"
"""True when the kernels were built by Triton's interpreter (``TRITON_INTERPRET=1``)."""


def _config(num_warps: int, num_stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# A 1x1 convolution's GEMM has M = N*H'*W' pixels (thousands to millions), and
# per group N = K/g outputs and a reduction over C/g inputs, both 16..2048.
# The list spans those channel counts: square 128x128 tiles for the wide,
# compute-bound layers; 128x64 / 64x128 for the 64-256 channel layers that
# dominate ResNet and MobileNet (memory-bound; deeper pipelines hide load
# latency); 128x256 for very wide outputs; small 64x32 / 32-deep tiles so
# narrow layers (16-48 channels, grouped convolutions) waste little on masks.
_GEMM_CONFIGS = [
    _config(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
    _config(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8),
    _config(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8),
    _config(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
    _config(4, 5, BLOCK_M=128, BLOCK_N=32, BLOCK_K=32, GROUP_M=8),
    _config(4, 5, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8),
]
# The weight gradient reduces over pixels: (K/g x C/g) output tiles, long
# pixel loops. Square tiles for wide layers, one narrow option each way.
_WGRAD_CONFIGS = [
    _config(8, 3, BLOCK_N=128, BLOCK_C=128, BLOCK_P=64),
    _config(4, 4, BLOCK_N=64, BLOCK_C=64, BLOCK_P=64),
    _config(4, 4, BLOCK_N=128, BLOCK_C=64, BLOCK_P=64),
    _config(4, 4, BLOCK_N=64, BLOCK_C=128, BLOCK_P=64),
    _config(4, 5, BLOCK_N=32, BLOCK_C=32, BLOCK_P=128),
]
# Fixed choices under torch.use_deterministic_algorithms(True), by element size:
# their pipelined tiles fit the shared memory of every GPU since sm_80 (under
# 100 KiB). Autotuning simply drops configurations that do not fit a dtype.
_GEMM_FIXED = {
    2: _GEMM_CONFIGS[2],
    4: _config(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8),
    8: _config(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8),
}
_WGRAD_FIXED = {
    2: _WGRAD_CONFIGS[1],
    4: _config(4, 3, BLOCK_N=64, BLOCK_C=64, BLOCK_P=32),
    8: _config(4, 3, BLOCK_N=64, BLOCK_C=64, BLOCK_P=32),
}
# Small tiles under the interpreter, which runs every program in NumPy.
_GEMM_INTERPRETED = _config(1, 1, BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2)
_WGRAD_INTERPRETED = _config(1, 1, BLOCK_N=16, BLOCK_C=16, BLOCK_P=16)
_ELEMENTWISE_BLOCK = 1024

_gemm_tuned = triton.autotune(
    configs=_GEMM_CONFIGS, key=["M", "N", "K", "stride_ak", "stride_oc", "HAS_RESIDUAL"]
)(_gemm_kernel)
_weight_grad_tuned = triton.autotune(
    configs=_WGRAD_CONFIGS, key=["P", "N", "C", "stride_gc", "stride_xc"]
)(_weight_grad_kernel)


def _launch(
    plain: Any,
    tuned: Any,
    fixed: triton.Config,
    interpreted: triton.Config,
    grid: Callable[[dict[str, Any]], tuple[int, ...]],
    *args: Any,
    **meta: Any,
) -> None:
    """Run a kernel: autotuned normally, one fixed configuration when interpreted or
    when PyTorch's deterministic mode is on."""
    if INTERPRETED or torch.are_deterministic_algorithms_enabled():
        config = interpreted if INTERPRETED else fixed
        blocks = dict(config.kwargs)
        plain[grid(blocks)](
            *args,
            **meta,
            **blocks,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    else:
        tuned[grid](*args, **meta)


# ------------------------------------------------------------------------ launchers


def unsupported(x: torch.Tensor, needs_grad: bool) -> str | None:
    """Why the Triton kernels cannot run on ``x``, or ``None`` when they can."""
    if x.dtype not in _DTYPES:
        return f"the Triton kernels take float16, bfloat16, float32 or float64, x is {x.dtype}"
    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu":
        if INTERPRETED:
            return None
        return (
            "x is a CPU tensor and the Triton kernels were compiled for the GPU; set "
            "TRITON_INTERPRET=1 before onebyone.kernels.triton is first imported to run "
            "them through Triton's interpreter"
        )
    return f"the Triton kernels run CUDA tensors (or interpreted, CPU ones), x is on {x.device}"


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _accumulator(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if gemm.is_channels_last(x) else torch.contiguous_format


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRETED and dtype == torch.bfloat16


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def _pixel_grid(
    height: int, width: int, *planes: tuple[int, int, int] | None
) -> tuple[int, int, list[tuple[int, int, int]]]:
    """The pixel grid and each tensor's ``(image, row, column)`` strides in elements.

    When every tensor stores its ``(height, width)`` plane densely (row stride =
    width x column stride, true for NCHW and NHWC at pixel stride 1) the grid
    becomes a single row of ``height*width`` pixels: one index division less per
    tile, and for NCHW the compiler then sees runs of consecutive pixels and
    vectorises their loads. ``None`` stands for an absent tensor.
    """
    present = [p for p in planes if p is not None]
    if height > 1 and all(sh == width * sw for _, sh, sw in present):
        flat = [(0, 0, 0) if p is None else (p[0], 0, p[2]) for p in planes]
        return 1, height * width, flat
    return height, width, [(0, 0, 0) if p is None else p for p in planes]


def _pixel_gemm(
    a: torch.Tensor,
    a_step: tuple[int, int],
    b: torch.Tensor,
    b_transposed: bool,
    out: torch.Tensor,
    out_step: tuple[int, int],
    *,
    groups: int,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    preactivation: torch.Tensor | None = None,
    activation: str | None = None,
) -> None:
    """``out = act(a @ b + bias + residual)`` per group over a grid of pixels.

    ``a`` is ``(N, G*Kg, Ha, Wa)`` read at rows ``h*a_step[0]`` and columns
    ``w*a_step[1]``; ``out`` is ``(N, G*Ng, Ho, Wo)`` written at ``h*out_step[0]``,
    ``w*out_step[1]``; the pixel grid is ``(N, ceil(Ha/a_step[0]), ...)``. ``b`` is the
    2-D weight; ``b_transposed`` says it is used as ``weight[g-block].T`` (forward)
    rather than ``weight[g-block]`` (grad of the input).
    """
    n = a.shape[0]
    height = pointwise_output_size(a.shape[2], a_step[0])
    width = pointwise_output_size(a.shape[3], a_step[1])
    m = n * height * width
    k_red = a.shape[1] // groups
    n_out = out.shape[1] // groups
    san, sac, sah, saw = a.stride()
    son, soc, soh, sow = out.stride()
    r_strides = residual.stride() if residual is not None else (0, 0, 0, 0)
    height, width, (a_pix, o_pix, r_pix) = _pixel_grid(
        height,
        width,
        (san, sah * a_step[0], saw * a_step[1]),
        (son, soh * out_step[0], sow * out_step[1]),
        (r_strides[0], r_strides[2], r_strides[3]) if residual is not None else None,
    )
    if b_transposed:  # b[g][c, k] = weight[g*N + k, c]
        sbk, sbn, sbg = b.stride(1), b.stride(0), n_out * b.stride(0)
    else:  # b[g][k, c] = weight[g*K + k, c]
        sbk, sbn, sbg = b.stride(0), b.stride(1), k_red * b.stride(0)

    def grid(meta: dict[str, Any]) -> tuple[int, ...]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]), groups)

    _launch(
        _gemm_kernel,
        _gemm_tuned,
        _GEMM_FIXED[a.element_size()],
        _GEMM_INTERPRETED,
        grid,
        a,
        b,
        out,
        bias if bias is not None else out,
        residual if residual is not None else out,
        preactivation if preactivation is not None else out,
        height,
        width,
        m,
        n_out,
        k_red,
        *a_pix,
        sac,
        sbk,
        sbn,
        sbg,
        *o_pix,
        soc,
        *r_pix,
        r_strides[1],
        ACT=_ACTIVATION_CODES[activation],
        HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None,
        STORE_PREACTIVATION=preactivation is not None,
        ACC=_accumulator(a.dtype),
        DOT_PRECISION=_dot_precision(a.dtype),
        UPCAST=_upcast(a.dtype),
    )


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: tuple[int, int],
    groups: int,
    activation: str | None,
    keep_preactivation: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y, z)``: the output and, when asked, the pre-activation ``z`` (same layout)."""
    n, _, h, w = x.shape
    k = weight.shape[0]
    shape = (n, k, pointwise_output_size(h, stride[0]), pointwise_output_size(w, stride[1]))
    fmt = _memory_format(x)
    y = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt)
    z = torch.empty_like(y) if keep_preactivation else None
    _pixel_gemm(
        x,
        stride,
        weight,
        True,
        y,
        (1, 1),
        groups=groups,
        bias=bias,
        residual=residual,
        preactivation=z,
        activation=activation,
    )
    return y, z


def _activation_grad(
    grad_y: torch.Tensor, saved: torch.Tensor | None, activation: str | None
) -> torch.Tensor:
    """``grad_z = grad_y * act'``; ``saved`` is z or y (see ``_NEEDS_PREACTIVATION``)."""
    if activation is None or saved is None:
        return grad_y  # read through its strides by the GEMMs, whatever they are
    if grad_y.stride() != saved.stride():  # the kernel walks both as one flat array
        grad_y = torch.empty_like(saved).copy_(grad_y)
    grad_z = torch.empty_like(saved)
    numel = saved.numel()
    _activation_grad_kernel[(triton.cdiv(numel, _ELEMENTWISE_BLOCK),)](
        grad_y,
        saved,
        grad_z,
        numel,
        ACT=_ACTIVATION_CODES[activation],
        ACC=_accumulator(saved.dtype),
        BLOCK=_ELEMENTWISE_BLOCK,
    )
    return grad_z


def _input_grad(
    grad_z: torch.Tensor,
    weight: torch.Tensor,
    x_shape: torch.Size,
    x_format: torch.memory_format,
    stride: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``grad_x``: ``grad_z @ W`` on the stride grid, zero at the skipped pixels."""
    grad_x = torch.empty(x_shape, device=grad_z.device, dtype=weight.dtype, memory_format=x_format)
    if stride != (1, 1):
        grad_x.zero_()  # the kernel writes only the pixels the convolution read
    _pixel_gemm(grad_z, (1, 1), weight, False, grad_x, stride, groups=groups)
    return grad_x


def _weight_grad(
    grad_z: torch.Tensor,
    x: torch.Tensor,
    stride: tuple[int, int],
    groups: int,
    with_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grad_weight, grad_bias)``: pixel chunks reduced in a fixed order."""
    n, k, height, width = grad_z.shape
    cg = x.shape[1] // groups
    kg = k // groups
    pixels = n * height * width
    if INTERPRETED or x.device.type != "cuda":
        split = 1
    else:  # enough chunks for about two programs per multiprocessor
        tiles = groups * triton.cdiv(kg, 64) * triton.cdiv(cg, 64)
        wanted = triton.cdiv(2 * _multiprocessors(x.device.index or 0), tiles)
        split = max(1, min(wanted, triton.cdiv(pixels, 1024)))
    per_split = triton.cdiv(pixels, split)
    split = triton.cdiv(pixels, per_split)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw = torch.empty((split, k, cg), device=x.device, dtype=work)
    db = torch.empty((split, k), device=x.device, dtype=work) if with_bias else dw
    sgn, sgc, sgh, sgw = grad_z.stride()
    sxn, sxc, sxh, sxw = x.stride()
    height, width, (g_pix, x_pix) = _pixel_grid(
        height, width, (sgn, sgh, sgw), (sxn, sxh * stride[0], sxw * stride[1])
    )

    def grid(meta: dict[str, Any]) -> tuple[int, ...]:
        tiles = triton.cdiv(kg, meta["BLOCK_N"]) * triton.cdiv(cg, meta["BLOCK_C"])
        return (tiles, groups, split)

    _launch(
        _weight_grad_kernel,
        _weight_grad_tuned,
        _WGRAD_FIXED[x.element_size()],
        _WGRAD_INTERPRETED,
        grid,
        grad_z,
        x,
        dw,
        db,
        height,
        width,
        pixels,
        kg,
        cg,
        per_split,
        *g_pix,
        sgc,
        *x_pix,
        sxc,
        dw.stride(0),
        dw.stride(1),
        dw.stride(2),
        db.stride(0),
        HAS_BIAS=with_bias,
        ACC=_accumulator(x.dtype),
        DOT_PRECISION=_dot_precision(x.dtype),
        UPCAST=_upcast(x.dtype),
    )
    grad_weight = dw.sum(0).to(x.dtype)  # (split, K, C/g) -> (K, C/g), fixed order
    grad_bias = db.sum(0).to(x.dtype) if with_bias else None
    return grad_weight, grad_bias


class TritonConv1x1(torch.autograd.Function):
    """``act(conv1x1(x) + bias + residual)`` with Triton forward and backward kernels."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        residual: torch.Tensor | None,
        stride: tuple[int, int],
        groups: int,
        activation: str | None,
    ) -> torch.Tensor:
        keep_z = activation in _NEEDS_PREACTIVATION
        with _on_device(x):
            y, z = _forward(x, weight, bias, residual, stride, groups, activation, keep_z)
        saved = z if keep_z else (y if activation is not None else None)
        need_x, need_w = ctx.needs_input_grad[:2]
        # x is needed only for the weight's gradient, the weight only for x's
        ctx.save_for_backward(x if need_w else None, weight if need_x else None, saved)
        ctx.x_shape, ctx.x_format = x.shape, _memory_format(x)
        ctx.stride, ctx.groups, ctx.activation = stride, groups, activation
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, saved = ctx.saved_tensors
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b = None
        with _on_device(grad_y):
            grad_z = _activation_grad(grad_y, saved, ctx.activation)
            if need_x:
                grad_x = _input_grad(
                    grad_z, weight, ctx.x_shape, ctx.x_format, ctx.stride, ctx.groups
                )
            if need_w:
                grad_w, grad_b = _weight_grad(grad_z, x, ctx.stride, ctx.groups, need_b)
        if need_b and grad_b is None:  # frozen weight, trained bias
            acc = torch.float64 if grad_z.dtype == torch.float64 else torch.float32
            grad_b = grad_z.sum(dim=(0, 2, 3), dtype=acc).to(grad_z.dtype)
        grad_r = grad_z if need_r else None
        return grad_x, grad_w, grad_b, grad_r, None, None, None


def conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, int],
    groups: int,
    activation: str | None,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """``act(conv1x1(x) + bias + residual)`` in one Triton kernel (and its backward).

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))``; the output is
        channels-last exactly when ``x`` is. Empty inputs go through the GEMM path.
    """
    if x.numel() == 0:
        return gemm.conv1x1(
            x, weight, bias, stride=stride, groups=groups, activation=activation, residual=residual
        )
    if records_grad(x, weight, bias, residual):
        out: torch.Tensor = TritonConv1x1.apply(
            x, weight, bias, residual, stride, groups, activation
        )
        return out
    with _on_device(x):
        return _forward(x, weight, bias, residual, stride, groups, activation, False)[0]
