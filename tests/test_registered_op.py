"""``torch.ops.onebyone.conv1x1``: the op as the PyTorch 2 stack sees it.

Export with a dynamic batch, autograd through the registered formula, the FLOP
formula, ``torch.compile``, and the lowering into ONNX Runtime and OpenVINO.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import onebyone as obo
from onebyone.nn import Conv1x1

from helpers import ACTS, assert_close

needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript")),
    reason="onnxruntime and onnxscript are not installed",
)
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed"
)


class _Block(nn.Module):
    """Two Conv1x1 layers, the second with a strided, grouped residual epilogue."""

    def __init__(self) -> None:
        super().__init__()
        self.a = Conv1x1(8, 12, activation="silu")
        self.b = Conv1x1(12, 12, stride=2, groups=3, activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h, residual=h[:, :, ::2, ::2])


def _dynamic_export(model: nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model, (x,), dynamic_shapes=({0: batch},))


def test_export_with_a_dynamic_batch_keeps_the_registered_op() -> None:
    model = _Block().eval()
    program = _dynamic_export(model, torch.randn(2, 8, 6, 6))
    ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.onebyone.conv1x1.default) == 2
    module = program.module()
    for n in (1, 3, 5):
        x = torch.randn(n, 8, 6, 6)
        assert_close(module(x), model(x))


def test_compiled_channels_last_model_keeps_its_layout() -> None:
    torch._dynamo.reset()
    model = _Block().eval()
    x = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = torch.compile(model, backend="aot_eager")(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, model(x))


def test_decompositions_lower_to_aten_and_compute_the_same() -> None:
    model = _Block().eval()
    program = _dynamic_export(model, torch.randn(2, 8, 5, 7))
    plain = program.run_decompositions(obo.decompositions())
    targets = {str(n.target) for n in plain.graph.nodes if n.op == "call_function"}
    assert not any("onebyone" in t for t in targets)
    assert "aten.convolution.default" in targets
    x = torch.randn(3, 8, 5, 7)
    assert_close(plain.module()(x), model(x))


@pytest.mark.parametrize("activation", list(ACTS))
def test_registered_autograd_matches_gradcheck(activation: str | None) -> None:
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 6, 2, 3, dtype=torch.float64, requires_grad=True)

    def op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torch.ops.onebyone.conv1x1(x, w, b, [2, 2], 2, activation, r)

    assert torch.autograd.gradcheck(op, (x, w, b, r))


def test_registered_op_forward_equals_the_eager_op() -> None:
    x = torch.randn(2, 6, 5, 5).to(memory_format=torch.channels_last)
    w, b = torch.randn(9, 2), torch.randn(9)
    r = torch.randn(2, 9, 3, 3)
    expected = obo.conv1x1(x, w, b, stride=2, groups=3, activation="hardswish", residual=r)
    got = torch.ops.onebyone.conv1x1(x, w, b, [2, 2], 3, "hardswish", r)
    assert_close(got, expected)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_flop_counter_counts_the_registered_op() -> None:
    model = _Block().eval()
    x = torch.randn(2, 8, 6, 6)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()["Global"]
    # a: 2*8*12 MACs per pixel on 2*6*6 pixels; b: 12/3 inputs per filter, 12 filters, 2*3*3
    expected = 2 * (2 * 6 * 6 * 12 * 8) + 2 * (2 * 3 * 3 * 12 * 4)
    assert counts[torch.ops.onebyone.conv1x1] == expected


def test_compiled_model_trains_like_eager() -> None:
    torch._dynamo.reset()
    model, twin = _Block(), _Block()
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(twin, backend="aot_eager", dynamic=False)  # registered autograd
    x = torch.randn(2, 8, 6, 6)
    assert_close(compiled(x), model(x))
    model(x).square().sum().backward()
    compiled(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert q.grad is not None, name
        assert_close(q.grad, p.grad)


@needs_onnx
def test_onnx_export_lowers_the_op_on_its_own() -> None:
    import onnxruntime as ort

    model = _Block().eval()
    x = torch.randn(2, 8, 6, 6)
    program = _dynamic_export(model, x)
    onnx_program = torch.onnx.export(program, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(
        onnx_program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for n in (1, 4):
        xn = torch.randn(n, 8, 6, 6)
        (out,) = session.run(None, {session.get_inputs()[0].name: xn.numpy()})
        assert_close(torch.from_numpy(out), model(xn))


@needs_openvino
def test_openvino_runs_the_decomposed_program() -> None:
    import openvino as ov

    model = _Block().eval()
    x = torch.randn(2, 8, 6, 6)
    program = _dynamic_export(model, x).run_decompositions(obo.decompositions())
    compiled = ov.Core().compile_model(
        ov.convert_model(program), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    for n in (1, 3):
        xn = torch.randn(n, 8, 6, 6)
        assert_close(torch.from_numpy(compiled(xn.numpy())[0]), model(xn))
