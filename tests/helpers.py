"""The one comparison helper every test uses, and the per-dtype tolerances."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import onebyone as obo

# (dtype, atol, rtol): float16/bfloat16 round every product's output to 11/8 bits.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (5e-2, 2e-2),
    torch.float16: (1e-2, 5e-3),
}


# The epilogue's activations, written independently of onebyone's own table.
ACTS: dict[str | None, Any] = {
    None: lambda z: z,
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "silu": F.silu,
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}
assert set(ACTS) - {None} == set(obo.ACTIVATIONS)


def to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64).numpy()
    return np.asarray(a)


def assert_close(actual: Any, expected: Any, dtype: torch.dtype = torch.float32) -> None:
    """Values close within ``dtype``'s tolerance, shapes identical, NaN where NaN."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    atol, rtol = TOLERANCES[dtype]
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
