"""to_onnx / export_onnx and OnnxRuntimeModule: the graph written directly, run by ONNX Runtime."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onebyone as obo
from onebyone.nn import Conv1x1
from onebyone.nn.blocks import channel_shuffle
from onebyone.transforms import OnnxExportError, OnnxRuntimeModule, export_onnx, to_onnx
from onebyone.transforms.onnx_export import build_onnx
from onebyone.transforms.verify import compare
from transform_models import AddAfterActivation, LinearHead, ResidualBlock, randomize_norms


def _run_onnx(data: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]  # type: ignore[no-any-return]


class Mixed(nn.Module):
    """Every op family the writer knows, once."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1)
        self.bn = nn.BatchNorm2d(8)  # left unfolded on purpose
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, count_include_pad=False)
        self.pw = Conv1x1(8, 8, groups=2, activation="hardswish")
        self.lrelu = nn.LeakyReLU(0.01)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lrelu(self.bn(self.stem(x)))
        y = self.pool(y)
        y = channel_shuffle(self.pw(y), 2) * torch.sigmoid(y) - 0.5
        z = torch.cat([F.relu6(y), self.gelu(y).tanh()], dim=1)  # (N, 16, h, w)
        z = self.avg(z)
        v = z.mean((2, 3))  # (N, 16)
        w = F.adaptive_avg_pool2d(z, 1).flatten(1).transpose(0, 1).transpose(0, 1)
        return self.fc(F.silu(v + w) / 2.0)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (Mixed(), (2, 3, 20, 18)),
        (ResidualBlock(projection=True), (1, 16, 7, 7)),
        (AddAfterActivation(), (2, 8, 5, 5)),
        (LinearHead(), (3, 8, 4, 4)),
    ],
    ids=["mixed", "residual", "add-after", "linear-head"],
)
def test_onnx_runtime_reproduces_the_model(model: nn.Module, shape: tuple[int, ...]) -> None:
    model = randomize_norms(model)
    x = torch.randn(shape)
    data = to_onnx(model, x).SerializeToString()
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run_onnx(data, x), expected, rtol=1e-4, atol=1e-5)


def test_fused_model_exports_with_its_epilogues() -> None:
    model = randomize_norms(ResidualBlock())
    fused = obo.fuse_epilogues(model)
    x = torch.randn(2, 16, 6, 6)
    proto = to_onnx(fused, x)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 3 and "BatchNormalization" not in ops
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(
        _run_onnx(proto.SerializeToString(), x), expected, rtol=1e-4, atol=1e-5
    )


def test_external_constants_stay_out_of_the_protobuf() -> None:
    model = randomize_norms(ResidualBlock(64, 32))
    x = torch.randn(1, 64, 4, 4)
    proto, arrays = build_onnx(model, x, external=True)
    full, _ = build_onnx(model, x, external=False)
    assert arrays and all(a.nbytes >= 1024 for a in arrays.values())
    saved = len(full.SerializeToString()) - len(proto.SerializeToString())
    assert saved > 0.9 * sum(a.nbytes for a in arrays.values())  # less the references


def test_unsupported_operations_are_named() -> None:
    class Sorts(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(x, dim=1).values

    with pytest.raises(OnnxExportError, match="sort"):
        to_onnx(Sorts().eval(), torch.randn(2, 3))


def test_export_onnx_falls_back_to_torch_onnx() -> None:
    class Cumulative(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, dim=1)

    x = torch.randn(2, 5)
    data, how = export_onnx(Cumulative().eval(), x)
    assert how == "torch.onnx"
    np.testing.assert_allclose(_run_onnx(data, x), torch.cumsum(x, 1).numpy(), rtol=1e-6)
    data, how = export_onnx(nn.Sequential(nn.Linear(5, 2)).eval(), x)
    assert how == "onebyone"


def _ort_module(fallback: nn.Module | None) -> tuple[OnnxRuntimeModule, nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    proto, arrays = build_onnx(model, x, external=True)
    module = OnnxRuntimeModule(
        proto.SerializeToString(), arrays, input_shapes=[(2, 3, 8, 8)],
        output_shapes=[(2, 4, 6, 6)], fallback=fallback,
    )  # fmt: skip
    return module, model, x


def test_onnxruntime_module_runs_other_shapes_through_its_fallback() -> None:
    module, model, x = _ort_module(fallback=None)
    module.fallback = model
    with torch.inference_mode():
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-5)
        small = torch.randn(1, 3, 5, 5)
        torch.testing.assert_close(module(small), model(small))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(module(channels_last), model(x), rtol=1e-5, atol=1e-5)


def test_onnxruntime_module_without_fallback_names_the_shapes() -> None:
    module, _, _ = _ort_module(fallback=None)
    with pytest.raises(
        ValueError,
        match=r"argument `inputs`\. Expected float32 CPU tensors of shapes \[\(2, 3, 8, 8\)\]",
    ):
        module(torch.randn(1, 3, 8, 8))


def test_onnxruntime_module_copies_and_pickles() -> None:
    module, model, x = _ort_module(fallback=None)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), model(x), rtol=1e-5, atol=1e-5)


# one model per family: resnet101/152 repeat resnet50's blocks and only cost time
FAMILIES = [name for name in obo.list_models() if name not in ("resnet101", "resnet152")]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_builtin_family_exports(name: str) -> None:
    model = randomize_norms(obo.create_model(name))
    folded = obo.fold_batchnorm(model)
    x = torch.randn(1, 3, 32, 32)
    proto, arrays = build_onnx(folded, x, external=True)
    with torch.inference_mode():
        expected = model(x)
        module = OnnxRuntimeModule(
            proto.SerializeToString(), arrays, input_shapes=[tuple(x.shape)],
            output_shapes=[tuple(expected.shape)],
        )  # fmt: skip
        got = module(x)
    # norm-wise: deep nets with random norms reach large magnitudes
    assert compare(expected, got, rtol=1e-4, atol=0.0).ok
