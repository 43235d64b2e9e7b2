"""Session set-up and shared fixtures: deterministic seeds for every test.

The machine-peak cache goes to a folder of this session, never the user's
home, and no peak is set through the environment unless a test sets one.

Without CUDA the Triton kernels run through Triton's interpreter. Triton fixes
that choice when it is first imported, and other tests (torch.compile's
Inductor) import it too, so the variable is set here, before any test module.

``optimize`` times its candidates in short blocks here: no test depends on which
candidate a timing favours, and blocks of a benchmark's length would spend minutes of
the suite on waiting (the timing itself is tested with its own values).
"""

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

PEAK_VARIABLES = ("ONEBYONE_PEAK_GFLOPS", "ONEBYONE_PEAK_GBPS")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _peak_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", *PEAK_VARIABLES)}
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    for name in PEAK_VARIABLES:
        os.environ.pop(name, None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _short_timing_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from onebyone.deploy import timing

    monkeypatch.setattr(timing, "WARMUP_S", 0.02)
    monkeypatch.setattr(timing, "BLOCK_S", 0.05)
    monkeypatch.setattr(timing, "LOAD_WINDOW_S", 0.01)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def always_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let frozen models pack weights of any size (products under
    ``packing_min_macs`` multiply-adds never pack), so packing is tested on small layers."""
    import dataclasses

    from onebyone.kernels import routing

    monkeypatch.setattr(
        routing, "THRESHOLDS", dataclasses.replace(routing.THRESHOLDS, packing_min_macs=0)
    )


@pytest.fixture(scope="session")
def explorer_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The explorer page, written once for the session: the path of its ``index.html``."""
    from onebyone.explain import write_explorer

    return write_explorer(tmp_path_factory.mktemp("explorer"))
