"""Low-rank splits of convolution weights: the bottleneck as tensor math.

A 1x1 convolution ``C -> K`` is the matrix ``W`` of shape ``(K, C)`` applied at
every pixel. Its truncated SVD ``W ~ B @ A`` with ``A: (r, C)`` and ``B: (K, r)``
is two thin 1x1 convolutions ``C -> r -> K``: ``r * (C + K)`` MACs per pixel
instead of ``C * K``.

A ``k x k`` convolution ``C -> K`` has the 4-D weight ``W: (K, C, kh, kw)``.
Its Tucker-2 decomposition on the two channel modes,
``W ~ G x_0 U_out x_1 U_in`` with orthonormal ``U_out: (K, r_out)``,
``U_in: (C, r_in)`` and the core ``G: (r_out, r_in, kh, kw)``, is exactly a
bottleneck: a 1x1 convolution ``C -> r_in`` (``U_in^T``), the ``k x k`` core
``r_in -> r_out``, and a 1x1 convolution ``r_out -> K`` (``U_out``).

Because the factors are orthonormal, the squared Frobenius error of either
split is the energy it discards: ``||W||^2 - ||G||^2`` (the discarded singular
values squared, for the SVD). ``energy_kept`` is ``||G||^2 / ||W||^2``.

Nothing here touches modules; ``onebyone.transforms.compress`` does the surgery.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onebyone import _checks

__all__ = [
    "SVDSplit",
    "TuckerSplit",
    "svd_energy",
    "svd_split",
    "tucker2",
    "tucker2_energy",
]


@dataclass(frozen=True)
class SVDSplit:
    """``W ~ second @ first``: ``first: (r, C)`` then ``second: (K, r)``.

    ``energy_kept`` is the share of ``||W||_F^2`` the rank-``r`` product keeps.
    """

    first: torch.Tensor
    second: torch.Tensor
    energy_kept: float

    @property
    def rank(self) -> int:
        return int(self.first.shape[0])


@dataclass(frozen=True)
class TuckerSplit:
    """``W ~ G x_0 U_out x_1 U_in``: ``first = U_in^T: (r_in, C)``, ``core = G:
    (r_out, r_in, kh, kw)``, ``last = U_out: (K, r_out)``.

    ``energy_kept`` is ``||G||^2 / ||W||^2``.
    """

    first: torch.Tensor
    core: torch.Tensor
    last: torch.Tensor
    energy_kept: float

    @property
    def ranks(self) -> tuple[int, int]:
        """``(r_out, r_in)``."""
        return int(self.core.shape[0]), int(self.core.shape[1])


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise _checks.invalid("weight", "a floating torch.Tensor", type(weight).__name__,
                              kind=TypeError)  # fmt: skip
    if weight.dim() == 4 and weight.shape[2:] == (1, 1):
        return weight.reshape(weight.shape[0], weight.shape[1])  # (K, C, 1, 1) -> (K, C)
    if weight.dim() != 2:
        raise _checks.invalid("weight", "a (K, C) or (K, C, 1, 1) tensor", tuple(weight.shape))
    return weight


def _kernel(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise _checks.invalid("weight", "a floating torch.Tensor", type(weight).__name__,
                              kind=TypeError)  # fmt: skip
    if weight.dim() != 4:
        raise _checks.invalid("weight", "a (K, C, kh, kw) tensor", tuple(weight.shape))
    return weight


def _rank(argument: str, value: object, full: int) -> int:
    r = _checks.positive_int(argument, value)
    if r > full:
        raise _checks.invalid(argument, f"a rank between 1 and {full}", value)
    return r


def _gram_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared singular values (descending) and left singular vectors of ``a`` (float64),
    from the eigendecomposition of ``a @ a.T``: far faster than an SVD on CPUs where
    LAPACK's SVD is slow, and accurate in float64 for what is needed here (energies and
    leading subspaces).

    Shape:
        ``(m, n)`` -> ``(m,)``, ``(m, m)``.
    """
    values, vectors = torch.linalg.eigh(a @ a.T)  # ascending
    return values.flip(0).clamp(min=0), vectors.flip(1)


