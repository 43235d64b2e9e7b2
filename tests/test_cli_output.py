"""The one rule for files and folders a command writes (commands._output), and its users."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import onebyone as obo
from onebyone.cli import main
from onebyone.commands._output import output_file, output_folder

SMALL = ["squeezenet1_1", "--input", "1x3x32x32"]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"onebyone {command}: error: ") and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", r"Expected a file name ending in \.json\. Received --json=''\."),
        ("  ", r"Expected a file name ending in \.json\. Received --json='  '\."),
        ("DIR", r"Expected a file name ending in \.json, not a folder\. Received --json='.*DIR'"),
        ("new/", r"Expected a file name ending in \.json, not a folder"),
        ("r.txt", r"Expected a file name ending in \.json \(or no extension\)\. Received "
                  r"--json='.*r\.txt'"),
        ("missing/r.json", r"Expected a file in an existing folder \(.*missing does not exist\)"),
        ("old.json", r"Expected a file that does not exist yet \(or --force to replace it\)\. "
                     r"Received --json='.*old\.json'"),
        ("old", r"Expected a file that does not exist yet"),  # old.json, once .json is added
    ],
)  # fmt: skip
def test_a_file_is_refused_before_anything_is_written(tmp_path: Path, value: str, message: str):
    (tmp_path / "DIR").mkdir()
    (tmp_path / "old.json").write_text("kept")
    path = value if not value.strip() else str(tmp_path / value) + ("/" if value[-1] == "/" else "")
    with pytest.raises(ValueError, match=r"Invalid value for argument `--json`\. " + message):
        output_file("--json", path, ".json")
    assert listing(tmp_path) == ["DIR", "old.json"]
    assert (tmp_path / "old.json").read_text() == "kept"


def test_a_missing_extension_is_added_and_force_replaces(tmp_path: Path):
    out = output_file("--plot", str(tmp_path / "figure"), ".png")
    assert out.path == tmp_path / "figure.png"
    assert out.write_bytes(b"one") == tmp_path / "figure.png"
    assert output_file("--plot", str(tmp_path / "FIG.PNG"), ".png").path.name == "FIG.PNG"
    again = output_file("--plot", str(tmp_path / "figure.png"), ".png", force=True)
    again.write_text("two")
    assert listing(tmp_path) == ["figure.png"] and again.path.read_text() == "two"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    out = output_file("--onnx", str(target), ".onnx", force=True)
    with pytest.raises(TypeError):
        out.write_bytes(object())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="verification failed"), out.staging() as temp:
        temp.write_bytes(b"new, but wrong")
        raise RuntimeError("verification failed")
    assert listing(tmp_path) == ["model.onnx"] and target.read_bytes() == b"old"
    fresh = output_file("--onnx", str(tmp_path / "fresh"), ".onnx")
    with pytest.raises(OSError), fresh.staging() as temp:
        temp.write_bytes(b"half")
        raise OSError("disk full")
    assert listing(tmp_path) == ["model.onnx"]


def test_a_folder_is_written_whole_or_not_at_all(tmp_path: Path):
    (tmp_path / "file").write_text("")
    for value, message in [
        ("", r"Expected a folder name\. Received --out=''"),
        (str(tmp_path / "file"), r"Expected a folder, not a file"),
        (str(tmp_path / "a" / "b"), r"Expected a folder in an existing folder"),
        (str(tmp_path), r"Expected a folder that does not exist yet \(or --force"),
    ]:
        with pytest.raises(ValueError, match=r"argument `--out`\. " + message):
            output_folder("--out", value)
    out = output_folder("--out", str(tmp_path / "tour"))
    with pytest.raises(RuntimeError), out.staging() as folder:
        (folder / "a.png").write_text("drawn")
        raise RuntimeError("the tour failed")
    assert listing(tmp_path) == ["file"]
    with out.staging() as folder:
        (folder / "a.png").write_text("a1")
        (folder / "b.json").write_text("b1")
    assert listing(tmp_path) == ["file", "tour", "tour/a.png", "tour/b.json"]
    (tmp_path / "tour" / "mine.txt").write_text("the user's")
    again = output_folder("--out", str(tmp_path / "tour"), force=True)
    with pytest.raises(RuntimeError), again.staging() as folder:
        (folder / "a.png").write_text("a2")
        raise RuntimeError("failed")
    assert (tmp_path / "tour" / "a.png").read_text() == "a1"
    with again.staging() as folder:
        (folder / "a.png").write_text("a2")
    assert listing(tmp_path / "tour") == ["a.png", "b.json", "mine.txt"]
    assert [(tmp_path / "tour" / n).read_text() for n in ("a.png", "b.json", "mine.txt")] == [
        "a2",
        "b1",
        "the user's",
    ]


# ---------------------------------------------------------------- the commands


def test_analyze_adds_the_extension_and_prints_the_real_paths(tmp_path: Path, capsys):
    stem = str(tmp_path / "profile")
    code = main(["analyze", *SMALL, "--by-category", "--json", stem, "--csv", stem, "--plot", stem])
    assert code == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    names = ["profile.json", "profile.csv", "profile.png"]
    assert printed == [f"wrote {tmp_path / name}" for name in names]
    assert listing(tmp_path) == sorted(names)
    assert obo.Profile.from_json((tmp_path / "profile.json").read_text()).total.params == 1_235_496


def test_analyze_plot_onto_a_folder_is_refused_before_profiling(tmp_path: Path, capsys):
    (tmp_path / "figures").mkdir()
    assert main(["analyze", *SMALL, "--plot", str(tmp_path / "figures")]) == 2
    assert "Expected a file name ending in .png, not a folder" in one_line_error(capsys, "analyze")
    assert listing(tmp_path) == ["figures"] and listing(tmp_path / "figures") == []


def test_analyze_keeps_existing_files_unless_force(tmp_path: Path, capsys):
    old = tmp_path / "r.json"
    old.write_text("mine")
    assert main(["analyze", *SMALL, "--by-category", "--json", str(old)]) == 2
    assert "Expected a file that does not exist yet (or --force" in one_line_error(
        capsys, "analyze"
    )
    assert old.read_text() == "mine"
    assert main(["analyze", *SMALL, "--by-category", "--json", str(old), "--force"]) == 0
    assert json.loads(old.read_text())["convention"] == obo.CONVENTION


def test_analyze_checks_every_output_before_it_starts(tmp_path: Path, capsys, monkeypatch):
    import onebyone.commands.analyze as analyze

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was built before the outputs were checked")

    monkeypatch.setattr(analyze, "resolve_model", must_not_run)
    argv = ["analyze", *SMALL, "--json", str(tmp_path / "r.json")]
    assert main([*argv, "--plot", str(tmp_path / "missing" / "f.png")]) == 2
    assert "argument `--plot`. Expected a file in an existing folder" in one_line_error(
        capsys, "analyze"
    )
    assert main([*argv, "--csv", ""]) == 2
    assert "Received --csv=''." in one_line_error(capsys, "analyze")
    assert listing(tmp_path) == []


def test_analyze_writes_all_files_or_none(tmp_path: Path, capsys, monkeypatch):
    import onebyone.commands.analyze as analyze

    def broken_plot(prof, path):
        path.write_bytes(b"half a figure")
        raise RuntimeError("the figure failed")

    monkeypatch.setattr(analyze, "_plot", broken_plot)
    argv = ["analyze", *SMALL, "--by-category", "--json", str(tmp_path / "r.json")]
    assert main([*argv, "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "f")]) == 1
    assert one_line_error(capsys, "analyze").endswith("error: the figure failed\n")
    assert listing(tmp_path) == []


def test_optimize_refuses_an_empty_onnx_path(tmp_path: Path, capsys, monkeypatch):
    import onebyone.commands.optimize as optimize

    monkeypatch.setattr(optimize, "resolve_model", lambda *a: pytest.fail("work started"))
    assert main(["optimize", *SMALL, "--onnx", ""]) == 2
    err = one_line_error(capsys, "optimize")
    assert "Invalid value for argument `--onnx`. Expected a file name ending in .onnx. " in err
    assert main(["optimize", *SMALL, "--onnx", str(tmp_path / "m.bin")]) == 2
    assert "Expected a file name ending in .onnx (or no extension)" in capsys.readouterr().err


def test_optimize_writes_no_onnx_file_when_onnx_runtime_fails(tmp_path: Path, capsys, monkeypatch):
    import onnxruntime

    tried = []

    def session(model, *args, **kwargs):
        tried.append(model)
        assert isinstance(model, bytes) and model  # the exported graph, checked before writing
        raise RuntimeError("ONNX Runtime cannot load this file")

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    target = tmp_path / "model"
    assert main(["optimize", *SMALL, "--engine", "torch", "--onnx", str(target)]) == 1
    assert one_line_error(capsys, "optimize").endswith("ONNX Runtime cannot load this file\n")
    assert len(tried) == 1
    assert listing(tmp_path) == []


def test_optimize_writes_no_onnx_file_when_the_written_graph_differs(
    tmp_path: Path, capsys, monkeypatch
):
    # the exported graph runs but computes something else: verification refuses the file
    from onebyone.deploy import artifacts

    class Wrong(artifacts.ort_engine.OnnxRuntimeModule):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs) + 0.5

    monkeypatch.setattr(artifacts.ort_engine, "OnnxRuntimeModule", Wrong)
    target = tmp_path / "model.onnx"
    assert main(["optimize", *SMALL, "--engine", "torch", "--onnx", str(target)]) == 1
    assert "differ" in one_line_error(capsys, "optimize")
    assert listing(tmp_path) == []


def test_optimize_onnx_adds_the_extension(tmp_path: Path, capsys):
    assert main(["optimize", *SMALL, "--engine", "torch", "--onnx", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert re.search(rf"wrote {re.escape(str(tmp_path / 'm.onnx'))} \(\d+\.\d MB", out), out
    assert listing(tmp_path) == ["m.onnx"]


def test_explain_figures_go_to_a_new_folder_or_need_force(tmp_path: Path, capsys):
    figures = tmp_path / "figures"
    assert main(["explain", "fusion", "--save-figures", str(figures)]) == 0
    assert f"figure: {figures / 'fusion.png'}" in capsys.readouterr().out
    assert listing(figures) == ["fusion.png"]
    stamp = (figures / "fusion.png").stat().st_mtime_ns
    assert main(["explain", "depth", "--save-figures", str(figures)]) == 2
    assert "argument `--save-figures`. Expected a folder that does not exist yet" in (
        one_line_error(capsys, "explain")
    )
    assert main(["explain", "depth", "--save-figures", str(figures), "--force"]) == 0
    capsys.readouterr()
    assert listing(figures) == ["depth.png", "fusion.png"]
    assert (figures / "fusion.png").stat().st_mtime_ns == stamp


def test_demo_refuses_an_existing_folder_before_the_tour(tmp_path: Path, capsys, monkeypatch):
    import onebyone.commands.demo as demo

    monkeypatch.setattr(demo, "_worked_example", lambda console: pytest.fail("the tour started"))
    assert main(["demo", "--quick", "--no-figures", "--out", str(tmp_path)]) == 2
    assert "argument `--out`. Expected a folder that does not exist yet (or --force" in (
        one_line_error(capsys, "demo")
    )
    assert main(["demo", "--quick", "--out", ""]) == 2
    assert "Received --out=''." in one_line_error(capsys, "demo")
    assert listing(tmp_path) == []
