"""verify: per-output max abs / rel errors, and a raise beyond the tolerance."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.transforms import VerificationError


class Scaled(nn.Module):
    """Returns a dict, a tuple and a tensor: ``x * factor`` plus an offset in one place."""

    def __init__(self, factor: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.factor, self.offset = factor, offset

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = x * self.factor
        return y, {"shifted": y + self.offset, "sum": y.sum(dim=1)}


def test_identical_models_have_zero_error_on_every_output() -> None:
    x = torch.randn(3, 4)
    report = obo.verify(Scaled(), Scaled(), x)
    assert [o.name for o in report.outputs] == [
        "output[0]",
        "output[1]['shifted']",
        "output[1]['sum']",
    ]
    assert report.ok and report.max_abs == 0.0 and report.max_rel == 0.0


def test_errors_are_measured_per_output_relative_to_its_scale() -> None:
    x = torch.ones(2, 4)
    report = obo.verify(Scaled(), Scaled(offset=1e-3), x, rtol=1e-2)
    shifted = report.outputs[1]
    assert shifted.max_abs == pytest.approx(1e-3, rel=1e-4)
    assert shifted.max_rel == pytest.approx(1e-3 / 1.0, rel=1e-4)
    assert report.outputs[0].max_abs == 0.0


def test_an_error_beyond_the_tolerance_raises_with_the_report() -> None:
    x = torch.ones(2, 4)
    with pytest.raises(
        VerificationError, match=r"output\[1\]\['shifted'\] differs by up to 0.1"
    ) as info:
        obo.verify(Scaled(), Scaled(offset=0.1), x)
    assert not info.value.report.ok
    assert info.value.report.outputs[0].ok


def test_default_tolerance_follows_the_output_dtype() -> None:
    x = torch.ones(2, 4, dtype=torch.float64)
    with pytest.raises(VerificationError):
        obo.verify(Scaled(), Scaled(factor=1 + 1e-8), x)  # fine in float32, not in float64
    obo.verify(Scaled(), Scaled(factor=1 + 1e-8), x.float())


def test_shape_and_structure_mismatches_raise() -> None:
    with pytest.raises(VerificationError, match="shape"):
        obo.verify(nn.Linear(4, 2), nn.Linear(4, 3), torch.randn(1, 4))
    with pytest.raises(VerificationError, match="outputs"):
        obo.verify(Scaled(), nn.Identity(), torch.randn(1, 4))


def test_nan_counts_as_equal_only_where_both_are_nan() -> None:
    class Nan(nn.Module):
        def __init__(self, where: int) -> None:
            super().__init__()
            self.where = where

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x.clone()
            y[0, self.where] = math.nan
            return y

    x = torch.randn(1, 3)
    assert obo.verify(Nan(0), Nan(0), x).max_abs == 0.0
    with pytest.raises(VerificationError):
        obo.verify(Nan(0), Nan(1), x)


def test_an_input_the_model_rejects_is_a_value_error() -> None:
    with pytest.raises(
        ValueError,
        match=r"argument `example_input`\. Expected an input the reference model accepts",
    ):
        obo.verify(nn.Linear(4, 2), nn.Linear(4, 2), torch.randn(1, 5))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"example_input": "x"}, TypeError, r"argument `example_input`\. Expected a torch.Tensor"),
        ({"rtol": -1.0}, ValueError, r"argument `rtol`\. Expected a non-negative number"),
        ({"atol": "0"}, TypeError, r"argument `atol`\. Expected a non-negative number"),
        ({"reference": 3}, TypeError, r"argument `reference`\. Expected a torch.nn.Module"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    args: dict[str, object] = {
        "reference": nn.Identity(),
        "candidate": nn.Identity(),
        "example_input": torch.ones(2),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        obo.verify(**args)  # type: ignore[arg-type]


class _WritesItsInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.relu_() * 2


def test_a_model_that_writes_to_its_input_is_run_on_clones() -> None:
    x = torch.randn(3, 4)
    kept = x.clone()
    model = _WritesItsInput()
    report = obo.verify(model, copy.deepcopy(model), x)
    assert report.ok and report.max_abs == 0.0
    assert torch.equal(x, kept)


class _Keys(nn.Module):
    def __init__(self, order: tuple[str, str]) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {"a": x + 1, "b": x * 2}
        return {k: values[k] for k in self.order}


def test_dict_outputs_compare_by_key_whatever_their_order() -> None:
    x = torch.randn(2, 3)
    assert obo.verify(_Keys(("a", "b")), _Keys(("b", "a")), x).ok


def test_a_candidate_of_another_dtype_is_reported() -> None:
    x = torch.randn(2, 3)
    wider = nn.Sequential(_Keys(("a", "b")))
    with pytest.raises(obo.VerificationError, match=r"dtype torch\.float64 differs"):
        obo.verify(_Keys(("a", "b")), _DoubleOut(wider), x)


class _DoubleOut(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.double() for k, v in self.inner(x).items()}
