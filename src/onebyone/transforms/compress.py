"""``compress``: the bottleneck applied to a model the user already has (lossy by choice).

Every ``groups=1`` convolution becomes a bottleneck of thin layers: a 1x1 one
(``nn.Conv2d`` with a 1x1 kernel, ``onebyone.nn.Conv1x1``) and an ``nn.Linear``
by the truncated SVD of its weight, a ``k x k`` one by a Tucker-2 decomposition
(``onebyone.transforms.lowrank``). The ranks are chosen to meet a budget on the
model's MACs with the least loss: each layer offers a ladder of ranks, each
with the MACs it saves and the share of its weight's energy it discards; a
greedy choice on energy lost per MAC saved (over each ladder's lower convex
hull) walks down the ladders until the budget is met. A layer whose split
never saves MACs is left alone. The input model is never changed.

The pieces: ``LowRank`` (the factorised layer), ``_plan`` (the ranks),
``factorize`` (the surgery), ``distill`` (the optional fine-tune),
``compress`` (all of it, with its ``CompressReport``) and ``save_compressed`` /
``load_compressed`` (safetensors with the ranks in its metadata).
"""

from __future__ import annotations

import copy
import heapq
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onebyone import _checks
from onebyone.nn import Conv1x1
from onebyone.profiling import Profile
from onebyone.transforms.lowrank import svd_energy, svd_split, tucker2, tucker2_energy

__all__ = [
    "METADATA_KEY",
    "CompressReport",
    "FinetuneResult",
    "LayerChoice",
    "LowRank",
    "Quality",
    "compress",
    "distill",
    "factorize",
    "load_compressed",
    "save_compressed",
]

METADATA_KEY = "onebyone.compress"
"""The safetensors metadata entry holding the ranks (JSON)."""
_FORMAT = 1
_BatchCallback = Callable[[int, int, int, float], None]
"""``on_batch(epoch, batch, batches, running_loss)``."""


# ---------------------------------------------------------------- the factorised layer


