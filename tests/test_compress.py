"""``compress``: the low-rank splits (exact at full rank, error = discarded energy), the
rank choice against a MAC budget measured by ``obo.profile``, the surgery, fine-tuning,
save/load, bad input, and an architecture nobody here wrote (timm)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.explain.digits import torch_threads
from onebyone.transforms.compress import LowRank, factorize
from onebyone.transforms.lowrank import svd_energy, svd_split, tucker2, tucker2_energy

from helpers import assert_close


def _net() -> nn.Module:
    """Conv-BN-ReLU, a strided 3x3, 1x1s (one onebyone Conv1x1), a depthwise, a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=2, dilation=2),
        nn.ReLU(),
        obo.nn.Conv1x1(64, 64, activation="relu"),
        nn.Conv2d(64, 64, 3, padding=1, groups=64),
        nn.Conv2d(64, 48, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, 10),
    ).eval()


def _rebuild_tucker(t) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.einsum("onij,ko,nc->kcij", t.core, t.last, t.first)


# ---------------------------------------------------------------- the tensor math


@pytest.mark.parametrize("shape", [(8, 6), (5, 12), (7, 7, 1, 1)])
def test_svd_split_is_exact_at_full_rank(shape: tuple[int, ...]) -> None:
    w = torch.randn(shape)
    s = svd_split(w, min(shape[:2]))
    assert s.first.shape == (min(shape[:2]), shape[1]) and s.energy_kept == pytest.approx(1.0)
    assert_close(s.second @ s.first, w.reshape(shape[0], shape[1]))


def test_svd_error_at_reduced_rank_is_the_discarded_energy() -> None:
    w = torch.randn(20, 30, dtype=torch.float64)
    energy = svd_energy(w)
    for r in (1, 5, 13):
        s = svd_split(w, r)
        lost = float(((w - s.second @ s.first) ** 2).sum() / (w**2).sum())
        assert lost == pytest.approx(1 - s.energy_kept, rel=1e-9, abs=1e-12)
        assert s.energy_kept == pytest.approx(float(energy[r - 1]), rel=1e-6)
    assert float(energy[-1]) == pytest.approx(1.0)


@pytest.mark.parametrize("ranks", [(12, 8), (12, 3), (4, 8)])
def test_tucker2_is_exact_when_no_rank_is_cut(ranks: tuple[int, int]) -> None:
    w = torch.randn(12, 8, 3, 3)
    if ranks == (12, 8):
        assert_close(_rebuild_tucker(tucker2(w, ranks)), w)
    # a low-rank weight is rebuilt exactly at its own ranks
    u, v = (
        torch.linalg.qr(torch.randn(12, ranks[0]))[0],
        torch.linalg.qr(torch.randn(8, ranks[1]))[0],
    )
    core = torch.randn(ranks[0], ranks[1], 3, 3)
    low = torch.einsum("onij,ko,cn->kcij", core, u, v)
    t = tucker2(low, ranks)
    assert t.ranks == ranks and t.energy_kept == pytest.approx(1.0, abs=1e-5)
    assert_close(_rebuild_tucker(t), low)


@pytest.mark.parametrize("iterations", [0, 3])
def test_tucker2_error_at_reduced_rank_is_the_discarded_energy(iterations: int) -> None:
    w = torch.randn(16, 10, 3, 3, dtype=torch.float64)
    t = tucker2(w, (6, 4), iterations=iterations)
    lost = float(((w - _rebuild_tucker(t)) ** 2).sum() / (w**2).sum())
    assert lost == pytest.approx(1 - t.energy_kept, rel=1e-9)
    if iterations == 0:  # the HOSVD's energy is the table's entry
        assert t.energy_kept == pytest.approx(float(tucker2_energy(w)[5, 3]), rel=1e-5)
    else:  # HOOI never keeps less than the HOSVD it starts from
        assert t.energy_kept >= tucker2(w, (6, 4)).energy_kept - 1e-12


