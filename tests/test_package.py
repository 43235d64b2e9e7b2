"""The package as installed: what `import *` binds, and what works with only the core deps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import onebyone as obo


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
