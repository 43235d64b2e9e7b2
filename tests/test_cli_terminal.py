"""The terminal: tables fit the width without cutting a number or a name, COLUMNS is
honoured, a short profile repr, a fast --help, and `onebyone list`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import onebyone as obo
from onebyone.cli import main

WIDTHS = (60, 80, 200)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def assert_fits(text: str, width: int) -> None:
    assert "…" not in text, text
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, f"{len(too_long)} lines wider than {width}:\n" + "\n".join(too_long)


def render(tables, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    for table in tables:
        console.print(table)
    return console.file.getvalue()


@pytest.mark.parametrize("width", WIDTHS)
def test_analyze_fits_the_width_and_cuts_nothing(width, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["analyze", "resnet50", "--peak", "480,20", "--top", "6"]) == 0
    out = capsys.readouterr().out
    assert_fits(out, width)
    for number in ("118,013,952", "12,128,256", "2,119,434,240"):  # once cut at 80 columns
        assert number in out
    assert "category" in out and "layer4.0.conv2" in out


def test_analyze_of_a_timm_model_fits_the_width(capsys, monkeypatch):
    from onebyone.models.external import import_timm

    try:
        import_timm()
    except ImportError as exc:
        pytest.skip(f"timm is not installed here ({exc})")
    argv = ["analyze", "timm:mobilenetv3_small_100", "--peak", "480,20", "--input", "1x3x96x96"]
    for width in WIDTHS:
        monkeypatch.setenv("COLUMNS", str(width))
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert_fits(out, width)
        assert "blocks.1.0.conv_pwl" in out and "blocks.0.0.se.conv_expand" in out


def test_piped_output_honours_columns():
    env = {**os.environ, "PYTHONPATH": SRC, "COLUMNS": "70"}
    argv = [sys.executable, "-m", "onebyone", "analyze", "squeezenet1_1", "--peak", "480,20",
            "--input", "1x3x64x64"]  # fmt: skip
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert_fits(out.stdout, 70)
    assert max(len(line) for line in out.stdout.splitlines()) > 60  # it used the width
    del env["COLUMNS"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert_fits(out.stdout, 80)  # not a terminal, no COLUMNS: 80


@pytest.mark.parametrize("width", WIDTHS)
def test_the_demo_tables_fit_and_tell_the_models_apart(width):
    from onebyone.commands import demo
    from onebyone.explain.digits import DigitsNiN

    rows = [
        ["mobilenet_v1", "224x224", "4,231,976", "568,740,352", "95%", "74%"],
        ["mobilenet_v2", "224x224", "3,504,872", "300,774,272", "70%", "63%"],
        ["resnet152", "224x224", "60,192,808", "11,514,826,752", "40%", "34%"],
    ]
    text = render(
        [
            *demo.design_tables(width),
            *demo.model_tables(rows, width, "--quick leaves out resnet101"),
            *demo.profile_tables(obo.profile(DigitsNiN(), (1, 1, 8, 8), peak=None), width),
        ],
        width,
    )
    console = Console(width=width, file=io.StringIO(), color_system=None)
    demo._keras_examples(console, seed=0)  # the seeds' shapes: 50 -> 20 maps at 600x600
    text += console.file.getvalue()
    assert_fits(text, width)
    for cell in ("360,000,000", "mobilenet_v1", "mobilenet_v2", "11,514,826,752", "mlpconv2.0",
                 "120,422,400"):  # fmt: skip
        assert cell in text, cell


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("label", ["NiN", "no reduction"])
def test_the_demo_training_bar_fits_and_cuts_no_number(width, label):
    from rich.progress import Progress

    from onebyone.commands import demo

    console = Console(width=width, file=io.StringIO(), color_system=None)
    progress = Progress(*demo._progress_columns(width), console=console)
    task = progress.add_task(f"{label} epoch 30/30", total=23, loss=0.0123, train=0.999,
                             test=" 98.9%")  # fmt: skip
    progress.update(task, completed=23)
    console.print(progress.make_tasks_table(progress.tasks))
    text = console.file.getvalue()
    assert_fits(text, width)
    for number in ("0.012", "99.9%", "98.9%", "30/30"):
        assert number in text, number


@pytest.mark.parametrize("width", WIDTHS)
def test_the_optimize_tables_fit_the_width(width):
    from onebyone.commands.optimize import _print_report
    from onebyone.deploy import Candidate, OptimizeReport
    from onebyone.transforms import PassReport

    why = "the relative error 0.031 exceeds the tolerance 0.0001 on the second batch size"
    report = OptimizeReport(
        engine="onnxruntime",
        precision="bfloat16",
        capture="torch.export",
        passes=[PassReport("merge_pointwise", ["a"], [("features.3.conv", why)])],
        candidates=[
            Candidate("onnxruntime", "bfloat16", 12.345, 0.0123, 0.01, 0.998, 3.2, True),
            Candidate("onnxruntime", "float32", 20.5, 2e-7, 1e-7, 1.0, 2.0, True),
            Candidate("openvino", "bfloat16", None, 0.031, 0.02, 0.97, 5.0, False, why),
        ],
        tolerance=0.06,
        latency_before_ms=30.0,
        latency_after_ms=12.345,
    )
    console = Console(width=width, file=io.StringIO(), color_system=None)
    _print_report(console, "timm:mobilenetv3_large_100", (1, 3, 224, 224), report)
    text = console.file.getvalue()
    assert_fits(text, width)
    assert text.count("onnxruntime") >= 3 and "bfloat16" in text and "openvino" in text
    assert "second batch size" in text.replace("\n", " ").replace("│", " ") or width < 80


def test_a_profile_prints_as_a_short_table():
    prof = obo.profile(obo.create_model("resnet50"), (1, 3, 224, 224),
                       peak=obo.MachinePeak(480.0, 20.0))  # fmt: skip
    text = repr(prof)
    assert len(text) < 2_000 and str(prof) == text
    lines = text.splitlines()
    assert lines[0] == "Profile of ResNet: input 1x3x224x224, float32, 174 counted layers"
    assert "118,013,952" in text  # conv1, the layer with the most MACs
    assert "total: params 25,557,032, MACs 4,089,184,256" in text
    assert len(prof.layers) == 174 and prof.layers[0].name == "conv1"  # the fields stay


def test_help_starts_without_importing_torch():
    runner = (
        "import runpy, sys\n"
        "before = 'torch' in sys.modules\n"
        "sys.argv = ['onebyone', '--help']\n"
        "try:\n"
        "    runpy.run_module('onebyone', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('torch loaded:', before, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", runner], env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    if "torch loaded: True" in out.stdout:
        pytest.skip("this interpreter imports torch at start-up")
    assert "list" in out.stdout and "analyze" in out.stdout
    assert out.stdout.strip().endswith("torch loaded: False False"), out.stdout


def test_list_names_the_built_in_models(capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == obo.list_models()
    assert main(["list", "--filter", "mobilenet"]) == 0
    assert capsys.readouterr().out.split() == ["mobilenet_v1", "mobilenet_v2"]
    assert main(["list", "--filter", "nothing-like-this"]) == 2
    assert "argument `--filter`" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "pattern", "name"),
                         [("timm", "vit_tiny*", "timm:vit_tiny_patch16_224"),
                          ("torchvision", "*squeeze*", "torchvision:squeezenet1_1")])  # fmt: skip
def test_list_names_timm_and_torchvision_models(source, pattern, name, capsys):
    from onebyone.models.external import import_timm, import_torchvision

    try:
        import_timm() if source == "timm" else import_torchvision()
    except ImportError as exc:
        pytest.skip(f"{source} is not installed here ({exc})")
    assert main(["list", "--source", source, "--filter", pattern]) == 0
    names = capsys.readouterr().out.split()
    assert name in names and all(n.startswith(f"{source}:") for n in names)


def test_list_without_the_package_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import fails as if not installed
    assert main(["list", "--source", "timm"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("onebyone list: error: --source timm needs timm (") and err.count("\n") == 1
    )
    assert "pip install 'onebyone[models]'" in err
