"""Session set-up and shared fixtures: deterministic seeds for every test.

Without CUDA the Triton kernels run through Triton's interpreter. Triton fixes
that choice when it is first imported, and other tests (torch.compile's
Inductor) import it too, so the variable is set here, before any test module.
"""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def always_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the oneDNN kernel pack weights of any size (it skips products under 2^21
    multiply-adds), so the packed-weight cache can be tested on small layers."""
    from onebyone.kernels import onednn

    monkeypatch.setattr(onednn, "_PACKING_MIN_MACS", 0)
