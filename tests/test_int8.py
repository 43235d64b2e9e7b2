"""int8 building blocks: calibration data, the accuracy budget, and the three engines'
quantisers (NNCF on OpenVINO, ONNX Runtime's quantize_static, PT2E) on the demo's
digits network (real data) and on a timm model (random weights: error figures only)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.deploy.capture import capture
from onebyone.deploy.quantize import (
    AccuracyReport,
    accuracy_report,
    check_max_drop,
    measure,
    pt2e,
    reference_outputs,
    split_data,
)
from onebyone.deploy.quantize import onnxruntime as ort_int8
from onebyone.deploy.quantize import openvino as ov_int8

from helpers import calibrate_norms

ENGINES = ("openvino", "onnxruntime", "torch")


def _skip_unless(engine: str) -> None:
    why = {"openvino": ov_int8, "onnxruntime": ort_int8, "torch": pt2e}[engine].available()
    if why is not None:
        pytest.skip(why)


def _build(engine: str, model: nn.Module, example: tuple[torch.Tensor, ...], split: Any,
           cap: Any = None, **kwargs: Any) -> nn.Module:  # fmt: skip
    """The engine's int8 module, built the way optimize builds its float32 candidate."""
    _skip_unless(engine)
    if engine == "torch":
        return pt2e.torch_int8_module(model, example, calibration=split.calibration)
    cap = cap or capture(model, example)
    assert cap.program is not None and cap.dynamic_batch
    spec = {
        "in_spec": cap.program.call_spec.in_spec,
        "out_spec": cap.program.call_spec.out_spec,
        "input_dtypes": [t.dtype for t in example],
    }
    if engine == "openvino":
        return ov_int8.openvino_int8_module(
            cap.program, example, calibration=split.calibration, spec=spec, **kwargs
        )
    traced = tuple(cap.program.example_inputs[0])
    return ort_int8.onnxruntime_int8_module(
        cap.program, traced, calibration=split.calibration, spec=spec, example=example
    )


@pytest.fixture(scope="module")
def digits() -> dict[str, Any]:
    """The demo's network trained briefly on the digits; 4 training batches calibrate, the
    whole test set (9 batches of 50) is held out."""
    pytest.importorskip("sklearn")
    from onebyone.explain.digits import load_digits_split, train_digits

    data = load_digits_split()
    model = train_digits(epochs=8, seed=0, data=data).model.eval()
    batches = list(zip(data.x_train.split(64)[:4], data.y_train.split(64)[:4], strict=True))
    batches += list(zip(data.x_test.split(50), data.y_test.split(50), strict=True))
    example = (data.x_test[:4].clone(),)
    split = split_data(batches, example, calibration_batches=4)
    return {
        "model": model,
        "example": example,
        "split": split,
        "references": reference_outputs(model, split.held_out),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "built": {},
    }


def _digits_int8(digits: dict[str, Any], engine: str) -> nn.Module:
    if engine not in digits["built"]:
        digits["built"][engine] = _build(engine, digits["model"], digits["example"],
                                         digits["split"])  # fmt: skip
    return digits["built"][engine]


# --- calibration data --------------------------------------------------------------------


def test_split_data_first_batches_calibrate_the_rest_are_held_out() -> None:
    batches = [torch.full((3, 2), float(i)) for i in range(7)]
    split = split_data(batches, (torch.zeros(1, 2),), calibration_batches=8)
    # n // 2 of 7 calibrate (at most calibration_batches), in order; the rest are held out
    assert [float(b.inputs[0][0, 0]) for b in split.calibration] == [0.0, 1.0, 2.0]
    assert [float(b.inputs[0][0, 0]) for b in split.held_out] == [3.0, 4.0, 5.0, 6.0]
    assert not split.labelled
    again = split_data(batches, (torch.zeros(1, 2),), calibration_batches=8)
    assert all(torch.equal(a.inputs[0], b.inputs[0])
               for a, b in zip(split.held_out, again.held_out, strict=True))  # fmt: skip


def test_split_data_reads_a_bounded_number_of_batches_from_a_generator() -> None:
    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield torch.randn(2, 3)
            i += 1

    split = split_data(endless(), (torch.zeros(1, 3),), calibration_batches=2, held_out_batches=3)
    assert (len(split.calibration), len(split.held_out)) == (2, 3)
    assert len(read) <= 6
    only = split_data(endless(), (torch.zeros(1, 3),), calibration_batches=4, held_out_batches=0)
    assert (len(only.calibration), len(only.held_out)) == (4, 0)


