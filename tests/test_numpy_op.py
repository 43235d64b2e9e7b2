"""The NumPy op against independent paths: a per-pixel loop, einsum and torch's Conv2d."""

from __future__ import annotations

import subprocess
import sys

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from onebyone.numpy import conv1x1

from helpers import assert_close


def pixel_loop(x, w, b, stride, groups):
    """The definition, one pixel and one filter at a time (tiny inputs only)."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    sh, sw = stride
    cg, kg = c // groups, k // groups
    ho, wo = -(-h // sh), -(-wd // sw)
    out = np.zeros((n, k, ho, wo), dtype=np.float64)
    for i in range(n):
        for f in range(k):
            g = f // kg
            for r in range(ho):
                for q in range(wo):
                    pixel = x[i, g * cg : (g + 1) * cg, r * sh, q * sw]
                    out[i, f, r, q] = float(np.dot(w[f], pixel)) + (0.0 if b is None else b[f])
    return out


CASES = [
    # (N, C, K, H, W, stride, groups)
    (2, 6, 4, 7, 5, (1, 1), 1),
    (1, 8, 6, 5, 5, (2, 2), 2),
    (3, 4, 8, 3, 4, (2, 1), 4),
    (2, 6, 6, 4, 3, (1, 2), 6),  # depthwise
]


@pytest.mark.parametrize(("n", "c", "k", "h", "w", "stride", "groups"), CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_pixel_loop_and_conv2d(n, c, k, h, w, stride, groups, with_bias):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c // groups))
    b = rng.standard_normal(k) if with_bias else None
    y = conv1x1(x, wt, b, stride=stride, groups=groups)
    assert_close(y, pixel_loop(x, wt, b, stride, groups), torch.float64)
    ref = F.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(wt).reshape(k, c // groups, 1, 1),
        None if b is None else torch.from_numpy(b),
        stride=stride,
        groups=groups,
    )
    assert_close(y, ref, torch.float64)
    yh = conv1x1(x.transpose(0, 2, 3, 1), wt, b, stride=stride, groups=groups, data_format="NHWC")
    assert_close(yh.transpose(0, 3, 1, 2), ref, torch.float64)


def test_odd_layer_72_to_80():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 72, 7, 5)).astype(np.float32)
    wt = rng.standard_normal((80, 36)).astype(np.float32)
    y = conv1x1(x, wt, stride=2, groups=2)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt)[:, :, None, None], stride=2, groups=2)
    assert y.dtype == np.float32
    assert_close(y, ref)


def test_unbatched_and_4d_weight():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 3))
    w4 = rng.standard_normal((2, 5, 1, 1))
    y = conv1x1(x, w4)
    assert y.shape == (2, 4, 3)
    assert_close(y, np.einsum("kc,chw->khw", w4[:, :, 0, 0], x), torch.float64)
    yh = conv1x1(x.transpose(1, 2, 0), w4, data_format="nhwc")
    assert yh.shape == (4, 3, 2)


def test_integers_are_exact():
    x = np.full((1, 3, 2, 2), 100, dtype=np.int8)
    w = np.full((2, 3), 100, dtype=np.int8)
    y = conv1x1(x, w, np.array([1, 2], dtype=np.int8))
    assert y.dtype == np.int64
    assert (y[0, 0] == 30001).all() and (y[0, 1] == 30002).all()
    big = np.array([[[[2**40]]]], dtype=np.int64)
    assert conv1x1(big, np.array([[3]]))[0, 0, 0, 0] == 3 * 2**40


def test_dtype_follows_result_type():
    x = np.ones((1, 2, 2, 2), dtype=np.float32)
    assert conv1x1(x, np.ones((3, 2), dtype=np.float32)).dtype == np.float32
    assert conv1x1(x, np.ones((3, 2), dtype=np.float64)).dtype == np.float64
    h = conv1x1(x.astype(np.float16), np.ones((3, 2), dtype=np.float16))
    assert h.dtype == np.float16 and (h == 2).all()


def test_empty_batch_and_empty_pixels():
    w = np.ones((3, 2))
    assert conv1x1(np.ones((0, 2, 4, 4)), w).shape == (0, 3, 4, 4)
    assert conv1x1(np.ones((2, 2, 0, 4)), w).shape == (2, 3, 0, 4)
    assert conv1x1(np.ones((2, 0, 4, 2)), w, data_format="NHWC").shape == (2, 0, 4, 3)


def test_nan_and_inf_propagate_like_conv2d():
    x = np.ones((1, 2, 2, 2))
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 1, 1] = np.inf
    w = np.array([[1.0, 1.0], [1.0, 0.0]])
    y = conv1x1(x, w)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w)[:, :, None, None])
    np.testing.assert_array_equal(np.isnan(y), torch.isnan(ref).numpy())
    np.testing.assert_array_equal(np.isinf(y), torch.isinf(ref).numpy())


def test_inputs_never_modified():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((4, 4)), rng.standard_normal(4)
    copies = [a.copy() for a in (x, w, b)]
    conv1x1(x, w, b, stride=2)
    conv1x1(x.transpose(0, 2, 3, 1), w, b, data_format="NHWC")
    for a, c in zip((x, w, b), copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_grouped_is_concat_of_per_group():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 12, 3, 5))
    w = rng.standard_normal((9, 4))
    parts = [conv1x1(x[:, 4 * g : 4 * g + 4], w[3 * g : 3 * g + 3]) for g in range(3)]
    assert_close(conv1x1(x, w, groups=3), np.concatenate(parts, axis=1), torch.float64)


def test_never_imports_torch():
    # onebyone/__init__ imports torch for the PyTorch op; load the NumPy modules on their own.
    probe = (
        "import sys, types, importlib.util, pathlib\n"
        "root = pathlib.Path(importlib.util.find_spec('onebyone').origin).parent\n"
        "pkg = types.ModuleType('onebyone'); pkg.__path__ = [str(root)]\n"
        "sys.modules['onebyone'] = pkg\n"
        "import onebyone.numpy, onebyone.weights\n"
        "import numpy as np\n"
        "onebyone.numpy.conv1x1(np.ones((1, 2, 2, 2)), np.ones((1, 2)))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 3),
    groups=st.sampled_from([1, 2, 3]),
    cg=st.integers(1, 5),
    kg=st.integers(1, 5),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    nhwc=st.booleans(),
)
def test_property_matches_einsum(n, groups, cg, kg, h, w, sh, sw, nhwc):
    rng = np.random.default_rng(n * 1000 + h * 10 + w)
    c, k = cg * groups, kg * groups
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, cg))
    b = rng.standard_normal(k)
    xs = x[:, :, ::sh, ::sw].reshape(n, groups, cg, *x[:, :, ::sh, ::sw].shape[2:])
    ref = np.einsum("gkc,ngchw->ngkhw", wt.reshape(groups, kg, cg), xs).reshape(
        n, k, *xs.shape[3:]
    ) + b.reshape(1, k, 1, 1)
    if nhwc:
        y = conv1x1(x.transpose(0, 2, 3, 1), wt, b, stride=(sh, sw), groups=groups,
                    data_format="NHWC").transpose(0, 3, 1, 2)  # fmt: skip
    else:
        y = conv1x1(x, wt, b, stride=(sh, sw), groups=groups)
    assert_close(y, ref, torch.float64)
