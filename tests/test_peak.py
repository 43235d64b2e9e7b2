"""The machine's peak: measured only when asked, cached per machine with its date, overridable."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.profiling import (
    ENV_GBPS,
    ENV_GFLOPS,
    MachinePeak,
    cached_peak,
    machine_key,
    peak_cache_path,
)
from onebyone.profiling import peak as peak_module

MODEL = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
SHAPE = (1, 3, 16, 16)


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache folder of this test's own; the file ``peak_cache_path()`` names."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "onebyone" / "peak.json"


@pytest.fixture
def measurements(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Replace the benchmark by a fixed result; the list records each measurement asked for."""
    calls: list[torch.device] = []

    def fake(device: torch.device) -> MachinePeak:
        calls.append(device)
        return MachinePeak(300.0 + len(calls), 25.0, "fake engine", str(device),
                           origin="measured", date="2031-02-03")  # fmt: skip

    monkeypatch.setattr(peak_module, "_measure", fake)
    return calls


def test_profile_never_measures_unless_asked(cache, measurements):
    p = obo.profile(MODEL, SHAPE)
    assert measurements == []
    assert p.peak is None and p.time_s is None
    assert all(layer.time_s is None and layer.bound is None for layer in p.layers)
    assert "peak='measure'" in p.peak_note and ENV_GFLOPS in p.peak_note
    assert obo.Profile.from_json(p.to_json()) == p
    row = p.to_csv().splitlines()[1].split(",")
    assert row[-2:] == ["", ""]  # time_s and bound left empty
    assert not cache.exists()

    asked = obo.profile(MODEL, SHAPE, peak="measure")
    assert len(measurements) == 1 and asked.peak.origin == "measured"
    conv = asked.layers[0].cost
    assert asked.layers[0].time_s == pytest.approx(max(conv.flops / 301e9, conv.bytes_moved / 25e9))
    assert cache.exists()


def test_a_measured_peak_is_cached_with_its_date_for_this_machine(cache, measurements):
    assert cached_peak() is None
    first = obo.machine_peak()
    assert (first.gflops, first.origin, len(measurements)) == (301.0, "measured", 1)
    saved = json.loads(cache.read_text())
    assert saved["peaks"][machine_key()] == {"gflops": 301.0, "gbps": 25.0,
                                             "engine": "fake engine", "device": "cpu",
                                             "date": "2031-02-03"}  # fmt: skip

    again = obo.machine_peak()
    assert len(measurements) == 1  # read back, not measured again
    assert (again.gflops, again.gbps, again.origin, again.date) == (301.0, 25.0, "cached",
                                                                    "2031-02-03")  # fmt: skip
    p = obo.profile(MODEL, SHAPE)
    assert p.peak == again and len(measurements) == 1
    assert "measured on 2031-02-03 on this cpu with fake engine" in p.peak_note
    assert p.time_s == pytest.approx(sum(again.seconds(layer.cost) for layer in p.layers))

    fresh = obo.machine_peak(refresh=True)
    assert (fresh.gflops, len(measurements)) == (302.0, 2)
    assert cached_peak().gflops == 302.0


def test_the_environment_sets_the_peak(cache, measurements, monkeypatch):
    monkeypatch.setenv(ENV_GFLOPS, "480")
    monkeypatch.setenv(ENV_GBPS, "20.5")
    peak = obo.machine_peak()
    assert (peak.gflops, peak.gbps, peak.origin) == (480.0, 20.5, "environment")
    p = obo.profile(MODEL, SHAPE)
    assert p.peak == peak and measurements == [] and not cache.exists()
    assert p.peak_note.endswith(f"from {ENV_GFLOPS} and {ENV_GBPS}")
    assert obo.machine_peak(refresh=True).origin == "measured"  # asked to measure: measures

    monkeypatch.delenv(ENV_GBPS)
    with pytest.raises(ValueError, match=rf"argument `{ENV_GBPS}`. Expected a positive number "
                       rf"\(set with {ENV_GFLOPS}\). Received {ENV_GBPS}=''"):  # fmt: skip
        cached_peak()
    monkeypatch.setenv(ENV_GBPS, "fast")
    with pytest.raises(ValueError, match=rf"`{ENV_GBPS}`. .* Received {ENV_GBPS}='fast'"):
        obo.profile(MODEL, SHAPE)


def test_an_unreadable_cache_is_ignored_and_rewritten(cache, measurements):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring the unreadable peak cache"):
        assert cached_peak() is None
    with pytest.warns(UserWarning, match="ignoring the unreadable peak cache"):
        obo.machine_peak()
    assert json.loads(cache.read_text())["peaks"][machine_key()]["gflops"] == 301.0


def test_the_cache_lives_in_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert peak_cache_path() == tmp_path / "xdg" / "onebyone" / "peak.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert peak_cache_path() == tmp_path / "home" / ".cache" / "onebyone" / "peak.json"
    key = machine_key()
    assert key.startswith("cpu | ") and f"{os.cpu_count()} cores" in key
    assert f"torch {torch.__version__}" in key


def test_measuring_takes_the_fastest_engine_and_dates_it(cache):
    peak = obo.machine_peak(refresh=True)
    assert peak.origin == "measured" and peak.device == "cpu"
    assert peak.gflops > 1 and peak.gbps > 0.1
    assert peak.engine.startswith(("torch.matmul", "oneDNN 1x1 conv"))
    assert peak.date == datetime.date.today().isoformat()
    assert cached_peak() == MachinePeak(**{**peak.to_dict(), "origin": "cached"})


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda: obo.machine_peak("warp-drive"), ValueError, r"argument `device`"),
        (lambda: obo.machine_peak(refresh="yes"), TypeError,
         r"argument `refresh`. Expected True or False. Received refresh='yes'"),
        (lambda: MachinePeak(0.0, 1.0), ValueError,
         r"argument `gflops`. Expected a positive finite number. Received gflops=0.0"),
        (lambda: MachinePeak(1.0, "1"), TypeError, r"argument `gbps`. Expected a positive number"),
        (lambda: MachinePeak(1.0, 1.0, origin="guessed"), ValueError,
         r"argument `origin`. Expected one of 'given', 'environment', 'measured', 'cached'"),
    ],
)  # fmt: skip
def test_bad_input_is_named(call, kind, message):
    with pytest.raises(kind, match=message):
        call()
