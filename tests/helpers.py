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


class Tokens(torch.nn.Module):
    """A ViT-like stem whose parameters are read the ways timm models read them.

    ``embed`` runs as a layer; ``cls_token`` is read only through ``expand``
    and ``cat``, ``pos_embed`` by an add, ``bias_table`` through indexing (as
    Swin's relative position bias), ``register`` goes through ``expand`` and
    ``cat`` into the output and no counted call; ``unread`` is only looked at
    for its shape, so the pass never reads it.
    """

    def __init__(self, dim: int = 8, tokens: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Linear(dim, dim)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.bias_table = torch.nn.Parameter(torch.randn(3, heads))
        self.register_buffer("index", torch.randint(0, 3, (tokens + 1, tokens + 1)))
        self.register = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.unread = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, tokens, dim)
        n, _, dim = x.shape
        if self.unread.shape[0] != dim:
            raise ValueError("dim mismatch")
        x = self.embed(x)
        cls = self.cls_token.expand(n, -1, -1)  # (N, 1, dim)
        x = torch.cat((cls, x), dim=1) + self.pos_embed  # (N, T, dim)
        t = x.shape[1]
        q = x.view(n, t, self.heads, dim // self.heads).transpose(1, 2)  # (N, heads, T, d)
        bias = self.bias_table[self.index].permute(2, 0, 1)  # (heads, T, T)
        y = F.scaled_dot_product_attention(q, q, q, attn_mask=bias)  # (N, heads, T, d)
        y = y.transpose(1, 2).reshape(n, t, dim)  # (N, T, dim)
        return torch.cat((self.register.expand(n, -1, -1), y), dim=1)  # (N, T + 1, dim)
