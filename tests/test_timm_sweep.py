"""``optimize`` on architectures nobody here wrote: a sweep over timm models.

Each model (``pretrained=False``, norm statistics measured on a random batch and
perturbed at random, eval mode) is optimised on a non-torch engine: the result must
equal the original on batch 1 and batch 3 (within 1e-4, or ten times the model's own
float32 rounding where that is larger), the
original must be unchanged, and no norm that reads a convolution may be left in the
graph. ``make test`` runs a representative part; the whole sweep is
``make sweep`` (``pytest tests/test_timm_sweep.py -m "sweep or not sweep"``).
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import onebyone as obo
from onebyone.deploy import optimize
from onebyone.deploy.passes import count_norms_after_layers
from transform_models import assert_unchanged, snapshot

from helpers import calibrate_norms

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed"),
    pytest.mark.skipif(
        importlib.util.find_spec("onnxruntime") is None
        or importlib.util.find_spec("openvino") is None,
        reason="the sweep runs on onnxruntime and openvino",
    ),
]

# name -> input side (the smallest the architecture takes; fixed-size ones at their own)
REPRESENTATIVE = {"mobilenetv3_small_050": 96, "resnet18": 64}
SWEEP = {
    "resnet50": 96,
    "resnext50_32x4d": 96,
    "regnety_016": 96,
    "efficientnet_b0": 96,
    "mobilenetv3_large_100": 96,
    "mobilenetv2_100": 96,
    "ghostnet_100": 96,
    "convnext_tiny": 96,
    "densenet121": 96,
    "inception_v3": 299,
    "dla34": 96,
    "repvgg_a0": 96,
    "mobilevit_s": 256,
    "vit_small_patch16_224": 224,
    "xception41": 96,
    "efficientnet_lite0": 96,
    "mixnet_s": 96,
    "rexnet_100": 96,
    "cspresnet50": 96,
    "tf_efficientnetv2_b0": 96,
    "mnasnet_100": 96,
    "selecsls42b": 96,
    "dpn68": 96,
    "hrnet_w18_small": 96,
}
CASES = [pytest.param(name, side, id=name) for name, side in REPRESENTATIVE.items()] + [
    pytest.param(name, side, id=name, marks=pytest.mark.sweep) for name, side in SWEEP.items()
]


def own_rounding(model: torch.nn.Module, inputs: list[torch.Tensor]) -> float:
    """The model's own float32 error against float64 on ``inputs`` (relative to max |r|).

    Random weights leave some architectures ill-conditioned even with calibrated norms
    (tf_efficientnetv2_b0: float32 1e-3 off float64 at batch 3): no engine can be held
    closer to eager float32 than rounding lets eager be itself.
    """
    wide = copy.deepcopy(model).double()
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            exact, single = wide(x.double()), model(x).double()
            worst = max(worst, float((single - exact).abs().max() / exact.abs().max()))
    return worst


@pytest.mark.parametrize(("name", "side"), CASES)
def test_optimize_keeps_a_timm_model_exact_on_any_batch(name: str, side: int) -> None:
    from onebyone.models.external import load_external

    torch.manual_seed(0)
    model = calibrate_norms(load_external(f"timm:{name}"), torch.randn(4, 3, side, side))
    before = snapshot(model)
    inputs = [torch.randn(batch, 3, side, side) for batch in (1, 3)]
    # the default 1e-4, or ten times the model's own float32 rounding where that is larger
    tolerance = max(1e-4, 10 * own_rounding(model, inputs))
    engine = "onnxruntime" if len(name) % 2 else "openvino"  # both engines, across the sweep
    fast, report = optimize(model, inputs[0], engine=engine, measure=False, tolerance=tolerance)
    assert report.engine == engine and report.dynamic_batch, report
    for x in inputs:
        check = obo.verify(model, fast, x, rtol=tolerance, atol=1e-5)
        assert check.ok, check
    assert_unchanged(model, before)
    assert report.program is not None
    assert count_norms_after_layers(report.program) == 0, report.passes[0]
    has_norms = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert (report.passes[0].count > 0) == has_norms
