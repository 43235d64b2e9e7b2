"""CLI errors in the user's terms: rejected inputs, option names, user modules, topics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onebyone.cli import main, option_names

SRC = str(Path(__file__).resolve().parents[1] / "src")


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"onebyone {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["analyze", "optimize"])
def test_an_input_a_timm_model_rejects_is_bad_input_naming_what_it_expects(command, capsys):
    from onebyone.models.external import import_timm

    try:
        import_timm()
    except ImportError as exc:
        pytest.skip(f"timm is not installed here ({exc})")
    assert main([command, "timm:vit_tiny_patch16_224", "--input", "1x3x256x256"]) == 2
    err = one_line_error(capsys, command)
    assert "the model rejected --input 1x3x256x256: AssertionError: Input height (256) " in err
    assert "timm:vit_tiny_patch16_224 expects 1x3x224x224 (its pretrained_cfg input_size)" in err


def test_an_input_a_built_in_model_rejects_is_bad_input(capsys):
    assert main(["analyze", "squeezenet1_1", "--input", "1x5x32x32"]) == 2
    err = one_line_error(capsys, "analyze")
    assert "the model rejected --input 1x5x32x32: RuntimeError: " in err
    assert "expects" not in err  # the model says nothing about its input size


def test_errors_name_the_options_not_the_library_arguments(capsys):
    argv = ["optimize", "squeezenet1_1", "--input", "1x3x32x32", "--engine", "torch"]
    assert main([*argv, "--tolerance", "2"]) == 2
    err = one_line_error(capsys, "optimize")
    assert "Invalid value for argument `--tolerance`." in err and "Received --tolerance=2.0." in err
    assert option_names(
        "Invalid value for argument `example_input`. Received example_input=3; "
        "max_tolerance=1 stays"
    ) == ("Invalid value for argument `--input`. Received --input=3; max_tolerance=1 stays")


def test_a_model_returning_none_names_the_model_argument(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "obo_none_net.py").write_text(
        "import torch\n\n"
        "class Nothing(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return None\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["optimize", "obo_none_net:Nothing", "--input", "1x3x8x8", "--engine", "torch"]
    assert main(argv) == 2
    err = one_line_error(capsys, "optimize")
    assert "Invalid value for argument `MODEL`. Expected a model that returns tensors" in err
    assert "`model`" not in err and "example_input" not in err and "--input" not in err


def test_a_user_module_in_the_current_folder_is_found(tmp_path: Path):
    (tmp_path / "obo_mynets.py").write_text(
        textwrap.dedent(
            """
            import torch

            def build():
                return torch.nn.Conv2d(3, 8, 1)
            """
        )
    )
    # as the installed `onebyone` script starts: its own folder first, not the current one
    runner = (
        "import sys; sys.path.pop(0); from onebyone.cli import main; "
        "sys.exit(main(['analyze', 'obo_mynets:build', '--input', '1x3x8x8', '--by-category',"
        " '--peak', '100,10']))"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "onebyone analyze obo_mynets:build" in out.stdout


def test_an_unknown_topic_lists_all_too(capsys):
    assert main(["explain", "foo"]) == 2
    err = one_line_error(capsys, "explain")
    assert "Invalid value for argument `TOPIC`. Expected one of 'worked-example'" in err
    assert "'depth', 'all'. Received TOPIC='foo'." in err
