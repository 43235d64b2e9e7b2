"""The package as installed: what `import *` binds, and what works with only the core deps."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

import onebyone as obo
from onebyone._torchvision_ops import PTH_NAME


def test_star_import_keeps_numpy_bound_to_numpy():
    namespace: dict[str, object] = {}
    exec("import numpy\nfrom onebyone import *", namespace)
    assert namespace["numpy"] is np
    assert namespace["conv1x1"] is obo.conv1x1 and namespace["create_model"] is obo.create_model
    assert "numpy" not in obo.__all__
    x = np.arange(12.0).reshape(3, 2, 2)
    np.testing.assert_array_equal(obo.numpy.conv1x1(x, np.ones((1, 3)))[0], x.sum(axis=0))


# Run in a fresh interpreter where matplotlib and scikit-learn cannot be imported, as after
# `pip install onebyone` without the [explain] extra.
WITHOUT_EXPLAIN_EXTRA = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path

    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("matplotlib", "sklearn"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    import numpy as np
    import torch
    import onebyone as obo
    from onebyone.cli import main

    tmp = Path(sys.argv[1])
    found = {}
    x = torch.randn(1, 8, 4, 4)
    found["op"] = obo.conv1x1(x, torch.eye(8)).sub(x).abs().max().item()
    found["numpy_op"] = float(obo.numpy.conv1x1(np.ones((2, 3, 3)), np.ones((1, 2))).max())
    found["params"] = obo.profile(obo.create_model("squeezenet1_1"), (1, 3, 64, 64)).total.params
    runs = {
        "analyze": ["analyze", "squeezenet1_1", "--input", "1x3x64x64", "--by-category"],
        "explain": ["explain", "fusion"],
        "plot": ["analyze", "squeezenet1_1", "--input", "1x3x64x64", "--json",
                 str(tmp / "p.json"), "--plot", str(tmp / "p.png")],
        "explain_save": ["explain", "fusion", "--save-figures", str(tmp / "figures")],
        "demo": ["demo", "--quick", "--out", str(tmp / "tour")],
        "demo_no_figures": ["demo", "--quick", "--no-figures", "--out", str(tmp / "tour")],
    }
    for name, argv in runs.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        found[name] = {"code": code, "out": out.getvalue(), "err": err.getvalue()}
    found["loaded"] = sorted(
        m for m in sys.modules if m.partition(".")[0] in ("matplotlib", "sklearn")
    )
    found["files"] = sorted(p.name for p in tmp.iterdir())
    print(json.dumps(found))
    """
)


def test_core_works_without_matplotlib_and_sklearn(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(obo.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXPLAIN_EXTRA, str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["loaded"] == []
    assert found["op"] < 1e-6 and found["numpy_op"] == 2.0
    assert found["params"] == 1_235_496
    assert found["analyze"]["code"] == 0 and "params 1,235,496 " in found["analyze"]["out"]
    assert found["explain"]["code"] == 0 and "(3, 2) only for the 3" in found["explain"]["out"]
    hint = "pip install 'onebyone[explain]'"
    expected = {
        "plot": "onebyone analyze: error: --plot needs matplotlib",
        "explain_save": "onebyone explain: error: --save-figures needs matplotlib",
        "demo": "onebyone demo: error: onebyone demo (its digits data set) needs scikit-learn",
        "demo_no_figures": "onebyone demo: error: onebyone demo (its digits data set) needs",
    }
    for name, start in expected.items():
        run = found[name]
        assert run["code"] == 1 and run["out"] == "", (name, run)
        assert run["err"].startswith(start) and run["err"].count("\n") == 1, (name, run)
        assert run["err"].rstrip().endswith(hint), (name, run)
    assert found["files"] == []  # refused before any work: no --json, no folders


# ---------------------------------------------------------------- torchvision at start-up

IMPORT_TIMM_WITH_THE_START_UP_FILE = textwrap.dedent(
    """
    import sys
    purelib, site_dir = sys.argv[1:]
    sys.path.append(purelib)  # the packages, without running their .pth files (python -S)
    import site
    site.addsitedir(site_dir)  # runs the start-up file alone
    started = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "onebyone"))
    import timm, torchvision
    timm.create_model("resnet18", pretrained=False)
    print(started, "onebyone" in sys.modules)
    """
)


def _stamp_rule(makefile: str) -> list[str]:
    lines = makefile.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("$(STAMP):")))
    rule = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        rule.append(line.strip())
    return rule


def test_the_makefile_writes_the_torchvision_start_up_file(tmp_path: Path):
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    root = Path(obo.__file__).parents[2]
    rule = _stamp_rule((root / "Makefile").read_text())
    install = next(i for i, line in enumerate(rule) if "pip install" in line and "-e" in line)
    write = next(i for i, line in enumerate(rule) if "write_pth" in line)
    assert install < write < rule.index("touch $(STAMP)")  # after the package, every install
    command = rule[write]
    assert command.startswith('$(BIN)/python -c "') and command.endswith('"')
    # the Makefile's own command, run with a temporary site-packages folder
    code = f"import sysconfig; sysconfig.get_path = lambda *a, **k: {str(tmp_path)!r}\n"
    code += command.removeprefix('$(BIN)/python -c "').removesuffix('"')
    env = {**os.environ, "PYTHONPATH": str(Path(obo.__file__).parents[1])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in tmp_path.iterdir()] == [PTH_NAME]
    done = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_TIMM_WITH_THE_START_UP_FILE,
         sysconfig.get_path("purelib"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # interpreter start loads the hook alone: neither torch nor the onebyone package
    assert done.stdout.split() == ["['onebyone._torchvision_ops']", "False"]
    # an onebyone without the hook (another version) beside the file: nothing happens
    other = tmp_path / "other" / "onebyone"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    stale = (
        "import sys, site; sys.path.insert(0, sys.argv[1]); site.addsitedir(sys.argv[2]); "
        "print(sorted(m for m in sys.modules if m.startswith('onebyone')))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", stale, str(other.parent), str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "[]", "")


def test_timm_imports_in_the_makefiles_venv_without_onebyone():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    if not (Path(sysconfig.get_path("purelib")) / PTH_NAME).exists():
        pytest.skip(f"{PTH_NAME} is not installed here (a virtual environment not built by make)")
    done = subprocess.run(
        [sys.executable, "-c", "import sys, timm, torchvision; print('onebyone' in sys.modules)"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]
