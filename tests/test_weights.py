"""convert_weight between the torch, keras and linear layouts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import onebyone as obo
from onebyone.numpy import conv1x1

SHAPES = {"linear": (8, 3), "torch": (8, 3, 1, 1), "keras": (1, 1, 3, 8)}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(SHAPES, SHAPES)))
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_round_trip_and_shapes(src, dst, lib):
    rng = np.random.default_rng(0)
    linear = rng.standard_normal((8, 3))
    w = obo.convert_weight(linear, "linear", src)
    if lib == "torch":
        w = torch.from_numpy(w)
    out = obo.convert_weight(w, src, dst)
    assert tuple(out.shape) == SHAPES[dst]
    assert type(out) is type(w)
    back = obo.convert_weight(out, dst, "linear")
    np.testing.assert_array_equal(np.asarray(back), linear)
    if isinstance(out, torch.Tensor):
        assert out.is_contiguous() and out.data_ptr() != w.data_ptr()
    else:
        assert out.flags.c_contiguous and not np.shares_memory(out, w)


def test_keras_kernel_computes_the_same_convolution():
    rng = np.random.default_rng(1)
    x_nhwc = rng.standard_normal((2, 5, 4, 3))
    keras_kernel = rng.standard_normal((1, 1, 3, 6))  # (kh, kw, C, K) as Keras stores it
    ref = np.einsum("nhwc,ck->nhwk", x_nhwc, keras_kernel[0, 0])
    w = obo.convert_weight(keras_kernel, "keras", "linear")
    np.testing.assert_allclose(conv1x1(x_nhwc, w, data_format="NHWC"), ref, rtol=1e-12)


def test_input_not_modified():
    w = torch.randn(1, 1, 3, 8)
    before = w.clone()
    out = obo.convert_weight(w, "keras", "keras")
    out.zero_()
    assert torch.equal(w, before)