def test_factorized_layers_at_full_rank_compute_the_same_function() -> None:
    net = _net()
    ranks = {"0": (32, 3), "3": (64, 32), "5": (64,), "7": (48,), "10": (10,)}
    split, kept = factorize(net, ranks)
    x = torch.randn(2, 3, 17, 19)
    assert_close(split(x), net(x))
    assert all(v == pytest.approx(1.0) for v in kept.values())
    assert isinstance(split[3], LowRank) and len(split[3]) == 1  # no 1x1 at full rank
    bottleneck = factorize(net, {"3": (16, 8)})[0][3]  # 1x1 32->8, 3x3 8->16, 1x1 16->64
    assert [tuple(m.weight.shape[:2]) for m in bottleneck] == [(8, 32), (16, 8), (64, 16)]
    assert bottleneck[1].stride == (2, 2) and bottleneck[1].dilation == (2, 2)
    assert bottleneck[0].bias is None and bottleneck[2].bias is not None
    # Conv1x1's residual goes to the last thin layer, after its activation's input
    conv, r = net[5], torch.randn(2, 64, 5, 5)
    low, _ = factorize(nn.Sequential(conv), {"0": (64,)})
    y = torch.randn(2, 64, 5, 5)
    assert_close(low[0](y, r), conv(y, r))


# ---------------------------------------------------------------- the rank choice


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_compress_meets_the_budget_measured_by_profile(target: float) -> None:
    net = _net()
    x = torch.randn(1, 3, 32, 32)
    small, report = obo.compress(net, x, target_macs=target, measure_latency=False)
    before, after = obo.profile(net, x).total.macs, obo.profile(small, x).total.macs
    assert after <= target * before
    assert (report.macs_before, report.macs_after) == (before, after)
    assert report.params_after < report.params_before
    split = [c for c in report.layers if c.kind != "kept"]
    assert split and all(0 < c.energy_kept < 1 and c.macs_after < c.macs_before for c in split)
    assert sum(c.macs_before - c.macs_after for c in report.layers) == before - after
    assert any("groups=64" in why for _, why in report.skipped)  # the depthwise one
    assert report.example_rel_error > 0  # lossy, and says so
    assert small(x).shape == net(x).shape


def test_a_budget_of_one_splits_nothing_and_changes_nothing() -> None:
    net = _net()
    x = torch.randn(2, 3, 16, 16)
    small, report = obo.compress(net, x, target_macs=1.0, measure_latency=False)
    assert report.ranks == {} and report.example_rel_error == 0.0
    assert torch.equal(small(x), net(x))


def test_layers_where_a_split_never_pays_are_left_alone() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 64, 3, padding=1), nn.Conv2d(64, 1, 1))
    _, report = obo.compress(net, torch.randn(1, 1, 8, 8), target_macs=0.9, measure_latency=False)
    why = dict(report.skipped)
    assert why["0"] == why["2"] == "a split saves no MACs at any rank"
    assert report.ranks.keys() == {"1"}


# ---------------------------------------------------------------- data and fine-tuning


def test_input_model_is_unchanged_and_finetuning_reduces_the_loss() -> None:
    net = _net().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(160, 3, 16, 16, generator=g)
    labels = torch.randint(0, 10, (160,), generator=g)
    steps: list[tuple[int, int]] = []
    small, report = obo.compress(
        net, inputs[:1], target_macs=0.25, data=(inputs, labels), finetune_epochs=4, lr=1e-3,
        batch_size=32, measure_latency=False, on_batch=lambda e, b, n, loss: steps.append((e, b)),
    )  # fmt: skip
    assert net.training and all(m.training for m in net.modules())
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not small.training
    before, after = report.before_finetune, report.after_finetune
    assert before is not None and after is not None and before.samples == 32
    assert after.rel_error < before.rel_error
    assert report.finetune is not None and report.finetune.epochs == 4
    assert steps[-1] == (4, 4)  # 128 training inputs in batches of 32
    assert report.original_accuracy is not None and before.accuracy is not None


def test_time_limit_stops_the_finetune() -> None:
    inputs = torch.randn(64, 3, 16, 16)
    _, report = obo.compress(_net(), inputs[:1], data=inputs, finetune_epochs=50,
                             time_limit_s=1e-3, measure_latency=False)  # fmt: skip
    assert report.finetune is not None and report.finetune.stopped_by_time_limit
    assert report.finetune.epochs < 50


