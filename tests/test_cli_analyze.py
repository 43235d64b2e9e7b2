"""``onebyone analyze``: tables, files, weights refused safely, one-line errors."""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import onebyone as obo
from onebyone.cli import main
from onebyone.commands._common import load_weights
from onebyone.profiling import MachinePeak
from onebyone.profiling import peak as peak_module

from helpers import Tokens

CONV = ["onebyone.nn:Conv1x1", "--option", "in_channels=3", "--option", "out_channels=8"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onebyone analyze: error: "), err
    assert "Traceback" not in err
    return err


def test_factory_model_with_options(capsys):
    assert main(["analyze", *CONV, "--input", "1x3x8x8"]) == 0
    out = capsys.readouterr().out
    assert "onebyone analyze onebyone.nn:Conv1x1" in out and "input 1x3x8x8" in out
    assert "convention: MAC = one multiply-accumulate; FLOPs = 2 x MACs" in out
    assert "conv1x1" in out and "pointwise" in out
    # 8 filters of depth 3 at 64 pixels; 8*3 weights + 8 biases
    assert "params 32 " in out and "MACs 1,536 " in out and "bias adds 512," in out
    assert "predicted " in out and " us" in out  # a tiny layer: microseconds


def test_registered_model_by_category(capsys):
    assert main(["analyze", "squeezenet1_1", "--input", "1x3x64x64", "--by-category"]) == 0
    out = capsys.readouterr().out
    assert "every counted layer" not in out  # no per-layer table
    assert "share by category" in out
    assert "params 1,235,496 " in out  # the published figure
    for category in obo.profiling.CATEGORIES:
        assert category in out


def test_top_n_and_output_files(capsys, tmp_path):
    paths = {k: tmp_path / f"profile.{k}" for k in ("json", "csv", "png")}
    code = main(["analyze", "squeezenet1_1", "--input", "1x3x64x64", "--top", "3",
                 "--json", str(paths["json"]), "--csv", str(paths["csv"]),
                 "--plot", str(paths["png"])])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "the 3 layers with the most MACs" in out
    saved = json.loads(paths["json"].read_text())
    assert saved["convention"] == obo.CONVENTION
    profile = obo.Profile.from_json(paths["json"].read_text())
    assert profile.total.params == 1_235_496
    assert f"MACs {profile.total.macs:,} " in out
    lines = paths["csv"].read_text().splitlines()
    assert len(lines) == 1 + len(profile.layers)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["squeezenet1_1", "--input", "1x3xabc"],
         r"argument `--input`. Expected a shape of positive ints joined by 'x', such as "
         r"1x3x224x224. Received --input='1x3xabc'."),
        (["squeezenet1_1", "--input", "0x3x8x8"], r"argument `--input`"),
        (["resnet5"], r"argument `MODEL`. Expected one of .*resnet50.*, timm:NAME, "
                      r"torchvision:NAME or package.module:factory"),
        (["no_such_package.models:build"], r"`MODEL`. .*No module named 'no_such_package'"),
        (["onebyone.nn:Nope"], r"argument `MODEL`. .*Nope"),
        (["builtins:dict"], r"Expected a factory returning a torch.nn.Module"),
        (["squeezenet1_1", "--option", "wings"], r"argument `--option`. Expected key=value"),
        (["squeezenet1_1", "--option", "wings=2"],
         r"argument `--option`. Expected options that squeezenet1_1 accepts"),
        ([*CONV, "--option", "wings=2"],
         r"argument `--option`. Expected keyword arguments that onebyone.nn:Conv1x1 accepts "
         r"\(in_channels, out_channels, stride, groups, bias, activation, device, dtype\)"),
        (["squeezenet1_1", "--top", "0"], r"argument `--top`. Expected a positive int"),
        ([*CONV, "--peak", "fast"],
         r"argument `--peak`. Expected 'measure' or GFLOPS,GBPS \(two positive numbers, such as "
         r"480,20\). Received --peak='fast'"),
        ([*CONV, "--peak", "480,0"], r"argument `--peak`. .* Received --peak='480,0'"),
        (["squeezenet1_1", "--input", "1x4x64x64"],
         r"the model rejected --input 1x4x64x64: RuntimeError: Given groups=1"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(capsys, argv, message):
    assert main(["analyze", *argv]) == 2
    err = one_line_error(capsys)
    assert re.search(message, err), err


def test_parameters_read_only_through_data_moves_are_in_the_total(capsys):
    # cls_token through expand and cat, a bias table through indexing: read, so counted;
    # `unread` is only looked at for its shape: the one parameter reported as never read
    assert main(["analyze", "helpers:Tokens", "--input", "2x4x8", "--peak", "480,20"]) == 0
    out = capsys.readouterr().out
    model = Tokens()
    read = sum(t.numel() for name, t in model.named_parameters() if name != "unread")
    assert f"params {read:,} " in out
    assert "parameters never read in this pass (not in the total): 8 in unread (8)" in out
    assert "scaled_dot_product_attention" in out and "attention" in out
    assert "calls seen but not counted" not in out


def test_the_peak_used_is_named(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []

    def fake(device: torch.device) -> MachinePeak:
        measured.append(device)
        return MachinePeak(250.0, 12.5, "fake engine", "cpu", origin="measured", date="2031-02-03")

    monkeypatch.setattr(peak_module, "_measure", fake)
    cache = tmp_path / "onebyone" / "peak.json"
    runs = {
        "measured": [],  # nothing cached yet: measured once, then cached
        "cached": [],
        "given": ["--peak", "480,20"],
        "again": ["--peak", "measure"],
    }
    outs = {}
    for label, extra in runs.items():
        assert main(["analyze", *CONV, "--input", "1x3x8x8", *extra]) == 0
        outs[label] = " ".join(capsys.readouterr().out.split())  # lines rejoined where rich wraps
    assert len(measured) == 2  # the first run and --peak measure
    assert (
        f"roofline: 250.0 GFLOP/s, 12.5 GB/s (ridge 20.0 FLOP/B), measured now on this cpu "
        f"with fake engine, cached in {cache} " in outs["measured"]
    )
    assert (
        "roofline: 250.0 GFLOP/s, 12.5 GB/s (ridge 20.0 FLOP/B), measured on 2031-02-03 on "
        f"this cpu with fake engine, cached in {cache} " in outs["cached"]
    )
    assert "roofline: 480.0 GFLOP/s, 20.0 GB/s (ridge 24.0 FLOP/B), given " in outs["given"]
    assert "roofline: 250.0 GFLOP/s, 12.5 GB/s (ridge 20.0 FLOP/B), measured now" in outs["again"]

    monkeypatch.setenv("ONEBYONE_PEAK_GFLOPS", "100")
    monkeypatch.setenv("ONEBYONE_PEAK_GBPS", "10")
    assert main(["analyze", *CONV, "--input", "1x3x8x8"]) == 0
    assert "from ONEBYONE_PEAK_GFLOPS and ONEBYONE_PEAK_GBPS" in " ".join(
        capsys.readouterr().out.split()
    )
    assert len(measured) == 2


class Payload:
    """Unpickling this would call ``open(path, "w")``: it creates a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def conv_state(out_channels: int = 8) -> dict[str, torch.Tensor]:
    return obo.nn.Conv1x1(3, out_channels).state_dict()


def test_weights_load_from_safetensors_and_torch_checkpoints(tmp_path, capsys):
    state = conv_state()
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pt")
    torch.save({"state_dict": state, "epoch": torch.tensor(3)}, tmp_path / "wrapped.pt")
    for name in ("w.safetensors", "w.pt", "wrapped.pt"):
        loaded = load_weights(str(tmp_path / name))
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        assert (
            main(["analyze", *CONV, "--input", "1x3x4x4", "--weights", str(tmp_path / name)]) == 0
        )
    capsys.readouterr()


def test_weights_of_another_architecture_are_refused(tmp_path, capsys):
    torch.save(conv_state(out_channels=16), tmp_path / "wide.pt")
    assert main(["analyze", *CONV, "--weights", str(tmp_path / "wide.pt")]) == 2
    assert "size mismatch for weight" in one_line_error(capsys)
    save_file({**conv_state(), "extra": torch.zeros(1)}, tmp_path / "extra.safetensors")
    assert main(["analyze", *CONV, "--weights", str(tmp_path / "extra.safetensors")]) == 2
    assert "1 unexpected (first extra)" in one_line_error(capsys)
    save_file({"weight": conv_state()["weight"]}, tmp_path / "partial.safetensors")
    assert main(["analyze", *CONV, "--weights", str(tmp_path / "partial.safetensors")]) == 2
    assert "1 missing (first bias)" in one_line_error(capsys)


def test_missing_and_corrupt_weights_are_refused(tmp_path, capsys):
    assert main(["analyze", *CONV, "--weights", str(tmp_path / "absent.pt")]) == 2
    assert "Expected an existing file" in one_line_error(capsys)
    (tmp_path / "junk.pt").write_bytes(bytes(range(256)) * 4)
    assert main(["analyze", *CONV, "--weights", str(tmp_path / "junk.pt")]) == 2
    assert "unreadable" in one_line_error(capsys)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert main(["analyze", *CONV, "--weights", str(tmp_path / "junk.safetensors")]) == 2
    assert "unreadable" in one_line_error(capsys)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert main(["analyze", *CONV, "--weights", str(tmp_path / "list.pt")]) == 2
    assert "Expected a state dict" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        ("torch.save", "refused, loading it would unpickle arbitrary objects (Unsupported global"),
        ("pickle.dump", "unreadable as a weights-only checkpoint"),
    ],
)
def test_pickled_objects_are_refused_and_never_run(tmp_path, capsys, writer, message):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    payload = {"weight": Payload(str(marker))}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        with evil.open("wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    assert main(["analyze", *CONV, "--weights", str(evil)]) == 2
    assert message in one_line_error(capsys)
    assert not marker.exists()


def test_python_m_exit_code_and_no_traceback(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": Payload(str(marker))}, evil)
    bad = subprocess.run(
        [sys.executable, "-m", "onebyone", "analyze", *CONV, "--weights", str(evil)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    assert "refused" in bad.stderr
    assert not marker.exists()


def test_demo_why_one_by_one_section(monkeypatch):
    from rich.console import Console

    from onebyone.commands import demo

    monkeypatch.setattr(obo, "list_models", lambda: ["nin", "resnet152", "squeezenet1_1"])
    console = Console(file=io.StringIO(), width=200)
    demo._why_one_by_one(console, quick=True)
    text = console.file.getvalue()
    # GoogLeNet's 5x5 branch: 120,422,400 MACs direct, 2,408,448 + 10,035,200 with the 1x1 first
    for number in ("120,422,400", "2,408,448", "10,035,200", "12,443,648", "153,632", "15,920"):
        assert number in text
    assert "cuts MACs 9.7x and parameters 9.7x" in text
    assert "--quick leaves out resnet152" in text
    squeeze = obo.profile(obo.create_model("squeezenet1_1"), (1, 3, 224, 224))
    share = squeeze.by_category()["pointwise"].macs / squeeze.total.macs
    row = next(line for line in text.splitlines() if "│ squeezenet1_1 " in line)
    assert f"{squeeze.total.macs:,}" in row and f"{share:.0%}" in row
    assert "32x32" in next(line for line in text.splitlines() if "│ nin " in line)