def svd_energy(weight: torch.Tensor) -> torch.Tensor:
    """Share of ``||W||_F^2`` kept at each rank: entry ``r - 1`` is rank ``r``'s.

    Shape:
        ``(K, C)`` or ``(K, C, 1, 1)`` -> ``(min(K, C),)``, non-decreasing, ending at 1.

    Example:
        >>> svd_energy(torch.diag(torch.tensor([3.0, 1.0])))
        tensor([0.9000, 1.0000])
    """
    w = _matrix(weight).detach().double()
    s2, _ = _gram_eigh(w if w.shape[0] <= w.shape[1] else w.T)
    total = s2.sum()
    if total == 0:
        return torch.ones_like(s2).float()
    return (torch.cumsum(s2, 0) / total).clamp(max=1.0).float()


def svd_split(weight: torch.Tensor, rank: int) -> SVDSplit:
    """The rank-``r`` truncated SVD of a 1x1 weight as two thin weights.

    The singular values are shared evenly (``sqrt(S)`` on each side) so both
    factors have comparable scales for fine-tuning. Computed in float64, returned
    in the weight's dtype.

    Shape:
        ``(K, C)`` or ``(K, C, 1, 1)`` -> ``first: (r, C)``, ``second: (K, r)``.

    Example:
        >>> w = torch.randn(8, 6)
        >>> s = svd_split(w, 6)
        >>> torch.allclose(s.second @ s.first, w, atol=1e-5), round(s.energy_kept, 6)
        (True, 1.0)
    """
    w = _matrix(weight)
    r = _rank("rank", rank, min(w.shape))
    a = w.detach().double()
    tall = a.shape[0] > a.shape[1]
    s2, u = _gram_eigh(a.T if tall else a)  # u: the smaller side's singular vectors
    root = s2[:r].sqrt().sqrt()  # sqrt(S)
    safe = root.clamp(min=float(root[0]) * 1e-12 if len(root) and root[0] > 0 else 1e-300)
    if tall:  # W^T W = V S^2 V^T: first = sqrt(S) V^T, second = W V / sqrt(S)
        first = root[:, None] * u[:, :r].T  # (r, C)
        second = (a @ u[:, :r]) / safe[None, :]  # (K, r)
    else:  # W W^T = U S^2 U^T: second = U sqrt(S), first = U^T W / sqrt(S)
        second = u[:, :r] * root[None, :]  # (K, r)
        first = (u[:, :r].T @ a) / safe[:, None]  # (r, C)
    total = float(s2.sum())
    kept = 1.0 if total == 0 else min(1.0, float(s2[:r].sum()) / total)
    return SVDSplit(first.to(w.dtype), second.to(w.dtype), kept)


def _unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: ``(K, C, kh, kw)`` -> ``(K, C*kh*kw)`` or ``(C, K*kh*kw)``."""
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def _leading(matrix: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``matrix``: ``(rows, r)``."""
    return _gram_eigh(matrix)[1][:, :r]


def _project(w: torch.Tensor, u: torch.Tensor, mode: int) -> torch.Tensor:
    """``w x_mode u^T``: mode ``mode`` (0 or 1) of ``(K, C, kh, kw)`` mapped onto ``u``'s
    ``r`` columns, as one matrix product (``u: (K or C, r)``)."""
    moved = w.movedim(mode, -1)  # (..., K or C) with the other three modes first
    return (moved @ u).movedim(-1, mode)  # (..., r) -> mode ``mode`` of size r


