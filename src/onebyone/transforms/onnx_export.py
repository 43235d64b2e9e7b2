"""``to_onnx``: write a (folded) model's ``torch.fx`` graph as an ONNX graph, directly.

Each node of the traced graph maps to one or a few ONNX operators (opset 17);
shapes are static, taken from a shape-propagation run on the example input
(with fake tensors when they work, so nothing heavy runs). Exporting this
way takes milliseconds, which keeps ``optimize``'s preparation short. A graph
with an operation outside the table raises ``OnnxExportError`` naming it;
``export_onnx`` then falls back to ``torch.onnx.export``.
"""

from __future__ import annotations

import io
import math
import operator
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from onebyone.functional import conv1x1 as conv1x1_function
from onebyone.nn.blocks import channel_shuffle
from onebyone.nn.conv import Conv1x1
from onebyone.transforms._fx import activation_of, drop_identities, trace
from onebyone.transforms.fold import check_eval, check_model
from onebyone.transforms.fused import FusedConv1x1, FusedConv2d
from onebyone.transforms.verify import as_inputs

__all__ = ["OPSET", "OnnxExportError", "build_onnx", "export_onnx", "to_onnx"]

OPSET = 17
_EXTERNAL_BYTES = 1024  # larger constants are handed to ONNX Runtime without serialising them

_ONNX_DTYPES = {torch.float32: 1, torch.float16: 10, torch.float64: 11, torch.int64: 7}


class OnnxExportError(ValueError):
    """The model has an operation ``to_onnx`` cannot write; the message names it."""


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is a declared extra
        raise RuntimeError(
            "ONNX export needs the `onnx` package: pip install 'onebyone[onnx]'"
        ) from exc
    return onnx


