"""The ``"torch"`` engine: the transformed program's module, with fused convolutions.

The exported program's module (``ExportedProgram.module()``, ATen ops) is
rewritten so that every 2-D convolution with the epilogue after it
(``[+ r] [act] [+ r]``, the activation being any of ``onebyone.activations``)
is one call of ``fused_conv``: a 1x1 convolution runs ``onebyone.conv1x1``
(with its kernel routes), others ATen's convolution with the epilogue in place,
and where a weight outweighs the output pixels (``routing.packing_pays``) oneDNN's
convolution on a weight packed once. The graph is functional, so moving a
convolution down to its add reads the same values.

The result is frozen: it owns copies of every tensor it reads (nothing is shared
with the original model), none of them requires grad, and a packed weight is an
opaque oneDNN tensor that nothing can write. Activations run channels-last (views
become reshapes, which copy where a view cannot); inputs are converted once at
the entry and 4-D outputs come back in the caller's layout. In bfloat16 the
weights are cast and inputs and outputs converted at the entry and exit.
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.fx.passes.shape_prop import ShapeProp

from onebyone.activations import TABLE, apply_activation
from onebyone.deploy.engines.registry import Graph, register
from onebyone.deploy.passes import conv_call
from onebyone.functional import conv1x1
from onebyone.kernels import onednn, routing
from onebyone.kernels.epilogue import records_grad
from onebyone.kernels.gemm import is_channels_last
from onebyone.transforms.layout import to_channels_last

__all__ = ["PackedWeight", "TorchEngineModule", "fused_conv", "precisions", "torch_module"]

aten = torch.ops.aten


def precisions() -> tuple[str, ...]:
    """The precisions this engine computes natively here (bfloat16 where oneDNN runs it)."""
    bf16 = onednn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return ("float32", "bfloat16") if bf16 else ("float32",)


class PackedWeight:
    """A convolution weight packed into oneDNN's blocked layout, held by a frozen model.

    The packed tensor is opaque (no view, no ``.data`` write, no NumPy); copies and
    pickles go through its dense values (``to_dense``), so a copy packs again.

    Args:
        weight: ``(K, C/g, kh, kw)``.
        input_shape: the input shape it is packed for (others still compute correctly).
        stride, padding, dilation, groups: the convolution's.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        input_shape: tuple[int, ...],
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
    ) -> None:
        self.geometry = (tuple(input_shape), list(stride), list(padding), list(dilation), groups)
        self.shape = tuple(weight.shape)
        self.tensor = onednn.pack_weight(
            weight, input_shape, stride=stride, padding=padding, dilation=dilation, groups=groups
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (PackedWeight, (self.tensor.to_dense(), *self.geometry))

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedWeight:
        return PackedWeight(self.tensor.to_dense(), *self.geometry)

    def __repr__(self) -> str:
        return f"PackedWeight(shape={self.shape})"


def fused_conv(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str | None,
    residual_after: bool,
) -> torch.Tensor:
    """``act(conv(x) + bias + r)`` (``residual_after=False``) or ``act(conv(x) + bias) + r``.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')``; ``residual`` has the output's shape.
    """
    before = None if residual_after else residual
    if isinstance(weight, PackedWeight):
        if not is_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
        y = onednn.fused_convolution(
            x, weight.tensor, bias, before, padding=padding, stride=stride, dilation=dilation,
            groups=groups, activation=activation,
        )  # fmt: skip
    elif weight.dim() == 2 or (weight.shape[2:] == (1, 1) and not any(padding)
                               and list(dilation) == [1, 1]):  # fmt: skip
        w2 = weight.reshape(weight.shape[0], weight.shape[1])  # (K, C/g, 1, 1) -> (K, C/g)
        y = conv1x1(x, w2, bias, stride=(stride[0], stride[1]), groups=groups,
                    activation=activation, residual=before)  # fmt: skip
    elif not records_grad(x, weight, bias, residual) and (
        routing.choose("auto", x, False, None) is onednn
    ):
        y = onednn.aten_forward(
            x, weight, bias, before, stride, groups, activation, padding=padding, dilation=dilation
        )
    else:
        y = torch.convolution(x, weight, bias, stride, padding, dilation, False, [0, 0], groups)
        y = apply_activation(y if before is None else y + before, activation, inplace=False)
    if residual_after and residual is not None:
        return y + residual
    return y


def _activation(node: fx.Node) -> str | None:
    if node.op != "call_function" or not node.args:
        return None
    for entry in TABLE.values():
        test = entry.aten.get(node.target)
        if test is not None and test(tuple(node.args), node.kwargs):
            return entry.name
    return None


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
        return False
    if va.dtype != vb.dtype or va.dim() != vb.dim():
        return False
    return [str(d) for d in va.shape] == [str(d) for d in vb.shape]


def _is_add(node: fx.Node, value: fx.Node) -> fx.Node | None:
    """The other operand when ``node`` is ``value + other`` of the same shape."""
    if node.op != "call_function" or node.target != aten.add.Tensor or node.kwargs:
        return None
    if len(node.args) != 2:
        return None
    a, b = node.args
    other = b if a is value else a if b is value else None
    if not isinstance(other, fx.Node) or other is value or not _same_shape(other, value):
        return None
    return other


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _attr(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = operator.attrgetter(str(node.target))(gm)
    return value if isinstance(value, torch.Tensor) else None


def _fuse(gm: fx.GraphModule, pack: bool) -> int:
    """Rewrite every 2-D convolution and its epilogue into one ``fused_conv`` call."""
    graph = gm.graph
    fused = 0
    for node in list(graph.nodes):
        call = conv_call(node)
        if call is None or call.linear or call.spatial != 2 or isinstance(call.padding, str):
            continue
        weight = _attr(gm, call.weight)
        if weight is None or (call.bias is not None and _attr(gm, call.bias) is None):
            continue
        chain, residual, act, after = [node], call.residual, call.activation, False
        nxt = _sole_user(node)
        if call.plain and nxt is not None and (other := _is_add(nxt, node)) is not None:
            chain.append(nxt)
            residual = other
            nxt = _sole_user(nxt)
        if act is None and nxt is not None and nxt.args and nxt.args[0] is chain[-1]:
            act = _activation(nxt)
            if act is not None and len(nxt.args) >= 1:
                chain.append(nxt)
                nxt = _sole_user(nxt)
        if residual is None and act is not None and nxt is not None:
            other = _is_add(nxt, chain[-1])
            if other is not None:
                chain.append(nxt)
                residual, after = other, True
        weight_arg: Any = call.weight
        meta = node.meta.get("tensor_meta")
        if pack and meta is not None and onednn.supports(weight.dtype):
            if weight.dim() == 2:
                weight = weight.reshape(*weight.shape, 1, 1)  # (K, C/g) -> (K, C/g, 1, 1)
            k, cg, kh, kw = weight.shape
            pixels = meta.shape[0] * meta.shape[2] * meta.shape[3]
            if routing.packing_pays(k // call.groups, cg * kh * kw, pixels):
                x_meta = call.x.meta.get("tensor_meta")
                if x_meta is not None:
                    name = f"onebyone_packed_{fused}"
                    setattr(gm, name, PackedWeight(
                        weight.contiguous(memory_format=torch.channels_last),
                        tuple(x_meta.shape), list(call.stride), list(call.padding),
                        list(call.dilation), call.groups,
                    ))  # fmt: skip
                    with graph.inserting_before(node), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # an attribute that is not a tensor
                        weight_arg = graph.get_attr(name)
        with graph.inserting_before(chain[-1]):
            new = graph.call_function(
                fused_conv,
                (call.x, weight_arg, call.bias, residual, list(call.stride),
                 list(call.padding), list(call.dilation), call.groups, act, after),
            )  # fmt: skip
        new.meta = dict(chain[-1].meta)
        chain[-1].replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
        fused += 1
    return fused


def _views_to_reshapes(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (
            aten.view.default,
            aten._unsafe_view.default,
        ):
            node.target = aten.reshape.default


def _own_state(gm: fx.GraphModule, dtype: torch.dtype) -> None:
    """Replace every tensor the module holds by a frozen copy of its own (4-D ones
    channels-last), in ``dtype`` when floating."""
    for name, tensor in list(gm.named_parameters()) + list(gm.named_buffers()):
        owner_path, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        copy_ = tensor.detach().clone()
        if copy_.is_floating_point():
            copy_ = copy_.to(dtype)
        if copy_.dim() == 4:
            copy_ = copy_.contiguous(memory_format=torch.channels_last)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(copy_, requires_grad=False)
        else:
            owner._buffers[leaf] = copy_
    for node in gm.graph.nodes:  # tensors held as plain attributes (lifted constants)
        if node.op == "get_attr":
            value = operator.attrgetter(str(node.target))(gm)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                owner_path, _, leaf = str(node.target).rpartition(".")
                owner = gm.get_submodule(owner_path) if owner_path else gm
                if leaf in owner._buffers:
                    continue
                fresh = value.detach().clone()
                if fresh.is_floating_point():
                    fresh = fresh.to(dtype)
                if fresh.dim() == 4:
                    fresh = fresh.contiguous(memory_format=torch.channels_last)
                setattr(owner, leaf, fresh)


def _map(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


class TorchEngineModule(nn.Module):
    """The frozen, fused graph behind the original model's call signature.

    Args:
        graph_module: the rewritten module of the exported program.
        dtype: what it computes in (``torch.float32`` or ``torch.bfloat16``).

    Shape:
        The original model's.
    """

    def __init__(self, graph_module: fx.GraphModule, dtype: torch.dtype) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        first = next((t for t in args if isinstance(t, torch.Tensor) and t.dim() == 4), None)
        back_to_nchw = first is not None and first.is_contiguous()
        in_dtype = next((t.dtype for t in args if isinstance(t, torch.Tensor)
                         and t.is_floating_point()), None)  # fmt: skip

        def enter(t: torch.Tensor) -> torch.Tensor:
            dtype = self.dtype if t.is_floating_point() else t.dtype
            if t.dim() == 4:  # dtype and layout in one copy (none when both are right)
                return t.to(dtype, memory_format=torch.channels_last)
            return t.to(dtype)

        out = self.graph_module(*_map(args, enter), **_map(kwargs, enter))

        def leave(t: torch.Tensor) -> torch.Tensor:
            if in_dtype is not None and t.is_floating_point() and t.dtype != in_dtype:
                t = t.to(in_dtype)
            return t.contiguous() if back_to_nchw and t.dim() == 4 else t

        return _map(out, leave)

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError(
            "the torch engine's frozen graph does not pickle (loading it would trace its "
            "fused calls again); write a deployable file instead (onebyone.deploy.save_onnx, "
            "save_openvino, `onebyone optimize --onnx/--openvino`), or optimize the loaded "
            "original again"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> TorchEngineModule:
        clone = TorchEngineModule(copy.deepcopy(self.graph_module, memo), self.dtype)
        return clone.train(self.training)

    def train(self, mode: bool = True) -> TorchEngineModule:
        """Frozen for inference: only the flag changes (an exported program's module
        refuses ``train``)."""
        self.training = mode
        return self

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


def torch_module(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    precision: str,
) -> TorchEngineModule:
    """Build the frozen torch engine from ``program`` (not modified)."""
    if precision not in precisions():
        raise ValueError(f"oneDNN does not compute {precision} natively on this CPU")
    dtype = torch.float32 if precision == "float32" else torch.bfloat16
    gm = program.module()  # shares the program's tensors until _own_state copies them
    _own_state(gm, dtype)
    cl_inputs = tuple(
        t.to(dtype).contiguous(memory_format=torch.channels_last)
        if t.dim() == 4 and t.is_floating_point()
        else t
        for t in inputs
    )
    _views_to_reshapes(gm)
    gm.recompile()
    with torch.no_grad():
        ShapeProp(gm).propagate(*cl_inputs)  # concrete shapes at the example, for packing
    _fuse(gm, pack=onednn.is_available())
    for node in list(gm.graph.nodes):  # export's input guards: a closure that does not pickle
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    # a plain GraphModule: the exported module's extra state (its shape environment,
    # hooks, training-mode guards) is for re-tracing and does not pickle
    plain = fx.GraphModule(gm, gm.graph, class_name="FrozenGraph")
    plain.__dict__.pop("shape_env", None)
    plain.meta = {}
    return TorchEngineModule(plain, dtype).eval()


class TorchEngine:
    """The fused, frozen graph (or, where export failed, the module-level transforms)."""

    name = "torch"

    def available(self) -> str | None:
        return None

    def precisions(self) -> tuple[str, ...]:
        return precisions()

    def build(self, graph: Graph, precision: str) -> nn.Module:
        if graph.program is not None:
            return torch_module(graph.program, graph.inputs, precision=precision)
        if graph.module is None or precision != "float32":
            raise ValueError(f"{precision} needs a torch.export capture")
        return to_channels_last(graph.module).eval()


ENGINE = register(TorchEngine())
