"""The one comparison helper every test uses, and the per-dtype tolerances."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# (dtype, atol, rtol): float16/bfloat16 round every product's output to 11/8 bits.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (5e-2, 2e-2),
    torch.float16: (1e-2, 5e-3),
}


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