def test_latency_is_measured_through_optimize() -> None:
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3)).eval()
    _, report = obo.compress(net, torch.randn(1, 3, 24, 24), engine="torch")
    assert report.latency_before_ms and report.latency_after_ms and report.speedup
    assert report.engine_before in ("torch", "original") and report.engine_after


# ---------------------------------------------------------------- save and load


def test_save_and_load_give_identical_outputs(tmp_path: Path) -> None:
    net = _net()
    x = torch.randn(3, 3, 16, 16)
    small, _ = obo.compress(net, x[:1], target_macs=0.5, measure_latency=False)
    path = obo.save_compressed(small, tmp_path / "small.safetensors")
    again = obo.load_compressed(path, _net())
    assert torch.equal(again(x), small(x))
    with pytest.raises(ValueError, match="Invalid value for argument `model`"):
        obo.load_compressed(path)  # the file names no model to build


def test_load_builds_the_model_the_file_names(tmp_path: Path) -> None:
    net = obo.create_model("squeezenet1_1", num_classes=10).eval()
    x = torch.randn(2, 3, 48, 48)
    small, _ = obo.compress(net, x[:1], target_macs=0.6, measure_latency=False)
    path = obo.save_compressed(small, tmp_path / "s.safetensors", model_name="squeezenet1_1",
                               options={"num_classes": 10})  # fmt: skip
    assert torch.equal(obo.load_compressed(path)(x), small(x))


def test_load_refuses_a_file_without_ranks(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match=r"onebyone\.compress"):
        obo.load_compressed(plain, _net())


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("target", "error"),
    [(0, ValueError), (1.5, ValueError), (-0.5, ValueError), ("0.5", TypeError),
     (True, TypeError)],
)  # fmt: skip
def test_budget_outside_zero_one_is_refused(target: object, error: type) -> None:
    with pytest.raises(error, match="Invalid value for argument `target_macs`"):
        obo.compress(_net(), torch.randn(1, 3, 8, 8), target_macs=target, measure_latency=False)


def test_a_budget_out_of_reach_names_the_lowest_fraction() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"target_macs.*at least 0\.\d+ of its"):
        obo.compress(net, torch.randn(1, 3, 8, 8), target_macs=0.01, measure_latency=False)


def test_a_model_with_nothing_to_split_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.ReLU())
    with pytest.raises(ValueError, match="Invalid value for argument `model`"):
        obo.compress(net, torch.randn(1, 8, 8, 8), measure_latency=False)


def test_data_the_model_rejects_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Invalid value for argument `data`\. Expected inputs"):
        obo.compress(_net(), torch.randn(1, 3, 8, 8), data=torch.randn(10, 5, 8, 8),
                     measure_latency=False)  # fmt: skip
    with pytest.raises(TypeError, match="argument `data`"):
        obo.compress(_net(), torch.randn(1, 3, 8, 8), data=[1, 2, 3], measure_latency=False)
    with pytest.raises(ValueError, match="argument `finetune_epochs`"):
        obo.compress(_net(), torch.randn(1, 3, 8, 8), finetune_epochs=2, measure_latency=False)
    with pytest.raises(ValueError, match="argument `example_input`"):
        obo.compress(_net(), torch.randn(1, 4, 8, 8), measure_latency=False)


# ---------------------------------------------------------------- a timm model


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_resnet18_compresses_and_runs() -> None:
    from onebyone.models.external import load_external

    net = load_external("timm:resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    # one thread: the eigendecompositions of 64-512 channels take 10 s on one thread of a
    # busy 2-core machine and 37 s on two (the threads wait on each other)
    with torch_threads(1):
        small, report = obo.compress(net, x[:1], target_macs=0.5, measure_latency=False)
    assert report.macs_after <= 0.5 * report.macs_before
    assert obo.profile(small, x[:1]).total.macs == report.macs_after
    kinds = {c.name: c.kind for c in report.layers}
    assert "tucker2" in kinds.values() and kinds["fc"] in ("svd", "kept")
    assert small(x).shape == (2, 10) and torch.isfinite(small(x)).all()