def _propagate(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    """Store every node's value (fake tensor, or real tensor / Python value) in ``meta["val"]``."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.passes.fake_tensor_prop import FakeTensorProp

        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fakes = [mode.from_tensor(t) for t in inputs]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)
        return
    except Exception:  # an op without a fake kernel: run it for real instead
        pass

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            n.meta["val"] = value
            return value

    with torch.inference_mode():
        _Recorder(gm).run(*inputs)


def _attr(root: nn.Module, target: str) -> Any:
    """The attribute at dotted ``target`` of ``root`` (what a ``get_attr`` node reads)."""
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


class _Writer:
    """Builds the ONNX graph node by node."""

    def __init__(self, onnx: Any, gm: fx.GraphModule, *, external: bool) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.external: dict[str, np.ndarray] | None = {} if external else None
        self.names: dict[fx.Node, str] = {}  # fx node -> ONNX value name
        self.pieces: dict[fx.Node, list[str]] = {}  # a split's node -> its outputs' names
        self._count = 0

    # --- helpers ---------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def const(self, value: torch.Tensor | np.ndarray, hint: str) -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        array = np.ascontiguousarray(array)
        name = self.fresh(hint)
        if self.external is not None and array.nbytes >= _EXTERNAL_BYTES:
            # the data stays outside the protobuf; ONNX Runtime copies it in at session start
            proto = self.onnx.TensorProto()
            proto.name = name
            proto.data_type = self.onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            proto.dims.extend(array.shape)
            proto.data_location = self.onnx.TensorProto.EXTERNAL
            for key, val in (
                ("location", "onebyone-weights"),
                ("offset", "0"),
                ("length", str(array.nbytes)),
            ):
                entry = proto.external_data.add()
                entry.key, entry.value = key, val
            self.initializers.append(proto)
            self.external[name] = array
        else:
            self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        # the node is named after its output: "<module path or fx node>__<n>", so profiles
        # of the ONNX graph map back to the model's layers
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def value(self, arg: object, dtype: torch.dtype, hint: str) -> str:
        """The ONNX name of a node's tensor, or a constant for a Python number."""
        if isinstance(arg, fx.Node):
            if arg not in self.names:
                raise OnnxExportError(f"`{arg.name}` is not a tensor this exporter produced")
            return self.names[arg]
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.const(torch.tensor(arg, dtype=dtype), hint)
        raise OnnxExportError(f"operand {arg!r} is neither a tensor nor a number")

    @staticmethod
    def meta(node: object) -> torch.Tensor:
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        if not isinstance(val, torch.Tensor):
            raise OnnxExportError(f"`{node}` has no tensor value")
        return val

    def activation(self, name: str | None, x: str, hint: str) -> str:
        if name is None:
            return x
        if name == "relu":
            return self.op("Relu", [x], hint)
        if name == "relu6":
            lo, hi = (
                self.const(np.array(0.0, np.float32), "zero"),
                self.const(np.array(6.0, np.float32), "six"),
            )
            return self.op("Clip", [x, lo, hi], hint)
        if name == "leaky_relu":
            return self.op("LeakyRelu", [x], hint, alpha=0.01)
        if name == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x], hint)], hint)
        if name == "gelu":  # 0.5 x (1 + erf(x / sqrt 2)); ONNX Runtime fuses this into Gelu
            root2 = self.const(np.array(math.sqrt(2.0), np.float32), "sqrt2")
            one, half = (
                self.const(np.array(1.0, np.float32), "one"),
                self.const(np.array(0.5, np.float32), "half"),
            )
            erf = self.op("Erf", [self.op("Div", [x, root2], hint)], hint)
            return self.op(
                "Mul", [self.op("Mul", [x, half], hint), self.op("Add", [erf, one], hint)], hint
            )
        if name == "hardswish":
            return self.op("HardSwish", [x], hint)
        if name == "sigmoid":
            return self.op("Sigmoid", [x], hint)
        if name == "tanh":
            return self.op("Tanh", [x], hint)
        raise OnnxExportError(f"activation {name!r} has no ONNX mapping")

    def conv(
        self,
        x: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        hint: str,
        *,
        stride: Sequence[int],
        padding: Sequence[int] = (0, 0),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
    ) -> str:
        w4 = (
            weight.reshape(weight.shape[0], weight.shape[1], 1, 1) if weight.dim() == 2 else weight
        )  # (K, C/g) -> (K, C/g, 1, 1)
        inputs = [x, self.const(w4, f"{hint}.weight")]
        if bias is not None:
            inputs.append(self.const(bias, f"{hint}.bias"))
        return self.op(
            "Conv",
            inputs,
            hint,
            kernel_shape=list(w4.shape[2:]),
            strides=list(stride),
            pads=[*padding, *padding],
            dilations=list(dilation),
            group=groups,
        )

    # --- nodes -----------------------------------------------------------------------
    def call_module(self, node: fx.Node) -> str:
        m = self.modules[str(node.target)]
        hint = str(node.target)
        x = self.value(node.args[0], torch.float32, hint) if node.args else ""
        act = activation_of(node, self.modules)
        if act is not None:
            return self.activation(act, x, hint)
        if isinstance(m, (FusedConv1x1, Conv1x1)):
            y = self.conv(x, m.weight, m.bias, hint, stride=m.stride, groups=m.groups)
            return self.epilogue(node, m, y, hint)
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise OnnxExportError(f"`{hint}`: padding {m.padding!r} / {m.padding_mode!r}")
            y = self.conv(
                x,
                m.weight,
                m.bias,
                hint,
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                groups=m.groups,
            )
            return self.epilogue(node, m, y, hint) if isinstance(m, FusedConv2d) else y
        if isinstance(m, nn.Linear):
            return self.linear(node, x, m.weight, m.bias, hint)
        if (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not m.training
            and m.running_mean is not None
        ):
            assert m.running_var is not None
            k = m.num_features
            scale = m.weight if m.weight is not None else torch.ones(k)
            shift = m.bias if m.bias is not None else torch.zeros(k)
            inputs = [x] + [
                self.const(t, f"{hint}.{n}")
                for n, t in (
                    ("scale", scale),
                    ("bias", shift),
                    ("mean", m.running_mean),
                    ("var", m.running_var),
                )
            ]
            return self.op("BatchNormalization", inputs, hint, epsilon=m.eps)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(m, x, hint)
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return self.adaptive(node, x, m.output_size, isinstance(m, nn.AdaptiveMaxPool2d), hint)
        if isinstance(m, nn.Flatten):
            return self.reshape(node, x, hint)
        if isinstance(m, nn.Softmax):
            return self.op("Softmax", [x], hint, axis=int(m.dim if m.dim is not None else -1))
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)) and not (
            m.training and not isinstance(m, nn.Identity)
        ):
            return x
        raise OnnxExportError(f"module `{hint}` ({type(m).__name__}) has no ONNX mapping")

    def epilogue(self, node: fx.Node, m: nn.Module, y: str, hint: str) -> str:
        residual = node.kwargs.get("residual", node.args[1] if len(node.args) > 1 else None)
        act = getattr(m, "activation", None)
        position = getattr(m, "residual_position", "before")
        if residual is not None and position == "before":
            y = self.op("Add", [y, self.value(residual, torch.float32, hint)], hint)
        y = self.activation(act, y, hint)
        if residual is not None and position == "after":
            y = self.op("Add", [y, self.value(residual, torch.float32, hint)], hint)
        return y

    def linear(
        self, node: fx.Node, x: str, weight: torch.Tensor, bias: torch.Tensor | None, hint: str
    ) -> str:
        rank = self.meta(node.args[0]).dim()
        if rank == 2:
            inputs = [x, self.const(weight, f"{hint}.weight")]
            if bias is not None:
                inputs.append(self.const(bias, f"{hint}.bias"))
            return self.op("Gemm", inputs, hint, transB=1)
        y = self.op("MatMul", [x, self.const(weight.t(), f"{hint}.weight_t")], hint)
        return y if bias is None else self.op("Add", [y, self.const(bias, f"{hint}.bias")], hint)

    def pool(self, m: Any, x: str, hint: str) -> str:
        def two(v: Any) -> list[int]:
            return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]

        kernel = two(m.kernel_size)
        stride = two(m.stride if m.stride is not None else m.kernel_size)
        pads = two(m.padding)
        attrs: dict[str, Any] = {
            "kernel_shape": kernel,
            "strides": stride,
            "pads": pads + pads,
            "ceil_mode": int(m.ceil_mode),
        }
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise OnnxExportError(f"`{hint}`: MaxPool2d(return_indices=True)")
            attrs["dilations"] = two(m.dilation)
            return self.op("MaxPool", [x], hint, **attrs)
        if m.divisor_override is not None:
            raise OnnxExportError(f"`{hint}`: AvgPool2d(divisor_override=...)")
        return self.op(
            "AveragePool", [x], hint, count_include_pad=int(m.count_include_pad), **attrs
        )

    def adaptive(self, node: fx.Node, x: str, output_size: object, is_max: bool, hint: str) -> str:
        src = self.meta(node.args[0])
        out = self.meta(node)
        if tuple(out.shape[-2:]) == (1, 1):
            return self.op("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], hint)
        h, w = src.shape[-2:]
        oh, ow = out.shape[-2:]
        if h % oh or w % ow:
            raise OnnxExportError(f"`{hint}`: adaptive pooling {tuple(src.shape)} -> {output_size}")
        k = [int(h // oh), int(w // ow)]
        return self.op("MaxPool" if is_max else "AveragePool", [x], hint, kernel_shape=k, strides=k)

    def reshape(self, node: fx.Node, x: str, hint: str) -> str:
        shape = self.const(np.array(list(self.meta(node).shape), dtype=np.int64), f"{hint}.shape")
        return self.op("Reshape", [x, shape], hint)

    def call_function(self, node: fx.Node) -> str | None:
        fn = node.target
        hint = node.name
        act = activation_of(node, self.modules)
        if act is not None:
            return self.activation(act, self.value(node.args[0], torch.float32, hint), hint)
        binary = {
            operator.add: "Add",
            torch.add: "Add",
            operator.iadd: "Add",
            operator.mul: "Mul",
            torch.mul: "Mul",
            operator.imul: "Mul",
            operator.sub: "Sub",
            torch.sub: "Sub",
            operator.truediv: "Div",
        }
        if fn in binary:
            return self.binary(node, binary[fn])
        if fn in (torch.cat, torch.concat):
            tensors: Any = node.args[0] if node.args else node.kwargs["tensors"]
            dim: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            rank = self.meta(node).dim()
            names = [self.value(t, torch.float32, hint) for t in tensors]
            return self.op("Concat", names, hint, axis=int(dim) % rank)
        if fn in (torch.flatten, torch.reshape):
            return self.reshape(node, self.value(node.args[0], torch.float32, hint), hint)
        if fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            x = self.value(node.args[0], torch.float32, hint)
            size = node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]
            return self.adaptive(node, x, size, fn is F.adaptive_max_pool2d, hint)
        if fn is torch.mean:
            return self.mean(node)
        if fn is torch.transpose:
            return self.transpose(node, node.args[1], node.args[2])
        if fn is conv1x1_function:
            return self.functional_conv1x1(node)
        if fn is channel_shuffle:
            return self.channel_shuffle(node)
        if fn is torch.split:
            self.split(node)
            return None  # its pieces are read by the getitem nodes
        source: Any = node.args[0]
        if fn is operator.getitem and source in self.pieces:
            index: Any = node.args[1]
            return self.pieces[source][int(index)]
        if fn is operator.getitem and not isinstance(node.meta.get("val"), torch.Tensor):
            return None  # a size, used only for shapes
        raise OnnxExportError(
            f"function {getattr(fn, '__name__', fn)} (`{node.name}`) has no ONNX mapping"
        )

    def split(self, node: fx.Node) -> None:
        """``torch.split(x, sizes, dim)`` -> one ``Split`` node with an output per piece."""
        sizes: Any = node.args[1] if len(node.args) > 1 else node.kwargs["split_size_or_sections"]
        dim: Any = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        source = self.meta(node.args[0])
        if isinstance(sizes, int):
            total = source.shape[dim]
            sizes = [min(sizes, total - start) for start in range(0, total, sizes)]
        lengths = self.const(
            np.array([int(s) for s in sizes], dtype=np.int64), f"{node.name}.sizes"
        )
        outputs = [self.fresh(node.name) for _ in sizes]
        x = self.value(node.args[0], torch.float32, node.name)
        self.nodes.append(
            self.helper.make_node("Split", [x, lengths], outputs, axis=int(dim) % source.dim())
        )
        self.pieces[node] = outputs

    def channel_shuffle(self, node: fx.Node) -> str:
        """Reshape to ``(N, g, C/g, H, W)``, swap the group axes, reshape back."""
        groups: Any = node.args[1] if len(node.args) > 1 else node.kwargs["groups"]
        n, c, h, w = (int(d) for d in self.meta(node).shape)
        g = int(groups)
        split = self.const(np.array([n, g, c // g, h, w], dtype=np.int64), f"{node.name}.split")
        merged = self.const(np.array([n, c, h, w], dtype=np.int64), f"{node.name}.merged")
        x = self.value(node.args[0], torch.float32, node.name)
        grouped = self.op("Reshape", [x, split], node.name)
        swapped = self.op("Transpose", [grouped], node.name, perm=[0, 2, 1, 3, 4])
        return self.op("Reshape", [swapped, merged], node.name)

    def binary(self, node: fx.Node, op_type: str) -> str:
        if node.kwargs.get("alpha", 1) != 1:
            raise OnnxExportError(f"`{node.name}`: add/sub with alpha")
        dtype = self.meta(node).dtype
        a, b = (self.value(v, dtype, node.name) for v in node.args[:2])
        return self.op(op_type, [a, b], node.name)

    def mean(self, node: fx.Node) -> str:
        dims: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        x = self.value(node.args[0], torch.float32, node.name)
        rank = self.meta(node.args[0]).dim()
        axes = (
            list(range(rank))
            if dims is None
            else [int(d) % rank for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        )
        return self.op("ReduceMean", [x], node.name, axes=axes, keepdims=int(bool(keep)))

    def transpose(self, node: fx.Node, d0: Any, d1: Any) -> str:
        rank = self.meta(node).dim()
        perm = list(range(rank))
        i, j = int(d0) % rank, int(d1) % rank
        perm[i], perm[j] = perm[j], perm[i]
        return self.op(
            "Transpose", [self.value(node.args[0], torch.float32, node.name)], node.name, perm=perm
        )

    def functional_conv1x1(self, node: fx.Node) -> str:
        def arg(i: int, name: str, default: object) -> Any:
            return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)

        weight, bias = arg(1, "weight", None), arg(2, "bias", None)
        if (
            not isinstance(weight, fx.Node)
            or weight.op != "get_attr"
            or (bias is not None and (not isinstance(bias, fx.Node) or bias.op != "get_attr"))
        ):
            raise OnnxExportError(f"`{node.name}`: conv1x1 with computed weights")
        w = _attr(self.gm, str(weight.target))
        b = None if bias is None else _attr(self.gm, str(bias.target))
        stride = arg(3, "stride", 1)
        strides = list(stride) if isinstance(stride, (tuple, list)) else [int(stride), int(stride)]
        x = self.value(node.args[0], torch.float32, node.name)
        y = self.conv(x, w, b, node.name, stride=strides, groups=int(arg(4, "groups", 1)))
        residual = arg(6, "residual", None)
        if residual is not None:
            y = self.op("Add", [y, self.value(residual, torch.float32, node.name)], node.name)
        return self.activation(arg(5, "activation", None), y, node.name)

    def call_method(self, node: fx.Node) -> str | None:
        name = str(node.target)
        hint = node.name
        act = activation_of(node, self.modules)
        if act is not None:
            return self.activation(act, self.value(node.args[0], torch.float32, hint), hint)
        if not isinstance(node.meta.get("val"), torch.Tensor):
            return None  # x.size(), x.dim(): shapes are static here
        if name in ("view", "reshape", "flatten"):
            return self.reshape(node, self.value(node.args[0], torch.float32, hint), hint)
        if name in ("contiguous", "clone", "detach"):
            return self.value(node.args[0], torch.float32, hint)
        if name in ("add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"):
            return self.binary(
                node, {"add": "Add", "mul": "Mul", "sub": "Sub", "div": "Div"}[name.rstrip("_")]
            )
        if name == "mean":
            return self.mean(node)
        if name == "transpose":
            return self.transpose(node, node.args[1], node.args[2])
        if name == "permute":
            dims: Any = node.args[1] if isinstance(node.args[1], (tuple, list)) else node.args[1:]
            return self.op(
                "Transpose",
                [self.value(node.args[0], torch.float32, hint)],
                hint,
                perm=[int(d) for d in dims],
            )
        raise OnnxExportError(f"method .{name}() (`{node.name}`) has no ONNX mapping")


def to_onnx(model: nn.Module, example_input: object) -> Any:
    """The ONNX ``ModelProto`` (opset 17, static shapes) of ``model`` on ``example_input``.

    ``model`` must trace with ``torch.fx`` and use only operations in this
    exporter's table: convolutions (``nn.Conv2d``, ``Conv1x1``, the fused
    modules), ``Linear``, eval-mode ``BatchNorm2d``, activations, pooling,
    flatten / view / reshape / transpose, concatenation, mean and elementwise
    arithmetic. Inputs and outputs are float32.

    Args:
        model: a model in eval mode.
        example_input: a tensor or tuple of tensors fixing the input shapes.

    Raises:
        OnnxExportError: the model does not trace or has an unsupported operation.

    Shape:
        The ONNX graph's inputs and outputs have the shapes of the example run.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from onebyone.transforms import to_onnx
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
        >>> proto = to_onnx(model, torch.randn(1, 3, 8, 8))
        >>> [n.op_type for n in proto.graph.node]  # the Identity names the graph's output
        ['Conv', 'Relu', 'Identity']
    """
    proto, _ = build_onnx(model, example_input, external=False)
    return proto


def build_onnx(
    model: nn.Module, example_input: object, *, external: bool
) -> tuple[Any, dict[str, np.ndarray]]:
    """``to_onnx``'s work; with ``external`` the constants of 1 KiB and more are returned
    apart (``{name: array}``) and the proto only refers to them (for
    ``onnxruntime.SessionOptions.add_external_initializers``)."""
    onnx = _import_onnx()
    check_model(model)
    check_eval(model)
    inputs = as_inputs(example_input)
    for t in inputs:
        if t.dtype not in _ONNX_DTYPES:
            raise OnnxExportError(f"input dtype {t.dtype} is not supported")
    graph, why = trace(model)
    if graph is None:
        raise OnnxExportError(f"the model does not trace ({why})")
    modules = dict(model.named_modules())
    drop_identities(graph, modules, dropout=True)
    gm = fx.GraphModule(model, graph)
    _propagate(gm, inputs)
    writer = _Writer(onnx, gm, external=external)
    helper = onnx.helper
    graph_inputs, graph_outputs = [], []
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise OnnxExportError(f"the model takes {len(placeholders)} inputs, {len(inputs)} given")
    for node, t in zip(placeholders, inputs, strict=True):
        writer.names[node] = node.name
        graph_inputs.append(
            helper.make_tensor_value_info(node.name, _ONNX_DTYPES[t.dtype], list(t.shape))
        )
    handlers: dict[str, Callable[[fx.Node], str | None]] = {
        "call_module": writer.call_module,
        "call_function": writer.call_function,
        "call_method": writer.call_method,
    }
    for node in graph.nodes:
        if node.op in handlers:
            name = handlers[node.op](node)
            if name is not None:
                writer.names[node] = name
        elif node.op == "get_attr":
            value = _attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                writer.names[node] = writer.const(value, str(node.target))
        elif node.op == "output":
            results = node.args[0]
            items = results if isinstance(results, (tuple, list)) else [results]
            for i, item in enumerate(items):
                if not isinstance(item, fx.Node) or item not in writer.names:
                    raise OnnxExportError(
                        "the model's outputs must be tensors (or a tuple of them)"
                    )
                val = writer.meta(item)
                out = f"output_{i}"
                writer.nodes.append(helper.make_node("Identity", [writer.names[item]], [out]))
                graph_outputs.append(
                    helper.make_tensor_value_info(
                        out, _ONNX_DTYPES.get(val.dtype, 1), list(val.shape)
                    )
                )
    onnx_graph = helper.make_graph(
        writer.nodes, type(model).__name__, graph_inputs, graph_outputs, writer.initializers
    )
    proto = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onebyone"
    )
    proto.ir_version = min(proto.ir_version, 8)
    return proto, writer.external or {}


def export_onnx(model: nn.Module, example_input: object) -> tuple[bytes, str]:
    """Serialised ONNX of ``model``: ``(bytes, how)`` with ``how`` ``"onebyone"`` (``to_onnx``)
    or ``"torch.onnx"`` (the fallback for graphs ``to_onnx`` cannot write)."""
    try:
        return to_onnx(model, example_input).SerializeToString(), "onebyone"
    except OnnxExportError as first:
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    as_inputs(example_input),
                    buffer,  # type: ignore[arg-type]
                    dynamo=False,
                    opset_version=OPSET,
                )
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise OnnxExportError(
                f"{first}; torch.onnx.export failed too: {type(exc).__name__}: {detail}"
            ) from exc
        return buffer.getvalue(), "torch.onnx"
