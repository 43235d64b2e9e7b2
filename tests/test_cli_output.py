"""The one rule for files and folders onebyone writes (onebyone._files), and its users."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

import onebyone as obo
from onebyone import _files
from onebyone._files import output_file, output_folder
from onebyone.cli import main

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
        ("old.json/r.json", r"Expected a file in an existing folder \(.*old\.json is a file\)"),
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


def write(out, data: bytes | str) -> Path:
    with _files.staged([out]) as (temp,):
        temp.write_bytes(data) if isinstance(data, bytes) else temp.write_text(data)
    return out.path


def test_a_missing_extension_is_added_and_force_replaces(tmp_path: Path):
    out = output_file("--plot", str(tmp_path / "figure"), ".png")
    assert out.path == tmp_path / "figure.png"
    assert write(out, b"one") == tmp_path / "figure.png"
    assert output_file("--plot", str(tmp_path / "FIG.PNG"), ".png").path.name == "FIG.PNG"
    again = output_file("--plot", str(tmp_path / "figure.png"), ".png", force=True)
    write(again, "two")
    assert listing(tmp_path) == ["figure.png"] and again.path.read_text() == "two"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    out = output_file("--onnx", str(target), ".onnx", force=True)
    with pytest.raises(RuntimeError, match="verification failed"), _files.staged([out]) as t:
        t[0].write_bytes(b"new, but wrong")
        raise RuntimeError("verification failed")
    assert listing(tmp_path) == ["model.onnx"] and target.read_bytes() == b"old"
    fresh = output_file("--onnx", str(tmp_path / "fresh"), ".onnx")
    with pytest.raises(OSError), _files.staged([fresh]) as t:
        t[0].write_bytes(b"half")
        raise OSError("disk full")
    assert listing(tmp_path) == ["model.onnx"]


def test_a_folder_may_exist_but_its_files_are_kept_without_force(tmp_path: Path):
    (tmp_path / "file").write_text("")
    for value, message in [
        ("", r"Expected a folder name\. Received --out=''"),
        (str(tmp_path / "file"), r"Expected a folder, not a file"),
        (str(tmp_path / "a" / "b"), r"Expected a folder in an existing folder"),
    ]:
        with pytest.raises(ValueError, match=r"argument `--out`\. " + message):
            output_folder("--out", value, ["a.png"])
    out = output_folder("--out", str(tmp_path / "tour"), ["a.png", "b.json"])
    with pytest.raises(RuntimeError), _files.staged([out]) as (folder,):
        (folder / "a.png").write_text("drawn")
        raise RuntimeError("the tour failed")
    assert listing(tmp_path) == ["file"]
    with _files.staged([out]) as (folder,):
        (folder / "a.png").write_text("a1")
        (folder / "b.json").write_text("b1")
    assert listing(tmp_path) == ["file", "tour", "tour/a.png", "tour/b.json"]
    (tmp_path / "tour" / "mine.txt").write_text("the user's")
    with pytest.raises(ValueError, match=r"Expected a folder without a\.png in it \(or --force"):
        output_folder("--out", str(tmp_path / "tour"), ["a.png", "c.png"])
    assert output_folder("--out", str(tmp_path / "tour"), ["c.png"]).path == tmp_path / "tour"
    again = output_folder("--out", str(tmp_path / "tour"), ["a.png"], force=True)
    with pytest.raises(RuntimeError), _files.staged([again]) as (folder,):
        (folder / "a.png").write_text("a2")
        raise RuntimeError("failed")
    assert (tmp_path / "tour" / "a.png").read_text() == "a1"
    with _files.staged([again]) as (folder,):
        (folder / "a.png").write_text("a2")
    assert listing(tmp_path / "tour") == ["a.png", "b.json", "mine.txt"]
    assert [(tmp_path / "tour" / n).read_text() for n in ("a.png", "b.json", "mine.txt")] == [
        "a2",
        "b1",
        "the user's",
    ]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, 0o027])
def test_files_are_0600_and_folders_0700_narrowed_by_the_umask(tmp_path: Path, umask: int):
    outs = [
        output_file("--json", str(tmp_path / "r"), ".json"),
        output_folder("--out", str(tmp_path / "tour"), ["a.png", "sub"]),
    ]
    old = os.umask(umask)
    try:
        with _files.staged(outs) as (file, folder):
            file.write_text("{}")
            (folder / "a.png").write_bytes(b"png")
            (folder / "sub").mkdir()
            (folder / "sub" / "b").write_text("b")
        _files.write_bytes(tmp_path / "lib" / "x.bin", b"x")
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")
    }
    file_mode, folder_mode = 0o600 & ~umask, 0o700 & ~umask
    assert modes == {
        "r.json": file_mode,
        "tour": folder_mode,
        "tour/a.png": file_mode,
        "tour/sub": folder_mode,
        "tour/sub/b": file_mode,
        "lib": folder_mode,
        "lib/x.bin": file_mode,
    }


def test_several_outputs_are_written_all_or_none(tmp_path: Path, monkeypatch):
    (tmp_path / "old.json").write_text("old")
    outs = [
        output_file("--json", str(tmp_path / "old"), ".json", force=True),
        output_file("--csv", str(tmp_path / "new"), ".csv"),
        output_folder("--out", str(tmp_path / "tour"), ["a.png"]),
    ]
    real_replace = os.replace

    def fail_on_the_folder(src, dst, *args, **kwargs):  # the last rename fails
        if Path(dst).name == "a.png":
            raise PermissionError(13, "Permission denied", str(src))
        return real_replace(src, dst, *args, **kwargs)

    (tmp_path / "tour").mkdir()
    monkeypatch.setattr(os, "replace", fail_on_the_folder)
    with pytest.raises(PermissionError) as caught, _files.staged(outs) as (j, c, folder):
        j.write_text("new json")
        c.write_text("csv")
        (folder / "a.png").write_text("png")
    monkeypatch.undo()
    assert listing(tmp_path) == ["old.json", "tour"]  # the csv is gone again, no temporary
    assert (tmp_path / "old.json").read_text() == "old"  # the replaced file came back
    assert ".partial" not in str(caught.value) and str(tmp_path / "tour") in str(caught.value)


def test_errors_name_the_target_never_a_temporary(tmp_path: Path):
    out = output_file("--onnx", str(tmp_path / "m"), ".onnx")
    with pytest.raises(OSError) as caught, _files.staged([out]) as (temp,):
        raise OSError(28, "No space left on device", str(temp))
    assert caught.value.filename == str(tmp_path / "m.onnx") and ".partial" not in str(caught.value)
    with pytest.raises(RuntimeError) as caught, _files.staged([out]) as (temp,):
        raise RuntimeError(f"serializer failed on {temp}: bad node")
    assert str(caught.value) == f"serializer failed on {tmp_path / 'm.onnx'}: bad node"
    assert listing(tmp_path) == []


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path: Path):
    # /sys refuses new files even to root, where permission bits do not
    for make in (
        lambda: output_file("--onnx", "/sys/m.onnx", ".onnx"),
        lambda: output_folder("--openvino", "/sys/ir", ["model.xml"]),
    ):
        with pytest.raises(ValueError, match=r"Expected a (file|folder) in a folder this process "
                           r"can write \(/sys: Permission denied\)"):  # fmt: skip
            make()
    if os.geteuid() == 0:
        return  # root writes anywhere chmod forbids; /sys above covers the check
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="this process can write"):
        output_file("--json", str(locked / "r"), ".json")


def test_one_output_stages_on_its_own(tmp_path: Path):
    out = output_file("--out", str(tmp_path / "model"), ".safetensors")
    with pytest.raises(RuntimeError), out.staging() as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("failed")
    assert listing(tmp_path) == []
    with out.staging() as temp:
        temp.write_bytes(b"whole")
    assert listing(tmp_path) == ["model.safetensors"] and out.path.read_bytes() == b"whole"


def test_two_outputs_may_not_write_one_file(tmp_path: Path):
    outs = [
        output_folder("--save-figures", str(tmp_path / "d"), ["index.html"]),
        output_folder("--html", str(tmp_path / "d"), ["index.html"]),
    ]
    with pytest.raises(ValueError, match=r"argument `--html`\. Expected a path --save-figures"):
        _files.check_all(outs)


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


def test_explain_figures_of_several_topics_share_a_folder(tmp_path: Path, capsys):
    figures = tmp_path / "figures"
    assert main(["explain", "fusion", "--save-figures", str(figures)]) == 0
    assert f"figure: {figures / 'fusion.png'}" in capsys.readouterr().out
    assert listing(figures) == ["fusion.png"]
    stamp = (figures / "fusion.png").stat().st_mtime_ns
    assert main(["explain", "depth", "--save-figures", str(figures)]) == 0  # an existing folder
    capsys.readouterr()
    assert listing(figures) == ["depth.png", "fusion.png"]
    assert main(["explain", "depth", "--save-figures", str(figures)]) == 2  # an existing file
    assert "argument `--save-figures`. Expected a folder without depth.png in it (or --force" in (
        one_line_error(capsys, "explain")
    )
    assert main(["explain", "depth", "--save-figures", str(figures), "--force"]) == 0
    capsys.readouterr()
    assert listing(figures) == ["depth.png", "fusion.png"]
    assert (figures / "fusion.png").stat().st_mtime_ns == stamp


def test_explain_figures_and_page_are_written_together_or_not_at_all(
    tmp_path: Path, capsys, monkeypatch
):
    import onebyone.commands.explain as explain

    both = tmp_path / "both"
    argv = ["explain", "depth", "--save-figures", str(both), "--html", str(both)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(both / "index.html") in out and f"figure: {both / 'depth.png'}" in out
    assert listing(both) == ["data.js", "depth.png", "explorer.js", "index.html", "style.css"]
    assert stat.S_IMODE((both / "depth.png").stat().st_mode) == 0o600 & ~current_umask()
    assert stat.S_IMODE((both / "index.html").stat().st_mode) == 0o644 & ~current_umask()

    def broken(name, result, directory):
        (Path(directory) / f"{name}.png").write_bytes(b"half")
        raise RuntimeError(f"drawing failed in {directory}")

    monkeypatch.setattr(explain, "save_topic_figure", broken)
    other = tmp_path / "other"
    assert main(["explain", "depth", "--save-figures", str(other), "--html", str(other)]) == 1
    err = one_line_error(capsys, "explain")
    assert err.endswith(f"error: drawing failed in {other}\n"), err
    assert not other.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["both"]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_analyze_files_are_private(tmp_path: Path, capsys):
    stem = str(tmp_path / "p")
    old = os.umask(0o002)  # a permissive umask does not widen them
    try:
        assert main(["analyze", *SMALL, "--by-category", "--json", stem, "--csv", stem]) == 0
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "p.json": 0o600,
        "p.csv": 0o600,
    }


def test_optimize_checks_that_every_output_can_be_written_before_any_work(
    tmp_path: Path, capsys, monkeypatch
):
    import onebyone.commands.optimize as optimize

    monkeypatch.setattr(optimize, "resolve_model", lambda *a: pytest.fail("work started"))
    onnx = str(tmp_path / "a.onnx")
    assert main(["optimize", *SMALL, "--onnx", onnx, "--openvino", "/sys/onebyone-ir"]) == 2
    err = one_line_error(capsys, "optimize")
    assert "argument `--openvino`. Expected a folder in a folder this process can write" in err
    assert listing(tmp_path) == []


def test_optimize_leaves_no_onnx_file_when_openvino_fails(tmp_path: Path, capsys, monkeypatch):
    import onebyone.commands.optimize as optimize

    def fails(program, inputs, folder, **kwargs):
        (Path(folder) / "model.xml").write_text("<half/>")
        raise PermissionError(13, "Permission denied", str(Path(folder) / "model.bin"))

    monkeypatch.setattr(optimize, "save_openvino", fails)
    argv = ["optimize", *SMALL, "--engine", "torch", "--onnx", str(tmp_path / "a")]
    assert main([*argv, "--openvino", str(tmp_path / "ir")]) == 1
    err = one_line_error(capsys, "optimize")
    assert str(tmp_path / "ir" / "model.bin") in err and ".partial" not in err, err
    assert listing(tmp_path) == []


def test_demo_refuses_existing_files_before_the_tour(tmp_path: Path, capsys, monkeypatch):
    import onebyone.commands.demo as demo

    monkeypatch.setattr(demo, "_worked_example", lambda console: pytest.fail("the tour started"))
    (tmp_path / "summary.json").write_text("an earlier tour's")
    assert main(["demo", "--quick", "--no-figures", "--out", str(tmp_path)]) == 2
    assert "argument `--out`. Expected a folder without summary.json in it (or --force" in (
        one_line_error(capsys, "demo")
    )
    assert main(["demo", "--quick", "--out", ""]) == 2
    assert "Received --out=''." in one_line_error(capsys, "demo")
    assert listing(tmp_path) == ["summary.json"]
