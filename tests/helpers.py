"""What the tests share: the comparison helper and per-dtype tolerances, the independent
reference of the op, and norms with random statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import onebyone as obo
import onebyone.numpy as onp

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


def reference(x, w, b, stride, groups, activation=None, residual=None):
    """The NumPy op in float64, then the epilogue in float64 torch (on the CPU)."""
    y = onp.conv1x1(
        x.detach().cpu().double().numpy(),
        w.detach().cpu().double().reshape(w.shape[0], -1).numpy(),
        None if b is None else b.detach().cpu().double().numpy(),
        stride=stride,
        groups=groups,
    )
    z = torch.from_numpy(np.asarray(y))
    if residual is not None:
        z = z + residual.detach().cpu().double()
    return ACTS[activation](z)


NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm random statistics and affine parameters (so folding one is
    never the identity); returns ``model.eval()``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORM_TYPES) and m.running_mean is not None:
                assert m.running_var is not None
                k = m.num_features
                m.running_mean.copy_(torch.randn(k, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(k, generator=g) * 1.5 + 0.25)
                if m.weight is not None and m.bias is not None:
                    m.weight.copy_(torch.rand(k, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(k, generator=g) * 0.3)
    return model.eval()


def calibrate_norms(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random affine terms, then statistics measured on ``x`` and perturbed at random;
    returns ``model.eval()``.

    Like a trained model's, every norm then sees activations of order one. Statistics
    drawn independently of the activations (``randomize_norms``) let deep networks'
    activations grow layer after layer (RegNetY-016's outputs reach 1e5 and its float32
    is 6e-4 off float64; tf_efficientnetv2_b0's is 0.3 off on one input): such an
    instance is no reference for an engine. A norm initialised with zero scale (the
    last of a residual branch) gets a small one, as its initialisation meant, never
    zero: folding it is never trivial.
    """
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES) and m.running_mean is not None]
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for m in norms:
            if m.weight is not None and m.bias is not None:
                k = m.num_features
                small = 0.1 if bool((m.weight == 0).all()) else 1.0
                m.weight.copy_((torch.rand(k, generator=g) * 0.6 + 0.7) * small)
                m.bias.copy_(torch.randn(k, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: the statistics of x itself
        model.train()
        model(x)
        for m, momentum in zip(norms, momenta, strict=True):
            assert m.running_var is not None and m.running_mean is not None
            m.momentum = momentum
            k = m.num_features
            m.running_mean.add_(torch.randn(k, generator=g) * 0.2 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(k, generator=g) * 0.6 + 0.7)
    return model.eval()


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