def test_split_data_takes_a_dataloader_of_pairs_and_of_inputs() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.randn(40, 3, 5, 5), torch.randint(0, 4, (40,))
    split = split_data(DataLoader(TensorDataset(x, y), batch_size=8), (x[:2],))
    assert split.labelled and len(split.calibration) == 2 and len(split.held_out) == 3
    assert torch.equal(split.held_out[0].labels, y[16:24])
    plain = split_data(DataLoader(TensorDataset(x), batch_size=8), (x[:2],))
    assert not plain.labelled and torch.equal(plain.calibration[0].inputs[0], x[:8])


@pytest.mark.parametrize(
    ("data", "kind", "match"),
    [
        (None, ValueError, r"`data`.*real inputs to calibrate int8.*Received data=None"),
        ([], ValueError, r"`data`.*at least one batch.*Received empty data"),
        (iter(()), ValueError, r"Received empty data"),
        (
            [torch.randn(2, 1, 9, 8)],
            ValueError,
            r"shaped like the example \(N, 1, 8, 8\).*"
            r"batch 0 of shape \(2, 1, 9, 8\)",
        ),
        ([torch.randn(2, 1, 8)], ValueError, r"shaped like the example"),
        ([torch.randn(2, 1, 8, 8).double()], TypeError, r"dtype torch.float32.*float64"),
        (torch.randn(4, 1, 8, 8), TypeError, r"iterable of batches.*one tensor"),
        ([(torch.randn(2, 1, 8, 8), torch.rand(2))], TypeError, r"integer class labels"),
        (
            [(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))],
            ValueError,
            r"one label per row, shape \(2,\).*\(3,\)",
        ),
        (
            [torch.randn(2, 1, 8, 8), (torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))],
            ValueError,
            r"every batch with labels or none",
        ),
        (["images"], TypeError, r"input tensors or of \(input, labels\) pairs.*str"),
        (3, TypeError, r"Received data=3"),
    ],
)
def test_split_data_refuses_bad_data(data: Any, kind: type, match: str) -> None:
    with pytest.raises(kind, match=match):
        split_data(data, (torch.zeros(2, 1, 8, 8),))


def test_data_the_model_rejects_is_named() -> None:
    model = nn.Conv2d(3, 4, 1).eval()  # takes 3 channels
    split = split_data([torch.randn(2, 2, 4, 4)] * 2, (torch.zeros(1, 2, 4, 4),))
    with pytest.raises(ValueError, match=r"`data`.*batch 0 of shape \(2, 2, 4, 4\).*raised"):
        reference_outputs(model, split.held_out)


# --- the accuracy budget ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), float("inf")])
def test_max_drop_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"`max_drop`. Expected a fraction in \[0, 1\]"):
        check_max_drop(bad)


@pytest.mark.parametrize("bad", ["0.1", True, [0.1]])
def test_max_drop_of_another_type_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match=r"`max_drop`"):
        check_max_drop(bad)


def test_max_drop_default_and_bounds() -> None:
    assert check_max_drop(None) == 0.01
    assert check_max_drop(0) == 0.0 and check_max_drop(1) == 1.0


