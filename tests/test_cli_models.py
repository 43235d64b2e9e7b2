"""MODEL on the command line: user factories that fail, timm:NAME and torchvision:NAME."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import onebyone as obo
from onebyone.cli import main

USER_MODULES = {
    "obo_factories": """
        import torch

        def divide(width=4):
            return width / 0

        def value_error():
            raise ValueError("width must be even\\nsecond line")

        def conv(width=4):
            return torch.nn.Conv2d(3, width, 1)
    """,
    "obo_missing_dependency": "import obo_no_such_dependency\n",
    "obo_fails_at_import": "raise RuntimeError('operator torchvision::nms does not exist')\n",
}


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, source in USER_MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in USER_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def error(capsys: pytest.CaptureFixture[str], command: str = "analyze") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    prefix = f"onebyone {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) : -1]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["obo_factories:divide"], 1, "`obo_factories:divide` raised ZeroDivisionError: "
                                      "division by zero"),
        (["obo_factories:divide", "--option", "width=8"], 1,
         "`obo_factories:divide` raised ZeroDivisionError: division by zero"),
        (["obo_factories:value_error"], 1,
         "`obo_factories:value_error` raised ValueError: width must be even"),
        (["obo_missing_dependency:build"], 1,
         "importing `obo_missing_dependency` for MODEL `obo_missing_dependency:build` failed: "
         "ModuleNotFoundError: No module named 'obo_no_such_dependency'"),
        (["obo_fails_at_import:build"], 1,
         "importing `obo_fails_at_import` for MODEL `obo_fails_at_import:build` failed: "
         "RuntimeError: operator torchvision::nms does not exist"),
        (["obo_no_such_module:build"], 2,
         "Invalid value for argument `MODEL`. Expected a registered model name "
         "(onebyone.list_models()), timm:NAME, torchvision:NAME or package.module:factory. "
         "Received MODEL='obo_no_such_module:build': No module named 'obo_no_such_module'."),
    ],
)  # fmt: skip
def test_failures_of_user_code_are_one_line_naming_the_factory(
    user_modules, capsys, argv, code, message
):
    assert main(["analyze", *argv, "--input", "1x3x8x8"]) == code
    assert error(capsys) == message
    assert main(["optimize", *argv, "--input", "1x3x8x8"]) == code
    assert error(capsys, "optimize") == message


def test_a_working_user_factory_still_runs(user_modules, capsys):
    assert main(["analyze", "obo_factories:conv", "--option", "width=8", "--input", "1x3x4x4"]) == 0
    assert "params 32 " in capsys.readouterr().out  # 8 * 3 weights + 8 biases


def test_unexpected_library_errors_are_one_line(monkeypatch, capsys):
    import onebyone.commands.analyze as analyze

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero\nmore")

    monkeypatch.setattr(analyze, "profile", broken)
    monkeypatch.delenv("ONEBYONE_DEBUG", raising=False)
    assert main(["analyze", "squeezenet1_1", "--input", "1x3x32x32"]) == 1
    assert error(capsys) == (
        "ZeroDivisionError: float division by zero (run with ONEBYONE_DEBUG=1 for the traceback)"
    )
    monkeypatch.setenv("ONEBYONE_DEBUG", "1")
    assert main(["analyze", "squeezenet1_1", "--input", "1x3x32x32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in broken" in err
    assert err.endswith("onebyone analyze: error: ZeroDivisionError: float division by zero\n")


def test_python_m_prints_one_line_for_a_failing_factory(user_modules):
    package_root = str(Path(obo.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_modules), package_root])}
    env.pop("ONEBYONE_DEBUG", None)
    argv = [sys.executable, "-m", "onebyone", "analyze", "obo_factories:divide"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    assert done.stderr == (
        "onebyone analyze: error: `obo_factories:divide` raised ZeroDivisionError: "
        "division by zero\n"
    )
    env["ONEBYONE_DEBUG"] = "1"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and "Traceback" in done.stderr and "return width / 0" in done.stderr


# ---------------------------------------------------------------- timm:NAME, torchvision:NAME


def external(package: str):
    from onebyone.models.external import import_timm, import_torchvision

    try:
        return import_timm() if package == "timm" else import_torchvision()
    except ImportError as exc:
        pytest.skip(f"{package} is not installed here ({exc})")


def test_analyze_a_torchvision_model(capsys):
    external("torchvision")
    argv = ["analyze", "torchvision:squeezenet1_1", "--input", "1x3x64x64", "--by-category"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "onebyone analyze torchvision:squeezenet1_1" in out
    assert "params 1,235,496 " in out  # torchvision's published count
    ours = obo.profile(obo.create_model("squeezenet1_1"), (1, 3, 64, 64)).total
    assert f"MACs {ours.macs:,} " in out  # the built-in copy of the same architecture


def test_timm_model_with_options_in_analyze_and_optimize(capsys):
    timm = external("timm")
    argv = ["timm:test_resnet", "--input", "1x3x32x32", "--option", "num_classes=7"]
    assert main(["analyze", *argv, "--by-category"]) == 0
    expected = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=7).parameters())
    assert f"params {expected:,} " in capsys.readouterr().out
    assert main(["optimize", *argv, "--engine", "torch"]) == 0
    out = capsys.readouterr().out
    assert "onebyone optimize timm:test_resnet" in out and "max rel error vs original" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["timm:test_resnet", "--option", "wings=2"], 2,
         r"^Invalid value for argument `--option`\. Expected options that timm:test_resnet "
         r"accepts\. Received \{'wings': 2\}: .*wings"),
        (["timm:no_such_architecture"], 2,
         r"^Invalid value for argument `MODEL`\. Expected a timm architecture"),
        (["torchvision:no_such_builder"], 2,
         r"^Invalid value for argument `MODEL`\. Expected a torchvision\.models builder name"),
    ],
)  # fmt: skip
def test_bad_external_models_are_one_line(capsys, argv, code, message):
    external(argv[0].partition(":")[0])
    assert main(["analyze", *argv, "--input", "1x3x32x32"]) == code
    err = error(capsys)
    assert re.search(message, err), err


@pytest.mark.parametrize("package", ["timm", "torchvision"])
def test_a_missing_package_names_the_pip_install(monkeypatch, capsys, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    assert main(["analyze", f"{package}:resnet18"]) == 1
    message = error(capsys)
    assert message.startswith(f"{package}:resnet18 needs the `{package}` package: pip install ")
    assert "pip install 'onebyone[models]'" in message