def _core(w: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    """``G = W x_0 U_out^T x_1 U_in^T``: ``(K, C, kh, kw)`` -> ``(r_out, r_in, kh, kw)``."""
    return _project(_project(w, u_out, 0), u_in, 1)


def tucker2_energy(weight: torch.Tensor) -> torch.Tensor:
    """Share of ``||W||^2`` the HOSVD core keeps at every pair of ranks.

    With the full orthonormal bases of both channel modes, the truncated core at
    ``(r_out, r_in)`` is the full core's leading block, so one decomposition gives
    every pair: entry ``[r_out - 1, r_in - 1]``.

    Shape:
        ``(K, C, kh, kw)`` -> ``(K, C)``.

    Example:
        >>> e = tucker2_energy(torch.randn(6, 4, 3, 3))
        >>> tuple(e.shape), round(float(e[-1, -1]), 4)
        ((6, 4), 1.0)
    """
    w = _kernel(weight).detach().double()
    u_out = _leading(_unfold(w, 0), w.shape[0])
    u_in = _leading(_unfold(w, 1), w.shape[1])
    block = (_core(w, u_out, u_in) ** 2).sum(dim=(2, 3))  # (K', C') energy per channel pair
    total = float((w**2).sum())
    cumulative = block.cumsum(0).cumsum(1)
    if total == 0:
        return torch.ones_like(cumulative).float()
    return (cumulative / total).clamp(max=1.0).float()


def tucker2(weight: torch.Tensor, ranks: tuple[int, int], *, iterations: int = 0) -> TuckerSplit:
    """Tucker-2 of a ``k x k`` weight on its output and input channel modes.

    HOSVD gives the starting bases (each mode's leading singular vectors);
    ``iterations`` rounds of HOOI (higher-order orthogonal iteration) then
    refine them, each never keeping less energy than the last. A mode kept at
    full rank keeps the identity as its basis (``first`` or ``last`` is then the
    identity and the core is in that mode's own channels). Computed in float64,
    returned in the weight's dtype.

    Args:
        weight: ``(K, C, kh, kw)``.
        ranks: ``(r_out, r_in)``, with ``1 <= r_out <= K`` and ``1 <= r_in <= C``.
        iterations: HOOI rounds after the HOSVD (0: the HOSVD itself).

    Shape:
        ``(K, C, kh, kw)`` -> ``first: (r_in, C)``, ``core: (r_out, r_in, kh, kw)``,
        ``last: (K, r_out)``.

    Example:
        >>> w = torch.randn(6, 4, 3, 3)
        >>> t = tucker2(w, (6, 4))
        >>> rebuilt = torch.einsum("onij,ko,nc->kcij", t.core, t.last, t.first)
        >>> torch.allclose(rebuilt, w, atol=1e-5), round(t.energy_kept, 4)
        (True, 1.0)
    """
    w4 = _kernel(weight)
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise _checks.invalid("ranks", "a pair (r_out, r_in)", ranks, kind=TypeError)
    r_out = _rank("ranks[0]", ranks[0], w4.shape[0])
    r_in = _rank("ranks[1]", ranks[1], w4.shape[1])
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise _checks.invalid("iterations", "an int >= 0", iterations)
    w = w4.detach().double()
    k, c = w.shape[0], w.shape[1]
    eye_out, eye_in = torch.eye(k, dtype=w.dtype), torch.eye(c, dtype=w.dtype)
    # a mode kept at full rank keeps its own basis (the identity): no 1x1 layer is needed
    u_out = eye_out if r_out == k else _leading(_unfold(w, 0), r_out)  # (K, r_out)
    u_in = eye_in if r_in == c else _leading(_unfold(w, 1), r_in)  # (C, r_in)
    for _ in range(iterations if r_out < k and r_in < c else 0):
        u_out = _leading(_unfold(_project(w, u_in, 1), 0), r_out)
        u_in = _leading(_unfold(_project(w, u_out, 0), 1), r_in)
    core = _core(w, u_out, u_in)
    total = float((w**2).sum())
    kept = 1.0 if total == 0 else min(1.0, float((core**2).sum()) / total)
    dtype = w4.dtype
    return TuckerSplit(u_in.T.contiguous().to(dtype), core.to(dtype), u_out.to(dtype), kept)
