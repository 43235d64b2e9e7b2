"""The command line: --help, --version, demo, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

import onebyone
from onebyone.cli import main


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onebyone", *args], capture_output=True, text=True, timeout=300
    )


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert onebyone.__version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_python_m_is_the_same_command():
    out = run_module("--help")
    assert out.returncode == 0 and "demo" in out.stdout


def test_unknown_subcommand_is_a_usage_error():
    out = run_module("frobnicate")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "invalid choice" in out.stderr


def test_library_errors_become_one_line(capsys, monkeypatch):
    import onebyone.commands.demo as demo

    def boom(args):
        raise ValueError("Invalid value for argument `x`. Expected 1. Received x=2.\nmore detail")

    monkeypatch.setattr(demo, "run", boom)  # register() binds the module's run at parse time
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "onebyone demo: error: Invalid value for argument `x`. Expected 1. Received x=2.\n"
    )