def test_accuracy_report_agreement_accuracy_and_errors() -> None:
    ref = [torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 4.0]])]
    cand = [torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([[0.0, 0.0, 4.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([2])]
    report = accuracy_report(ref, cand, labels, max_drop=0.0)
    assert report.rows == 3
    assert report.top1_agreement == pytest.approx(2 / 3)
    # the original gets rows 0 and 2 right; the candidate's change makes row 1 right too
    assert report.accuracy_reference == pytest.approx(2 / 3)
    assert report.accuracy_candidate == pytest.approx(1.0)
    assert report.metric == "accuracy" and report.drop == pytest.approx(-1 / 3)
    assert report.within_budget  # with labels the budget is on accuracy, which rose
    assert report.rel_errors == {"output": pytest.approx(1.0 / 4.0)}  # max |diff| / max |ref|
    unlabelled = accuracy_report(ref, cand, max_drop=0.3)
    assert unlabelled.metric == "top-1 agreement" and unlabelled.drop == pytest.approx(1 / 3)
    assert not unlabelled.within_budget
    assert accuracy_report(ref, cand, max_drop=0.34).within_budget
    assert "beyond max_drop 0.3" in str(unlabelled)


def test_accuracy_report_without_a_classifier_cannot_pass_the_budget() -> None:
    ref = [torch.randn(2, 3, 4, 4)]
    report = accuracy_report(ref, [r + 0.01 for r in ref])
    assert report.top1_agreement is None and report.drop is None and not report.within_budget
    assert math.isfinite(report.max_rel_error) and report.max_rel_error > 0
    assert "cannot be checked" in str(report)


def test_accuracy_report_refuses_mismatched_outputs() -> None:
    with pytest.raises(ValueError, match="one output per reference batch"):
        accuracy_report([torch.zeros(2, 3)], [])
    with pytest.raises(ValueError, match="names and shapes"):
        accuracy_report([torch.zeros(2, 3)], [torch.zeros(2, 4)])


def test_measure_needs_held_out_data() -> None:
    with pytest.raises(ValueError, match="at least two batches"):
        measure(nn.Identity(), [], [])


# --- the engines on the digits (real data) ------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_int8_keeps_digits_test_accuracy_within_half_a_point(
    digits: dict[str, Any], engine: str
) -> None:
    module = _digits_int8(digits, engine)
    report = measure(module, digits["split"].held_out, digits["references"])
    assert report.rows == 450  # the whole test set
    assert report.accuracy_reference is not None and report.accuracy_reference > 0.9
    assert report.accuracy_candidate is not None
    assert report.accuracy_candidate >= report.accuracy_reference - 0.005, str(report)
    assert 0 < report.max_rel_error < 0.5  # quantised: not bit-equal, not broken
    assert report.within_budget  # max_drop 0.01 on accuracy
    assert module.calibration_s > 0
    for name, value in digits["model"].state_dict().items():  # the original is untouched
        assert torch.equal(value, digits["state"][name]), name


def test_the_budget_refuses_a_candidate_that_loses_accuracy(digits: dict[str, Any]) -> None:
    model = digits["model"]
    damaged = type(model)(width=model.width, reduced=model.reduced).eval()
    damaged.load_state_dict(model.state_dict())
    with torch.no_grad():
        last = damaged.mlpconv2[-1]
        last.bias.add_(torch.linspace(0, 3, last.bias.numel()))  # favours the last classes
    report = measure(damaged, digits["split"].held_out, digits["references"])
    assert report.accuracy_candidate is not None and report.accuracy_reference is not None
    assert report.drop is not None and report.drop > 0.01
    assert not report.within_budget
    assert measure(damaged, digits["split"].held_out, digits["references"],
                   max_drop=1.0).within_budget  # fmt: skip


def test_openvino_accuracy_control_meets_its_budget(digits: dict[str, Any]) -> None:
    split = digits["split"]
    module = _build("openvino", digits["model"], digits["example"], split, max_drop=0.005,
                    held_out=split.held_out, references=digits["references"])  # fmt: skip
    report = measure(module, split.held_out, digits["references"], max_drop=0.01)
    assert report.within_budget, str(report)


def test_openvino_int8_refuses_a_bad_budget_and_no_held_out_data(digits: dict[str, Any]) -> None:
    split = digits["split"]
    with pytest.raises(ValueError, match=r"`max_drop`. Expected a fraction in \[0, 1\]"):
        _build("openvino", digits["model"], digits["example"], split, max_drop=1.5,
               held_out=split.held_out)  # fmt: skip
    with pytest.raises(ValueError, match=r"`max_drop`.*no held-out data"):
        _build("openvino", digits["model"], digits["example"], split, max_drop=0.01)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime", "torch"])
def test_int8_builders_refuse_no_calibration(digits: dict[str, Any], engine: str) -> None:
    empty = type(digits["split"])(calibration=[], held_out=digits["split"].held_out)
    with pytest.raises(ValueError, match=r"`calibration`.*at least one batch"):
        _build(engine, digits["model"], digits["example"], empty)


# --- artifacts ----------------------------------------------------------------------------


def test_qdq_onnx_saves_and_reloads_to_the_measured_outputs(
    digits: dict[str, Any], tmp_path: Any
) -> None:
    import onnx
    import onnxruntime as ort

    module = _digits_int8(digits, "onnxruntime")
    path = module.save(tmp_path / "digits-int8.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-int8.onnx"]  # no temp left
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = torch.cat([b.inputs[0] for b in digits["split"].held_out[:2]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (reloaded,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(reloaded, module(x).numpy(), rtol=1e-5, atol=1e-6)


def test_int8_ir_saves_and_reloads_to_the_measured_outputs(
    digits: dict[str, Any], tmp_path: Any
) -> None:
    import openvino as ov

    module = _digits_int8(digits, "openvino")
    xml = module.save(tmp_path / "ir")
    assert xml.name == "model.xml" and (tmp_path / "ir" / "model.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir"]
    read = ov.Core().read_model(str(xml))
    assert any(op.get_type_name() == "FakeQuantize" for op in read.get_ops())
    compiled = ov.Core().compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.cat([b.inputs[0] for b in digits["split"].held_out[:2]])
    reloaded = compiled([x.numpy()])[0]
    np.testing.assert_allclose(reloaded, module(x).numpy(), rtol=1e-5, atol=1e-6)


# --- a timm model (random weights: the error figures) -------------------------------------


@pytest.fixture(scope="module")
def timm_model() -> dict[str, Any]:
    """timm's MobileNetV2 (width 0.5, random weights, norm statistics of its input) at
    64x64, captured once; 2 batches of 2 calibrate, 2 are held out."""
    from onebyone.models import external

    try:
        timm = external.import_timm()
    except ImportError as exc:
        pytest.skip(f"timm is not installed: {exc}")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=10)
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = calibrate_norms(model, x)
    example = (x[:2].clone(),)
    split = split_data(list(x.split(2)), example, calibration_batches=2)
    return {"model": model, "example": example, "split": split,
            "cap": capture(model, example)}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_timm_model_quantises_with_finite_errors(timm_model: dict[str, Any], engine: str) -> None:
    model, split = timm_model["model"], timm_model["split"]
    module = _build(engine, model, timm_model["example"], split, timm_model["cap"])
    report = measure(module, split.held_out, reference_outputs(model, split.held_out))
    assert isinstance(report, AccuracyReport) and report.rows == 4
    assert report.top1_agreement is not None
    assert all(math.isfinite(e) and e > 0 for e in report.rel_errors.values())


# --- PT2E's availability ------------------------------------------------------------------


def test_pt2e_says_why_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def missing(name: str, *args: Any) -> Any:
        if name.startswith(("torchao", "torch.ao.quantization.quantize_pt2e")):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    why = pt2e.available()
    assert why is not None and "needs torchao" in why and "pip install 'onebyone[pt2e]'" in why
    with pytest.raises(RuntimeError, match="needs torchao"):
        pt2e.torch_int8_module(nn.Identity(), (torch.zeros(1),), calibration=[])


# --- optimize(precision="int8" | "auto", data=..., max_drop=...) --------------------------


@pytest.fixture(scope="module")
def digits_data() -> dict[str, Any]:
    """The digits network and optimize's data: 8 training batches (they calibrate: the
    first min(8, n // 2) of the n = 17 batches) then the whole test set (held out)."""
    pytest.importorskip("sklearn")
    from onebyone.explain.digits import load_digits_split, train_digits

    data = load_digits_split()
    model = train_digits(epochs=8, seed=0, data=data).model.eval()
    batches = list(zip(data.x_train.split(64)[:8], data.y_train.split(64)[:8], strict=True))
    batches += list(zip(data.x_test.split(50), data.y_test.split(50), strict=True))
    return {"model": model, "data": data, "batches": batches,
            "example": data.x_test[:4].clone(), "optimized": {}}  # fmt: skip


def _test_accuracy(model: nn.Module, digits_data: dict[str, Any]) -> float:
    data = digits_data["data"]
    with torch.no_grad():
        return float((model(data.x_test).argmax(1) == data.y_test).float().mean())


def _optimized(digits_data: dict[str, Any], engine: str) -> tuple[nn.Module, Any]:
    """``optimize(precision="int8", engine=engine)`` on the digits, once per engine."""
    if engine not in digits_data["optimized"]:
        _skip_unless(engine)
        digits_data["optimized"][engine] = obo.optimize(
            digits_data["model"], digits_data["example"], precision="int8", engine=engine,
            data=digits_data["batches"], measure=False,
        )  # fmt: skip
    return digits_data["optimized"][engine]


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_optimize_int8_keeps_digits_test_accuracy_within_half_a_point(
    digits_data: dict[str, Any], engine: str
) -> None:
    fast, report = _optimized(digits_data, engine)
    assert (report.engine, report.precision) == (engine, "int8")
    reference = _test_accuracy(digits_data["model"], digits_data)
    assert reference > 0.9
    assert _test_accuracy(fast, digits_data) >= reference - 0.005
    (candidate,) = report.candidates[:1]
    assert candidate.name == f"{engine}/int8" and candidate.ok
    assert candidate.calibration_s is not None and candidate.calibration_s > 0
    assert candidate.drop is not None and candidate.drop <= 0.01
    assert candidate.max_rel_error > 0  # quantised: not bit-equal
    # the split: 8 training batches calibrate, the 450 test rows are held out
    assert (report.calibration_rows, report.held_out_rows) == (512, 450)
    assert report.max_drop == 0.01 and report.budget_metric == "accuracy"
    assert report.held_out_accuracy_original == pytest.approx(reference)
    assert set(report.int8_modules) == {engine}
    if engine == "openvino":  # its float layers run as OpenVINO's default runs them here
        from onebyone.deploy.engines.openvino import float_precisions, int8_float_precision

        other = int8_float_precision()
        assert other == ("bfloat16" if "bfloat16" in float_precisions() else "float32")
        assert report.int8_modules[engine].precision == other
        said = [n for n in report.notes if n.startswith("openvino/int8: the layers left")]
        assert len(said) == (other != "float32")
    as_json = json.loads(report.to_json())
    assert as_json["candidates"][0]["calibration_s"] > 0 and as_json["max_drop"] == 0.01
    assert "int8_modules" not in as_json


@pytest.mark.slow
def test_optimize_auto_keeps_the_fastest_within_one_point(
    digits_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onebyone.deploy import timing

    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    monkeypatch.setattr(timing, "BLOCK_S", 0.02)
    fast, report = obo.optimize(digits_data["model"], digits_data["example"], precision="auto",
                                data=digits_data["batches"], max_drop=0.01)  # fmt: skip
    assert _test_accuracy(fast, digits_data) >= _test_accuracy(digits_data["model"],
                                                               digits_data) - 0.01  # fmt: skip
    names = {c.name for c in report.candidates}
    # every engine x precision is listed (built, or why not), the original among them
    assert {f"{e}/{p}" for e in obo.deploy.ENGINES[1:] for p in ("float32", "bfloat16", "int8")
            } <= names and "original/float32" in names  # fmt: skip
    timed = [c for c in report.candidates if c.ok]
    assert all(c.latency is not None and c.latency.runs >= 1 for c in timed)
    kept = next(c for c in timed if (c.engine, c.precision) == (report.engine, report.precision))
    assert kept.latency_ms == min(c.latency_ms for c in timed)  # the fastest that passed
    for c in report.candidates:
        if c.precision in ("bfloat16", "int8") and c.ok:
            assert c.drop is not None and c.drop <= 0.01
        if c.precision == "float32" and c.ok and c.engine != "original":
            assert c.max_rel_error is not None and c.max_rel_error <= 1e-4
        if c.engine != "original" and not c.ok:
            assert c.why  # says why not
    if any(c.precision == "int8" and c.ok for c in report.candidates):
        assert any(c.calibration_s for c in report.candidates if c.precision == "int8")


def test_optimize_auto_without_data_skips_int8_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onebyone.deploy import timing

    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    monkeypatch.setattr(timing, "BLOCK_S", 0.02)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4)).eval()
    _, report = obo.optimize(model, torch.randn(2, 3, 4, 4), precision="auto",
                                engine="torch", measure=False)  # fmt: skip
    assert "int8" not in {c.precision for c in report.candidates}
    assert any("int8 was not built: it needs data=" in n for n in report.notes)
    assert report.max_drop is None


def test_bfloat16_with_max_drop_is_held_to_the_budget(digits_data: dict[str, Any]) -> None:
    from onebyone.deploy.engines import openvino as ov_engine

    _skip_unless("openvino")
    if "bfloat16" not in ov_engine.precisions():
        pytest.skip("OpenVINO reports no native bfloat16 on this CPU")
    _, report = obo.optimize(digits_data["model"], digits_data["example"], precision="bfloat16",
                             engine="openvino", data=digits_data["batches"], max_drop=0.01,
                             measure=False)  # fmt: skip
    (candidate,) = report.candidates[:1]
    assert candidate.name == "openvino/bfloat16" and candidate.ok
    assert candidate.drop is not None and candidate.drop <= 0.01
    assert candidate.calibration_s is None and report.max_drop == 0.01


def test_a_lossy_candidate_without_a_classifier_output_cannot_meet_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onebyone.deploy import timing
    from onebyone.transforms.verify import VerificationError

    _skip_unless("onnxruntime")
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    monkeypatch.setattr(timing, "BLOCK_S", 0.02)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 6, 6, generator=g) for _ in range(4)]
    with pytest.raises(VerificationError, match=r"onnxruntime/int8: the budget cannot be checked"):
        obo.optimize(model, batches[0], precision="int8", engine="onnxruntime", data=batches)
    fast, report = obo.optimize(model, batches[0], precision="int8", data=batches)
    assert report.precision == "float32"  # nothing lossy could be judged: float32 competes
    assert any("no int8 candidate met max_drop 0.01" in n for n in report.notes)
    torch.testing.assert_close(fast(batches[1]), model(batches[1]), rtol=1e-4, atol=1e-5)


def test_float32_and_int8_share_one_onnx_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """...and int8 without VNNI or AMX still runs, with a note."""
    import importlib

    from onebyone.deploy import timing
    from onebyone.deploy.engines import onnxruntime as ort_engine

    _skip_unless("onnxruntime")
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    monkeypatch.setattr(timing, "BLOCK_S", 0.02)
    exports = []
    real = ort_engine.export_onnx
    monkeypatch.setattr(ort_engine, "export_onnx",
                        lambda *args: exports.append(1) or real(*args))  # fmt: skip
    optimize_module = importlib.import_module("onebyone.deploy.optimize")  # not the function
    monkeypatch.setattr(optimize_module, "int8_instructions", lambda: ())  # no VNNI, no AMX
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4)).eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 4, 4, generator=g) for _ in range(4)]
    _, report = obo.optimize(model, batches[0], precision="auto", engine="onnxruntime",
                             data=batches, max_drop=1.0)  # fmt: skip
    built = {c.precision for c in report.candidates if c.max_rel_error is not None}
    assert built == {"float32", "int8"} and len(exports) == 1
    assert any("no VNNI or AMX" in note for note in report.notes)


