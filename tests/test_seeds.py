"""The worked examples of both seed documents, computed by the library."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import onebyone as obo
from onebyone.explain import SEED_KERNEL, SEED_MAPS, SEED_PRINTED_OUTPUT, worked_example
from onebyone.nn import Conv1x1
from onebyone.numpy import conv1x1


def test_math_view_output_and_the_seeds_typo():
    ex = worked_example()
    assert ex.output.shape == (6, 6)  # the seed calls it 5x5; a 1x1 keeps 6x6
    # T[0,0] = 1*0.1 + 3*0.2 + 1*0.4 and T[1,0] = 4*0.1 + 3*0.2 + 3*0.4, as the seed spells out
    assert np.isclose(ex.output[0, 0], 1.1) and np.isclose(ex.output[1, 0], 2.2)
    independent = 0.1 * SEED_MAPS[0] + 0.2 * SEED_MAPS[1] + 0.4 * SEED_MAPS[2]
    np.testing.assert_allclose(ex.output, independent, rtol=1e-12)
    # Every printed value agrees to one decimal except T[5,2]: printed 0.6, the sum is 4.6.
    assert ex.mismatches == [(5, 2)]
    assert SEED_PRINTED_OUTPUT[5, 2] == 0.6 and np.isclose(ex.output[5, 2], 4.6)
    assert ex.spelled_sum(5, 2) == "4*0.1 + 7*0.2 + 7*0.4 = 4.60"


def test_math_view_with_the_torch_op():
    x = torch.from_numpy(SEED_MAPS)
    y = obo.conv1x1(x, torch.from_numpy(SEED_KERNEL))
    np.testing.assert_allclose(y[0].numpy(), worked_example().output, rtol=1e-12)


def test_naive_view_fusion_of_two_maps():
    """Seed 000: feature map 1 + feature map 2 of a digit -> one output map."""
    a, b = 1.0, 2.0
    fm1 = np.array([[a, a, a], [0, 0, 0], [a, a, a], [0, 0, 0], [a, a, a]])
    two = np.zeros((5, 3))
    two[1, 2] = b
    two[3, 0] = b
    three = np.zeros((5, 3))
    three[1, 2] = b
    three[3, 2] = b
    ones = np.array([[1.0, 1.0]])  # a 1x1 kernel summing the two maps
    out2 = conv1x1(np.stack([fm1, two]), ones)[0]
    out3 = conv1x1(np.stack([fm1, three]), ones)[0]
    np.testing.assert_array_equal(out2, fm1 + two)
    assert out2[3, 0] == b and out3[3, 0] == 0  # the pixel that tells a 2 from a 3


def test_dimensionality_reduction_50_to_20_at_600x600():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 600, 600), dtype=np.float32)
    w = rng.standard_normal((20, 50), dtype=np.float32)
    y = conv1x1(x, w)
    assert y.shape == (20, 600, 600)
    np.testing.assert_allclose(y[:, 123, 456], w @ x[:, 123, 456], rtol=1e-4, atol=1e-4)
    # "50 x 1x1 x 20": the layer holds 1,000 weights
    assert sum(p.numel() for p in Conv1x1(50, 20, bias=False).parameters()) == 1000


def test_keras_examples_of_seed_001():
    g = torch.Generator().manual_seed(0)
    # Example 1: (1, 28, 28, 64) -> Conv2D(32, 1x1, relu) -> (1, 28, 28, 32); NCHW here.
    x = torch.randn(1, 64, 28, 28, generator=g)
    w1, b1 = torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
    y = obo.conv1x1(x, w1, b1, activation="relu")
    assert y.shape == (1, 32, 28, 28)
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w1[:, :, None, None], b1)))
    # Example 2: concat(32 maps, 64 maps) -> Conv2D(64, 1x1) -> 64 maps.
    x1, x2 = torch.randn(1, 32, 28, 28, generator=g), torch.randn(1, 64, 28, 28, generator=g)
    w2 = torch.randn(64, 96, generator=g)
    fused = obo.conv1x1(torch.cat([x1, x2], dim=1), w2)
    split = obo.conv1x1(x1, w2[:, :32].contiguous()) + obo.conv1x1(x2, w2[:, 32:].contiguous())
    torch.testing.assert_close(fused, split, rtol=1e-4, atol=1e-4)
    assert fused.shape == (1, 64, 28, 28)
    # Example 3: 64 -> 1x1 32 -> 3x3 32 (same) -> 1x1 64.
    w3 = torch.randn(32, 32, 3, 3, generator=g)
    w4 = torch.randn(64, 32, generator=g)
    h = F.relu(F.conv2d(y, w3, padding=1))
    out = obo.conv1x1(h, w4, activation="relu")
    assert out.shape == (1, 64, 28, 28)
    torch.testing.assert_close(out, F.relu(F.conv2d(h, w4[:, :, None, None])))
    # Keras' model.summary() counts 2,080 + 9,248 + 2,112 parameters for these three layers.
    layers = [Conv1x1(64, 32), nn.Conv2d(32, 32, 3, padding=1), Conv1x1(32, 64)]
    assert [sum(p.numel() for p in m.parameters()) for m in layers] == [2080, 9248, 2112]
