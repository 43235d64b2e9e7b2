"""``onebyone demo --quick`` end to end: the tour runs, writes its figures and summary."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from onebyone.cli import main
from onebyone.explain.digits import DigitsNiN, train_digits
from pngfile import assert_sensible_png

FIGURES = [
    "cost-breakdown.png",
    "feature-maps-2-3.png",
    "learned-1x1-weights.png",
    "training-curves.png",
    "worked-example.png",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick tour: (exit status, output folder, printed text)."""
    out = tmp_path_factory.mktemp("demo") / "tour"  # a new folder, as the demo wants
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["demo", "--quick", "--out", str(out)])
    return status, out, printed.getvalue()


def test_quick_demo_spells_out_the_seeds_worked_example(quick_run):
    status, _, printed = quick_run
    assert status == 0
    lines = [line.strip() for line in printed.splitlines()]
    # the computed T[5,2] spelled out next to the seed's printed value, and its table row
    assert "T[5,2] = 4*0.1 + 7*0.2 + 7*0.4 = 4.60   (seed prints 0.6)" in lines
    row = next(line for line in lines if line.startswith("│5 "))
    assert [cell.strip() for cell in row.strip("│").split("│")] == [
        "5", "1.5", "0.8", "4.6", "1.4", "0.8", "2.1"
    ]  # fmt: skip


def test_quick_demo_writes_figures_and_summary(quick_run):
    status, out, printed = quick_run
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "summary.json"])
    for name in FIGURES:
        assert_sensible_png(out / name)
        assert str(out / name) in printed.replace("\n", "")  # it says where the figures are
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and len(summary["history"]) == 3
    assert (summary["train_images"], summary["test_images"]) == (1347, 450)
    assert summary["test_accuracy"] == summary["history"][-1]["test_accuracy"]
    # the profiled costs against the networks' own parameter counts
    nets = {"with reduction": DigitsNiN(), "without reduction": DigitsNiN(reduced=None)}
    for name, net in nets.items():
        assert summary["cost"][name]["params"] == sum(p.numel() for p in net.parameters())
    assert summary["cost"]["with reduction"]["macs"] < summary["cost"]["without reduction"]["macs"]
    optimized = summary["optimize"]
    # which engine is kept depends on timing (OpenVINO wins on some CPUs): not asserted
    assert optimized["engine"] in ("torch", "onnxruntime", "openvino", "original")
    assert optimized["max_rel_error"] <= 1e-4 and optimized["predictions_identical"] is True
    assert optimized["speedup"] == pytest.approx(
        optimized["latency_before_ms"] / optimized["latency_after_ms"]
    )


def test_demo_training_is_the_seeded_library_training(quick_run):
    _, out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    again = train_digits(epochs=3, seed=0)
    assert [e["test_accuracy"] for e in summary["history"]] == [
        e.test_accuracy for e in again.history
    ]
    assert [e["train_loss"] for e in summary["history"]] == [e.train_loss for e in again.history]


def test_demo_flags_reach_the_training_and_no_figures_draws_none(
    quick_run, tmp_path, capsys, monkeypatch
):
    import onebyone.commands.demo as demo

    calls = []
    real = demo.train_digits
    monkeypatch.setattr(demo, "train_digits", lambda **kw: calls.append(kw) or real(**kw))
    # the sections that do not depend on these flags already ran in the quick tour above
    for section in ("_keras_examples", "_seed_blocks", "_why_one_by_one"):
        monkeypatch.setattr(demo, section, lambda *args: None)
    argv = ["demo", "--quick", "--no-figures", "--epochs", "1", "--seed", "5"]
    assert main([*argv, "--out", str(tmp_path / "tour")]) == 0
    assert [p.name for p in (tmp_path / "tour").iterdir()] == ["summary.json"]
    assert [(kw["epochs"], kw["seed"], kw["reduced"]) for kw in calls] == [(1, 5, 16), (1, 5, None)]
    assert "Tour finished" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], r"Invalid value for argument `epochs`\. Expected a positive int"),
        (["--out", "FILE"], r"Invalid value for argument `--out`\. Expected a folder"),
    ],
)
def test_demo_bad_input_is_one_line(argv, message, tmp_path, capsys):
    file = tmp_path / "file.txt"
    file.write_text("not a folder")
    argv = [str(file) if a == "FILE" else a for a in argv]
    assert main(["demo", "--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