class LowRank(nn.Sequential):
    """A layer split into thin ones, run in turn: ``C -> r -> K`` (``kind="svd"``) or
    ``C -> r_in -> r_out -> K`` (``kind="tucker2"``; a 1x1 at full rank is left out).

    Extra arguments of ``forward`` (``Conv1x1``'s ``residual``) go to the last layer.

    Attributes:
        kind: ``"svd"`` or ``"tucker2"``.
        ranks: ``(r,)`` or ``(r_out, r_in)``.

    Shape:
        that of the layer it replaces.
    """

    def __init__(self, kind: str, ranks: tuple[int, ...], *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.kind = kind
        self.ranks = tuple(int(r) for r in ranks)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        *head, last = list(self)
        for layer in head:
            x = layer(x)
        return last(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, ranks={self.ranks}"


def _tensor_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    value = getattr(module, name)
    assert isinstance(value, torch.Tensor)
    return value


def _kind(module: nn.Module) -> tuple[str | None, str]:
    """``("svd" | "tucker2", "")`` for a layer ``compress`` can split, else ``(None, why)``."""
    if type(module) is nn.Linear:
        return "svd", ""
    if type(module) is Conv1x1:
        return ("svd", "") if module.groups == 1 else (None, f"groups={module.groups}")
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            return None, f"groups={module.groups} (grouped or depthwise): left alone"
        return ("svd" if module.kernel_size == (1, 1) else "tucker2"), ""
    if isinstance(module, (nn.Conv2d, Conv1x1, nn.Linear)):
        return None, f"{type(module).__name__} has its own forward: left alone"
    return None, ""


def _empty_like(module: nn.Module, kind: str, ranks: tuple[int, ...]) -> LowRank:
    """The factorised architecture of ``module`` at ``ranks`` (weights uninitialised)."""
    w = _tensor_of(module)
    factory: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    has_bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Linear):
        (r,) = ranks
        return LowRank(kind, ranks, nn.Linear(module.in_features, r, bias=False, **factory),
                       nn.Linear(r, module.out_features, bias=has_bias, **factory))  # fmt: skip
    if isinstance(module, Conv1x1):
        (r,) = ranks
        return LowRank(
            kind, ranks,
            Conv1x1(module.in_channels, r, stride=module.stride, bias=False, **factory),
            Conv1x1(r, module.out_channels, bias=has_bias, activation=module.activation,
                    **factory),
        )  # fmt: skip
    assert isinstance(module, nn.Conv2d)
    c, k = module.in_channels, module.out_channels
    geometry: dict[str, Any] = {
        "stride": module.stride, "padding": module.padding, "dilation": module.dilation,
        "padding_mode": module.padding_mode,
    }  # fmt: skip
    if kind == "svd":
        (r,) = ranks
        return LowRank(kind, ranks, nn.Conv2d(c, r, 1, bias=False, **geometry, **factory),
                       nn.Conv2d(r, k, 1, bias=has_bias, **factory))  # fmt: skip
    r_out, r_in = ranks
    layers: list[nn.Module] = []
    if r_in < c:
        layers.append(nn.Conv2d(c, r_in, 1, bias=False, **factory))
    kernel = (module.kernel_size[0], module.kernel_size[1])
    layers.append(nn.Conv2d(r_in, r_out, kernel, bias=has_bias and r_out == k,
                            **geometry, **factory))  # fmt: skip
    if r_out < k:
        layers.append(nn.Conv2d(r_out, k, 1, bias=has_bias, **factory))
    return LowRank(kind, ranks, *layers)


def _split(module: nn.Module, kind: str, ranks: tuple[int, ...], iterations: int) -> tuple[
    LowRank, float]:  # fmt: skip
    """``module`` factorised at ``ranks``, and the share of its weight's energy kept."""
    out = _empty_like(module, kind, ranks)
    weight = _tensor_of(module).detach()
    bias = getattr(module, "bias", None)
    layers = [_tensor_of(m) for m in out]
    with torch.no_grad():
        if kind == "svd":
            s = svd_split(weight, ranks[0])
            layers[0].copy_(s.first.reshape(layers[0].shape))
            layers[1].copy_(s.second.reshape(layers[1].shape))
            kept = s.energy_kept
        else:
            t = tucker2(weight, (ranks[0], ranks[1]), iterations=iterations)
            parts = [t.first[:, :, None, None]] if ranks[1] < weight.shape[1] else []
            parts.append(t.core)
            if ranks[0] < weight.shape[0]:
                parts.append(t.last[:, :, None, None])  # (K, r_out) -> (K, r_out, 1, 1)
            for layer, part in zip(layers, parts, strict=True):
                layer.copy_(part)
            kept = t.energy_kept
        if bias is not None:
            _tensor_of(out[-1], "bias").copy_(bias.detach())
    return out, kept


# ---------------------------------------------------------------- choosing the ranks


@dataclass
class LayerChoice:
    """What ``compress`` did to one layer.

    Attributes:
        name: the module's path.
        type: its class (``"Conv2d"``, ``"Conv1x1"``, ``"Linear"``).
        shape: ``(K, C, kh, kw)`` (``(K, C, 1, 1)`` for 1x1 and linear layers).
        kind: ``"svd"``, ``"tucker2"``, or ``"kept"`` (left as it was).
        ranks: ``(r,)``, ``(r_out, r_in)``, or ``()`` when kept.
        macs_before / macs_after: its MACs on the example (every call summed).
        energy_kept: share of its weight's squared Frobenius norm kept (1.0 when kept).
    """

    name: str
    type: str
    shape: tuple[int, int, int, int]
    kind: str
    ranks: tuple[int, ...]
    macs_before: int
    macs_after: int
    energy_kept: float = 1.0


_Calls = Sequence[tuple[tuple[int, ...], tuple[int, ...]]]
"""``(input shape, output shape)`` of each call of a layer, as ``obo.profile`` saw them."""
_Found = dict[str, tuple[nn.Module, str, _Calls, int]]
"""Splittable layers by path: ``(module, "svd" | "tucker2", its calls, its MACs)``."""
_Point = tuple[int, float, tuple[int, ...]]
"""``(MACs, share of the weight's energy lost, ranks)``; ranks ``()``: the layer itself."""


@dataclass
class _Ladder:
    """One layer's options: ``points[i] = (macs, energy lost, ranks)``, from the layer
    itself (``ranks == ()``) down its convex hull, MACs decreasing."""

    name: str
    kind: str
    points: list[_Point]


def _step(dim: int, rank_multiple: int | None) -> int:
    if rank_multiple is not None:
        return rank_multiple
    return min(8, max(1, dim // 16))


def _ranks(dim: int, step: int) -> list[int]:
    """Allowed ranks of a mode of ``dim`` channels, ascending: multiples of ``step``, ``dim``."""
    return sorted({*range(step, dim, step), dim})


def _pixels(calls: _Calls, c: int, k: int) -> tuple[int, int]:
    """Input and output positions summed over the calls: elements / channels."""
    p_in = sum(math.prod(i) // c for i, _ in calls)
    p_out = sum(math.prod(o) // k for _, o in calls)
    return p_in, p_out


def _hull(points: list[_Point]) -> list[_Point]:
    """The lower convex hull of ``(macs, loss)`` from the first point (the layer itself,
    the most MACs) to the cheapest, MACs decreasing: the loss per MAC saved grows
    along it, so a greedy walk over several hulls takes the cheapest losses first."""
    best: dict[int, _Point] = {}
    for p in points:  # one point per MAC count: the least loss
        if p[0] not in best or p[1] < best[p[0]][1]:
            best[p[0]] = p
    hull: list[_Point] = []
    for p in sorted(best.values(), key=lambda q: -q[0]):
        while len(hull) >= 2:
            (m1, l1, _), (m2, l2, _) = hull[-2], hull[-1]
            # x = MACs saved; keep only left (counter-clockwise) turns: a convex chain
            cross = (m1 - m2) * (p[1] - l1) - (l2 - l1) * (m1 - p[0])
            if cross > 0:
                break
            hull.pop()
        hull.append(p)
    return hull


def _ladder(
    name: str, module: nn.Module, kind: str, calls: _Calls, macs: int, rank_multiple: int | None
) -> _Ladder:
    weight = _tensor_of(module).detach()
    k, c = int(weight.shape[0]), int(weight.shape[1])
    p_in, p_out = _pixels(calls, c, k)
    points: list[_Point] = [(macs, 0.0, ())]
    if kind == "svd":
        energy = svd_energy(weight).tolist()
        for r in _ranks(min(k, c), _step(min(k, c), rank_multiple)):
            cost = p_out * r * (c + k)  # the stride is the first layer's: both at the output
            if cost < macs:
                points.append((cost, 1.0 - energy[min(r, len(energy)) - 1], (r,)))
        return _Ladder(name, kind, _hull(points))
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    energy2 = tucker2_energy(weight)
    outs, ins = _ranks(k, _step(k, rank_multiple)), _ranks(c, _step(c, rank_multiple))

    def cost_of(i: int, j: int) -> int:
        r_out, r_in = outs[i], ins[j]
        first = p_in * c * r_in if r_in < c else 0
        last = p_out * r_out * k if r_out < k else 0
        return first + p_out * r_out * r_in * kh * kw + last

    def lost(i: int, j: int) -> float:
        a = min(outs[i], energy2.shape[0]) - 1
        b = min(ins[j], energy2.shape[1]) - 1
        return 1.0 - float(energy2[a, b])

    i, j = len(outs) - 1, len(ins) - 1  # (K, C): the layer itself
    while i > 0 or j > 0:  # walk down, each step the cheaper loss per MAC saved
        here_cost, here_loss = cost_of(i, j), lost(i, j)
        moves = [(i - 1, j)] if i > 0 else []
        moves += [(i, j - 1)] if j > 0 else []

        def ratio(m: tuple[int, int], cost: int = here_cost, loss: float = here_loss) -> float:
            saved = cost - cost_of(*m)
            return (lost(*m) - loss) / saved if saved > 0 else math.inf

        i, j = min(moves, key=ratio)
        cost = cost_of(i, j)
        if cost < macs:
            points.append((cost, lost(i, j), (outs[i], ins[j])))
    return _Ladder(name, kind, _hull(points))


def _layers(
    model: nn.Module, example: tuple[torch.Tensor, ...]
) -> tuple[_Found, list[tuple[str, str]], Profile]:
    """The layers that can be split, with their calls' shapes and MACs (``obo.profile``),
    the ones left alone with why, and the profile."""
    from onebyone.profiling import profile

    prof = profile(model, example)
    rows: dict[str, list[Any]] = {}
    for row in prof.layers:
        rows.setdefault(row.name, []).append(row)
    found: _Found = {}
    skipped: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        kind, why = _kind(module)
        if kind is None:
            if why:
                skipped.append((name, why))
            continue
        calls = [r for r in rows.get(name, []) if r.cost.macs > 0]
        if not calls:
            skipped.append((name, "did not run on the example"))
            continue
        shapes = [(tuple(r.input_shape), tuple(r.output_shape)) for r in calls]
        found[name] = (module, kind, shapes, sum(int(r.cost.macs) for r in calls))
    return found, skipped, prof


def _plan(
    ladders: Sequence[_Ladder], total_macs: int, target: float
) -> tuple[dict[str, tuple[int, ...]], int]:
    """Ranks per layer meeting ``target * total_macs`` with the least energy lost.

    Greedy on each ladder's convex hull: the next step taken is always the one
    losing the least energy per MAC saved. Returns ``({name: ranks}, MACs reached)``;
    raises ``ValueError`` (naming the lowest reachable fraction) when the budget
    cannot be met.
    """
    budget = target * total_macs
    floor = total_macs - sum(ld.points[0][0] - ld.points[-1][0] for ld in ladders)
    if floor > budget:
        raise _checks.invalid(
            "target_macs",
            f"a fraction this model can reach: at least {floor / total_macs:.3f} of its "
            f"{total_macs:,} MACs (every splittable layer at its smallest rank)",
            target,
        )
    position = {ld.name: 0 for ld in ladders}
    heap: list[tuple[float, str]] = []

    def push(ld: _Ladder) -> None:
        at = position[ld.name]
        if at + 1 < len(ld.points):
            (m1, l1, _), (m2, l2, _) = ld.points[at], ld.points[at + 1]
            heapq.heappush(heap, ((l2 - l1) / (m1 - m2), ld.name))

    by_name = {ld.name: ld for ld in ladders}
    for ld in ladders:
        push(ld)
    macs = total_macs
    while macs > budget and heap:
        _, name = heapq.heappop(heap)
        ld = by_name[name]
        at = position[name]
        macs -= ld.points[at][0] - ld.points[at + 1][0]
        position[name] = at + 1
        push(ld)
    chosen = {name: by_name[name].points[at][2] for name, at in position.items() if at > 0}
    return chosen, macs


def _set(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """``model`` with the module at ``name`` replaced (``module`` itself for the root)."""
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
    return model


def factorize(
    model: nn.Module, ranks: dict[str, tuple[int, ...]], *, iterations: int = 2
) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` with each named layer split at its ranks.

    Args:
        model: not modified.
        ranks: module path -> ``(r,)`` for a 1x1/linear layer (truncated SVD) or
            ``(r_out, r_in)`` for a ``k x k`` convolution (Tucker-2).
        iterations: HOOI rounds refining each Tucker-2 split.

    Returns:
        ``(the copy, {name: share of the weight's energy kept})``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1))
        >>> small, kept = factorize(net, {"0": (8, 8)})
        >>> [type(m).__name__ for m in small[0]], small(torch.randn(1, 16, 5, 5)).shape
        (['Conv2d', 'Conv2d', 'Conv2d'], torch.Size([1, 32, 5, 5]))
    """
    out = copy.deepcopy(model)
    kept: dict[str, float] = {}
    for name, r in ranks.items():
        module = out.get_submodule(name)
        kind, why = _kind(module)
        if kind is None:
            what = why or type(module).__name__
            raise _checks.invalid("ranks", "layers compress can split (groups=1 convolutions, "
                                  "nn.Linear)", f"{name}: {what}")  # fmt: skip
        if len(r) != (1 if kind == "svd" else 2):
            raise _checks.invalid("ranks", f"{'(r,)' if kind == 'svd' else '(r_out, r_in)'} "
                                  f"for {name}", r)  # fmt: skip
        new, kept[name] = _split(module, kind, tuple(r), iterations)
        out = _set(out, name, new)
    return out, kept


# ---------------------------------------------------------------- data and fine-tuning


@dataclass
class Quality:
    """The compressed model against the original on held-out inputs.

    Attributes:
        samples: held-out inputs measured.
        agreement: share whose top-1 class equals the original's (``None`` for outputs
            that are not ``(N, classes)``).
        rel_error: ``||compressed - original|| / ||original||`` over all outputs.
        accuracy: top-1 accuracy against the labels (``None`` without labels).
    """

    samples: int
    agreement: float | None
    rel_error: float
    accuracy: float | None = None


@dataclass
class FinetuneResult:
    """What the distillation did: epochs run, seconds, mean loss per epoch, why it stopped."""

    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    stopped_by_time_limit: bool = False


def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(
            [_tensor(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        )


def _tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"compress needs a model returning a tensor; it returned {type(out).__name__}")


def _quality(reference: torch.Tensor, out: torch.Tensor, labels: torch.Tensor | None) -> Quality:
    ref, got = reference.float(), out.float()
    norm = float(ref.norm())
    rel = float((got - ref).norm()) / norm if norm > 0 else float((got - ref).norm())
    classes = ref.dim() == 2 and ref.shape[1] > 1
    agreement = float((got.argmax(1) == ref.argmax(1)).float().mean()) if classes else None
    accuracy = None
    if labels is not None and classes:
        accuracy = float((got.argmax(1) == labels).float().mean())
    return Quality(len(ref), agreement, rel, accuracy)


def _distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.dim() == 2 and student.shape[1] > 1:  # logits: KL to the teacher's softmax
        return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True,
                        reduction="batchmean")  # fmt: skip
    return F.mse_loss(student, teacher)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    inputs: torch.Tensor,
    *,
    epochs: int,
    time_limit_s: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    on_batch: _BatchCallback | None = None,
) -> FinetuneResult:
    """Train ``student`` in place to match ``teacher``'s outputs on ``inputs`` (no labels).

    The loss is the KL divergence of the softmaxes for ``(N, classes)`` outputs,
    the mean squared error otherwise; Adam with a cosine schedule. Norm layers keep
    their running statistics (they stay in eval mode). Stops after ``epochs`` or,
    between batches, once ``time_limit_s`` has passed. ``student`` ends in eval mode.

    Shape:
        ``inputs``: ``(N, ...)``, what both models take.
    """
    n_epochs = _checks.positive_int("finetune_epochs", epochs)
    bs = _checks.positive_int("batch_size", batch_size)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise _checks.invalid("lr", "a positive number", lr)
    teacher.eval()
    targets = _outputs(teacher, inputs, 256)
    batches = max(1, math.ceil(len(inputs) / bs))
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=n_epochs * batches)
    norms = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    result = FinetuneResult(epochs=0, seconds=0.0)
    try:
        student.train()
        for m in norms:
            m.eval()
        for epoch in range(1, n_epochs + 1):
            order = torch.randperm(len(inputs), generator=generator)
            total, seen = 0.0, 0
            for b in range(batches):
                if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
                    result.stopped_by_time_limit = True
                    break
                idx = order[b * bs : (b + 1) * bs]
                loss = _distill_loss(_tensor(student(inputs[idx])), targets[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                if on_batch is not None:
                    on_batch(epoch, b + 1, batches, total / seen)
            if seen:
                result.losses.append(total / seen)
                result.epochs = epoch
            if result.stopped_by_time_limit:
                break
    finally:
        student.eval()
        result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- compress


@dataclass
class CompressReport:
    """What ``compress`` saved and what it lost.

    Attributes:
        target_macs: the budget, as a fraction of the original MACs.
        layers: one ``LayerChoice`` per splittable layer (split or kept).
        skipped: ``(where, why)`` for the layers ``compress`` cannot split.
        macs_before / macs_after: the model's MACs on the example, by ``obo.profile``.
        params_before / params_after: its parameters (``obo.profile``'s convention).
        lowest_fraction: the smallest MAC fraction reachable (every layer at its
            smallest rank).
        example_rel_error: ``||compressed - original|| / ||original||`` on the example,
            after any fine-tuning.
        before_finetune / after_finetune: the held-out ``Quality`` of the split model
            before and after fine-tuning (``None`` without data; ``after_finetune`` is
            ``None`` without fine-tuning).
        original_accuracy: the original's accuracy on the held-out labels.
        finetune: what the distillation did (``None`` without).
        latency_before_ms / latency_after_ms: each model through ``obo.optimize``
            (float32), median latency on the example; ``engine_before`` /
            ``engine_after`` the engine it kept.
        seconds: the whole call.
        notes: anything else worth knowing.
    """

    target_macs: float
    layers: list[LayerChoice] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    lowest_fraction: float = 1.0
    example_rel_error: float = 0.0
    before_finetune: Quality | None = None
    after_finetune: Quality | None = None
    original_accuracy: float | None = None
    finetune: FinetuneResult | None = None
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    engine_before: str | None = None
    engine_after: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def speedup(self) -> float | None:
        if self.latency_before_ms is None or not self.latency_after_ms:
            return None
        return self.latency_before_ms / self.latency_after_ms

    @property
    def ranks(self) -> dict[str, tuple[int, ...]]:
        """The split layers' ranks, by module path."""
        return {c.name: c.ranks for c in self.layers if c.kind != "kept"}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(macs_fraction=self.macs_fraction, speedup=self.speedup)
        return data


def _as_data(data: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, torch.Tensor):
        inputs, labels = data, None
    elif (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        inputs, labels = data
    else:
        raise _checks.invalid("data", "a tensor of inputs (N, ...) or a pair (inputs, labels)",
                              type(data).__name__, kind=TypeError)  # fmt: skip
    if not inputs.is_floating_point() or inputs.dim() < 1 or len(inputs) < 2:
        raise _checks.invalid("data", "floating inputs (N, ...) with N >= 2",
                              f"{inputs.dtype} {tuple(inputs.shape)}")  # fmt: skip
    if labels is not None and (labels.shape != (len(inputs),) or labels.is_floating_point()):
        raise _checks.invalid("data", f"integer labels of shape ({len(inputs)},)",
                              f"{labels.dtype} {tuple(labels.shape)}")  # fmt: skip
    return inputs, labels


def _split_data(
    inputs: torch.Tensor, labels: torch.Tensor | None, holdout: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(len(inputs) * holdout))
    test, train = order[:n_test], order[n_test:]
    return inputs[train], inputs[test], None if labels is None else labels[test]


def _latency(model: nn.Module, example: tuple[torch.Tensor, ...], engine: str) -> tuple[
    float | None, str]:  # fmt: skip
    from onebyone.deploy import optimize

    _, report = optimize(model, example, precision="float32", engine=engine)
    return report.latency_after_ms, report.engine


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _check_target(target_macs: object) -> float:
    if isinstance(target_macs, bool) or not isinstance(target_macs, (int, float)):
        raise _checks.invalid("target_macs", "a number in (0, 1]", target_macs, kind=TypeError)
    value = float(target_macs)
    if not 0 < value <= 1:
        raise _checks.invalid("target_macs", "a fraction of the original MACs in (0, 1]",
                              target_macs)  # fmt: skip
    return value


def compress(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    *,
    target_macs: float = 0.5,
    data: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    finetune_epochs: int = 0,
    time_limit_s: float | None = None,
    holdout: float = 0.2,
    lr: float = 1e-3,
    batch_size: int = 64,
    rank_multiple: int | None = None,
    iterations: int = 1,
    measure_latency: bool = True,
    engine: str = "auto",
    seed: int = 0,
    on_batch: _BatchCallback | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[nn.Module, CompressReport]:
    """Split the model's convolutions into bottlenecks to meet a MAC budget (lossy by choice).

    1x1 convolutions and linear layers become two thin ones (truncated SVD);
    ``k x k`` convolutions become 1x1 -> ``k x k`` -> 1x1 (Tucker-2, stride, padding
    and dilation on the core, the bias on the last layer). The ranks are chosen
    greedily on energy lost per MAC saved; layers where a split never saves MACs,
    grouped/depthwise convolutions and other layers are left alone (the report says
    so). With ``data``, a share is held out to measure the loss (top-1 agreement
    with the original, and accuracy with labels) and, with ``finetune_epochs``, the
    rest fine-tunes the split model by distillation from the original.

    Args:
        model: a float32 model; never changed (a deep copy is split).
        example_input: a tensor or tuple of tensors the model takes; the MACs and
            the latency are measured on it.
        target_macs: the budget, a fraction of the original MACs in ``(0, 1]``.
        data: inputs ``(N, ...)``, or ``(inputs, labels)`` with integer labels ``(N,)``.
        finetune_epochs: epochs of distillation on the non-held-out data (needs ``data``).
        time_limit_s: stop fine-tuning after this many seconds.
        holdout: share of ``data`` held out for measuring, in ``(0, 1)``.
        lr: the fine-tune's learning rate (Adam).
        batch_size: inputs per step of the fine-tune and of the measurements.
        rank_multiple: ranks are multiples of this (default: ``min(8, max(1,
            channels // 16))`` per mode), or the full rank.
        iterations: HOOI rounds refining each Tucker-2 split.
        measure_latency: put the original and the result through ``obo.optimize``
            (float32) and report both latencies.
        engine: ``optimize``'s engine for that.
        seed: seeds the held-out split and the fine-tune.
        on_batch: ``on_batch(epoch, batch, batches, running_loss)`` during fine-tuning.
        progress: called with a short message at each step.

    Returns:
        ``(compressed model in eval mode, CompressReport)``.

    Raises:
        ValueError: ``target_macs`` outside ``(0, 1]`` or below the lowest reachable
            fraction (the message names it); nothing to split; data the model rejects.
        TypeError: wrong argument types.

    Shape:
        Unchanged: the result takes and returns what ``model`` does.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3))
        >>> small, report = compress(net, torch.randn(1, 3, 16, 16), measure_latency=False)
        >>> report.macs_after <= 0.5 * report.macs_before
        True
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    if not isinstance(model, nn.Module):
        raise _checks.invalid("model", "a torch.nn.Module", type(model).__name__, kind=TypeError)
    target = _check_target(target_macs)
    if (
        isinstance(finetune_epochs, bool)
        or not isinstance(finetune_epochs, int)
        or (finetune_epochs < 0)
    ):
        raise _checks.invalid("finetune_epochs", "an int >= 0", finetune_epochs)
    if time_limit_s is not None and (
        isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float))
        or not time_limit_s > 0
    ):  # fmt: skip
        raise _checks.invalid("time_limit_s", "None or a positive number of seconds",
                              time_limit_s)  # fmt: skip
    if not isinstance(holdout, float) or not 0 < holdout < 1:
        raise _checks.invalid("holdout", "a float in (0, 1)", holdout)
    if rank_multiple is not None:
        rank_multiple = _checks.positive_int("rank_multiple", rank_multiple)
    if finetune_epochs and data is None:
        raise _checks.invalid("finetune_epochs", "0 without data (fine-tuning needs inputs)",
                              finetune_epochs)  # fmt: skip
    example = tuple(example_input) if isinstance(example_input, (tuple, list)) else (
        example_input,)  # fmt: skip
    if not all(isinstance(t, torch.Tensor) for t in example):
        raise _checks.invalid("example_input", "a tensor or a tuple of tensors",
                              type(example_input).__name__, kind=TypeError)  # fmt: skip
    inputs = labels = None
    if data is not None:
        inputs, labels = _as_data(data)

    original = copy.deepcopy(model).eval()
    say("counting MACs")
    try:
        found, skipped, prof = _layers(original, example)
    except Exception as exc:
        raise _checks.invalid("example_input", "inputs the model accepts",
                              f"{[tuple(t.shape) for t in example]}: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from exc  # fmt: skip
    report = CompressReport(target_macs=target, skipped=skipped)
    report.macs_before, report.params_before = int(prof.total.macs), int(prof.total.params)
    ladders = [_ladder(name, module, kind, shapes, macs, rank_multiple)
               for name, (module, kind, shapes, macs) in found.items()]  # fmt: skip
    useful = [ld for ld in ladders if len(ld.points) > 1]
    for ld in ladders:
        if len(ld.points) == 1:
            report.skipped.append((ld.name, "a split saves no MACs at any rank"))
    if not useful:
        raise _checks.invalid(
            "model", "a model with layers compress can split to save MACs (groups=1 "
            "convolutions or nn.Linear layers that ran on the example)",
            f"{type(model).__name__} ({len(found)} splittable layers, none saving MACs)",
        )  # fmt: skip
    report.lowest_fraction = (
        report.macs_before - sum(ld.points[0][0] - ld.points[-1][0] for ld in useful)
    ) / report.macs_before
    say("choosing ranks")
    chosen, _ = _plan(useful, report.macs_before, target)
    compressed, kept = factorize(original, chosen, iterations=iterations)
    compressed.eval()
    for name, (module, kind, _, macs) in found.items():
        w = _tensor_of(module)
        kh, kw = (int(w.shape[2]), int(w.shape[3])) if w.dim() == 4 else (1, 1)
        shape = (int(w.shape[0]), int(w.shape[1]), kh, kw)
        report.layers.append(LayerChoice(name, type(module).__name__, shape,
                                         kind if name in chosen else "kept",
                                         chosen.get(name, ()), macs, macs,
                                         kept.get(name, 1.0)))  # fmt: skip
    after = _layers_macs(compressed, example)
    for choice in report.layers:
        if choice.name in chosen:
            choice.macs_after = after.get(choice.name, 0)
    from onebyone.profiling import profile

    prof_after = profile(compressed, example)
    report.macs_after, report.params_after = int(prof_after.total.macs), int(
        prof_after.total.params)  # fmt: skip

    if inputs is not None:
        say("measuring on the held-out data")
        train_x, test_x, test_y = _split_data(inputs, labels, holdout, seed)
        try:
            reference = _outputs(original, test_x, batch_size)
        except Exception as exc:
            raise _checks.invalid("data", "inputs the model accepts",
                                  f"{tuple(inputs.shape)}: {type(exc).__name__}: "
                                  f"{_first_line(exc)}") from exc  # fmt: skip
        if test_y is not None and reference.dim() == 2:
            report.original_accuracy = float((reference.argmax(1) == test_y).float().mean())
        report.before_finetune = _quality(reference, _outputs(compressed, test_x, batch_size),
                                          test_y)  # fmt: skip
        if finetune_epochs and not chosen:
            report.notes.append("nothing was split: no fine-tuning")
        elif finetune_epochs:
            if len(train_x) == 0:
                raise _checks.invalid("data", "more inputs than the held-out share", len(inputs))
            say("fine-tuning")
            report.finetune = distill(compressed, original, train_x, epochs=finetune_epochs,
                                      time_limit_s=time_limit_s, lr=lr, batch_size=batch_size,
                                      seed=seed, on_batch=on_batch)  # fmt: skip
            report.after_finetune = _quality(reference, _outputs(compressed, test_x, batch_size),
                                             test_y)  # fmt: skip
    with torch.inference_mode():
        ref = _tensor(original(*example)).float()
        got = _tensor(compressed(*example)).float()
    norm = float(ref.norm())
    report.example_rel_error = float((got - ref).norm()) / norm if norm else float(got.norm())
    if measure_latency:
        say("timing both through optimize")
        report.latency_before_ms, report.engine_before = _latency(original, example, engine)
        report.latency_after_ms, report.engine_after = _latency(compressed, example, engine)
    report.seconds = time.perf_counter() - start
    return compressed, report


def _layers_macs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """MACs per ``LowRank`` module path (its thin layers summed), by ``obo.profile``."""
    from onebyone.profiling import profile

    owners = [name for name, m in model.named_modules() if isinstance(m, LowRank)]
    macs: dict[str, int] = dict.fromkeys(owners, 0)
    for row in profile(model, example).layers:
        owner = row.name.rpartition(".")[0]
        if owner in macs:
            macs[owner] += int(row.cost.macs)
    return macs


# ---------------------------------------------------------------- save and load


def save_compressed(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state dict as safetensors, with its ``LowRank`` layers' ranks
    (and ``model_name``, ``options``: how to build the original) in the metadata.

    ``load_compressed`` rebuilds the architecture from them in one call.
    """
    from safetensors.torch import save_file

    layers = {name: {"kind": m.kind, "ranks": list(m.ranks)}
              for name, m in model.named_modules() if isinstance(m, LowRank)}  # fmt: skip
    meta = {"format": _FORMAT, "model": model_name, "options": options or {}, "layers": layers}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    target = Path(path)
    save_file(state, str(target), metadata={METADATA_KEY: json.dumps(meta)})
    return target


def _metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:
        raise _checks.invalid("path", "a safetensors file written by save_compressed",
                              f"{path} ({type(exc).__name__})") from None  # fmt: skip
    if METADATA_KEY not in meta:
        raise _checks.invalid("path", f"a safetensors file with {METADATA_KEY!r} metadata "
                              "(written by save_compressed)", str(path))  # fmt: skip
    return dict(json.loads(meta[METADATA_KEY]))


def _build_named(name: str, options: dict[str, Any]) -> nn.Module:
    """Only registered names and ``timm:``/``torchvision:`` ones: a file never names code
    to import."""
    from onebyone.models import create_model, list_models
    from onebyone.models.external import is_external, load_external

    if name in list_models():
        return create_model(name, **options)
    if is_external(name):
        return load_external(name, **options)
    raise _checks.invalid("model", f"the model {name!r} the file names, built by you (pass "
                          "model=...: only registered and timm:/torchvision: names are built "
                          "from a file)", None)  # fmt: skip


def load_compressed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a compressed model from ``save_compressed``'s file, in one call.

    Args:
        path: the safetensors file.
        model: the original architecture (its weights do not matter; it is not
            changed). ``None`` builds the one the file names (a registered model or
            ``timm:NAME``/``torchvision:NAME``).

    Returns:
        the factorised model with the file's weights, in eval mode.

    Example:
        >>> import os, tempfile
        >>> net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1))
        >>> small, _ = compress(net, torch.randn(1, 16, 8, 8), measure_latency=False)
        >>> path = os.path.join(tempfile.mkdtemp(), "small.safetensors")
        >>> _ = save_compressed(small, path)
        >>> again = load_compressed(path, net)
        >>> x = torch.randn(2, 16, 8, 8)
        >>> torch.equal(again(x), small(x))
        True
    """
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise _checks.invalid("path", "an existing file", str(path))
    meta = _metadata(file)
    if model is None:
        name = meta.get("model")
        if not name:
            raise _checks.invalid("model", "the original architecture (the file names none)",
                                  None)  # fmt: skip
        model = _build_named(str(name), dict(meta.get("options") or {}))
    elif not isinstance(model, nn.Module):
        raise _checks.invalid("model", "None or a torch.nn.Module", type(model).__name__,
                              kind=TypeError)  # fmt: skip
    out = copy.deepcopy(model)
    for name, spec in dict(meta.get("layers", {})).items():
        try:
            module = out.get_submodule(name)
        except AttributeError:
            raise _checks.invalid("model", f"an architecture with a layer {name!r} (as the "
                                  "file's)", type(model).__name__) from None  # fmt: skip
        kind, why = _kind(module)
        if kind is None or kind != spec["kind"]:
            raise _checks.invalid("model", f"a {spec['kind']}-splittable layer at {name!r}",
                                  why or type(module).__name__)  # fmt: skip
        out = _set(out, name, _empty_like(module, kind, tuple(spec["ranks"])))
    state = load_file(str(file), device="cpu")
    try:
        out.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise _checks.invalid("model", "the architecture the file was written from",
                              detail) from None  # fmt: skip
    return out.eval()