@pytest.mark.parametrize(
    ("kwargs", "kind", "match"),
    [
        ({"precision": "int8"}, ValueError, r"`data`.*calibrate int8.*Received data=None"),
        ({"precision": "int8", "data": "x", "max_drop": 1.5}, ValueError,
         r"`max_drop`. Expected a fraction in \[0, 1\]"),
        ({"precision": "int8", "data": "x", "max_drop": -0.1}, ValueError, r"`max_drop`"),
        ({"precision": "auto", "data": "x", "max_drop": "1%"}, TypeError, r"`max_drop`"),
        ({"max_drop": 0.01}, ValueError, r"`data`.*measure the accuracy drop.*max_drop=0.01"),
        ({"precision": "int8", "engine": "torch", "data": "x"}, ValueError,
         r"`precision`.*torch: .*Received precision='int8'"),
        ({"precision": "int8", "data": "rejected"}, ValueError,
         r"`data`.*shaped like example_input"),
        ({"precision": "int8", "data": "one"}, ValueError, r"`data`.*at least two batches"),
        ({"precision": "int9"}, ValueError, r"`precision`"),
    ],
)  # fmt: skip
def test_optimize_int8_bad_input(kwargs: dict[str, Any], kind: type, match: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4)).eval()
    batches = {"x": [torch.randn(2, 3, 4, 4) for _ in range(4)],
               "rejected": [torch.randn(2, 3, 5, 5) for _ in range(4)],
               "one": [torch.randn(2, 3, 4, 4)]}  # fmt: skip
    if isinstance(kwargs.get("data"), str):
        kwargs = kwargs | {"data": batches[kwargs["data"]]}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(kind, match=match):
        obo.optimize(model, torch.randn(2, 3, 4, 4), measure=False, **kwargs)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_optimize_int8_artifact_reloads_plainly_to_the_kept_module(
    digits_data: dict[str, Any], engine: str, tmp_path: Any
) -> None:
    from onebyone.deploy import save_int8

    fast, report = _optimized(digits_data, engine)
    x = digits_data["data"].x_test[:64]
    target = tmp_path / ("m.onnx" if engine == "onnxruntime" else "ir")
    written, verified = save_int8(report.int8_modules[engine], target, (x,))
    assert verified.ok
    if engine == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
        (reloaded,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    else:
        import openvino as ov

        reloaded = ov.Core().compile_model(str(written), "CPU")([x.numpy()])[0]
    np.testing.assert_allclose(reloaded, fast(x).numpy(), rtol=1e-5, atol=1e-6)


# --- the CLI ------------------------------------------------------------------------------

DIGITS_NET = "onebyone.explain.digits:DigitsNiN"


@pytest.fixture(scope="module")
def digits_files(digits_data: dict[str, Any], tmp_path_factory: Any) -> dict[str, Any]:
    """The trained digits network's weights (safetensors) and the test set as .npy files
    of 50 digits each (9 files: 4 batches calibrate, 5 are held out)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("digits-cli")
    weights = folder / "digits.safetensors"
    save_file({k: v.contiguous() for k, v in digits_data["model"].state_dict().items()},
              str(weights))  # fmt: skip
    data = folder / "data"
    data.mkdir()
    for i, rows in enumerate(digits_data["data"].x_test.split(50)):
        np.save(data / f"digits-{i}.npy", rows.numpy())
    return {"weights": str(weights), "data": str(data)}


def _cli(digits_files: dict[str, Any], *argv: str) -> list[str]:
    return ["optimize", DIGITS_NET, "--weights", digits_files["weights"], "--input", "50x1x8x8",
            *argv]  # fmt: skip


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_cli_int8_with_a_data_folder_writes_json_and_the_int8_model(
    digits_data: dict[str, Any], digits_files: dict[str, Any], tmp_path: Any,
    capsys: pytest.CaptureFixture[str], engine: str,
) -> None:  # fmt: skip
    from onebyone.cli import main

    _skip_unless(engine)
    report_path = tmp_path / "report.json"
    option, target = (("--onnx", tmp_path / "digits-int8.onnx") if engine == "onnxruntime"
                      else ("--openvino", tmp_path / "ir"))  # fmt: skip
    argv = _cli(digits_files, "--precision", "int8", "--engine", engine,
                "--data", digits_files["data"], "--json", str(report_path),
                option, str(target))  # fmt: skip
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"kept {engine} (int8)" in out
    assert "200 inputs of the data calibrate, 250 are held out" in out
    assert "the model measured above); reloaded, it differs from it by a relative" in out
    report = json.loads(report_path.read_text())
    (candidate,) = [c for c in report["candidates"] if c["name"] == f"{engine}/int8"]
    assert candidate["ok"] and candidate["calibration_s"] > 0
    assert candidate["held_out_top1_agreement"] >= 0.99  # no labels: agreement is the metric
    assert report["budget_metric"] == "top-1 agreement" and report["held_out_rows"] == 250
    x = np.load(f"{digits_files['data']}/digits-8.npy")
    if engine == "onnxruntime":
        import onnx
        import onnxruntime as ort

        ops = {n.op_type for n in onnx.load(str(target)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    else:
        import openvino as ov

        read = ov.Core().read_model(str(target / "model.xml"))
        assert any(op.get_type_name() == "FakeQuantize" for op in read.get_ops())
        logits = ov.Core().compile_model(read, "CPU")([x])[0]
    with torch.no_grad():
        expected = digits_data["model"](torch.from_numpy(x)).argmax(1).numpy()
    assert logits.shape == (50, 10) and (logits.argmax(1) == expected).mean() >= 0.96


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "int8"], "Invalid value for argument `--data`"),
        (["--precision", "auto", "--max-drop", "1.5", "--data", "DATA"],
         "Invalid value for argument `--max-drop`. Expected a fraction in [0, 1]"),
        (["--precision", "int8", "--engine", "torch", "--data", "DATA"],
         "Received --precision='int8'"),
        (["--precision", "int8", "--input", "50x1x8x9", "--data", "DATA"],
         "Invalid value for argument `--data`"),
    ],
)  # fmt: skip
def test_cli_int8_bad_input_is_one_line_exit_2_nothing_written(
    digits_files: dict[str, Any], tmp_path: Any, capsys: pytest.CaptureFixture[str],
    argv: list[str], message: str,
) -> None:  # fmt: skip
    from onebyone.cli import main

    argv = [digits_files["data"] if a == "DATA" else a for a in argv]
    json_out = tmp_path / "r.json"
    assert main([*_cli(digits_files, *argv), "--json", str(json_out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
