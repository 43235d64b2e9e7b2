"""``profile(model, input)``: run a model once and record the cost of every call it makes.

The model runs once (eval mode, no autograd) under a ``TorchFunctionMode``
that sees every counted call where ``forward`` makes it: module layers and
functional calls alike (``onebyone.conv1x1``, ``F.conv2d``, ``F.linear``,
``matmul``, norms, pooling, elementwise ops). Forward hooks keep a stack of
the executing modules, so each call is charged to the innermost module
running it; a module called twice gives two rows. Counts follow
``onebyone.cost.CONVENTION``.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from onebyone import _checks
from onebyone.profiling.counters import (
    COUNTERS,
    FREE,
    METADATA,
    Count,
    first_tensor,
    tensor_args,
)
from onebyone.profiling.peak import MachinePeak, cached_peak, machine_peak
from onebyone.profiling.report import Layer, Profile

__all__ = ["profile"]


class _Recorder(TorchFunctionMode):
    """Counts each call as ``forward`` makes it; nested calls inside it are not seen.

    It also follows the model's parameters through calls that only move data
    (``FREE``: views, indexing, ``expand``, ``cat``...): their outputs are
    remembered as derived from those parameters, so the counted call that
    consumes them (``x + cls_and_pos``, ``attn + bias_table[index]``) is
    charged with them, and every parameter any call read is in ``read``.
    """

    def __init__(self, root_type: str, names: dict[int, str], sizes: dict[str, int]) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = [("", root_type)]
        self.calls: list[tuple[str, str, str, Count, tuple[int, ...], tuple[str, ...]]] = []
        self.uncounted: Counter[str] = Counter()
        self.read: dict[str, None] = {}  # every parameter read, in first-read order
        self.derived: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> parameter names
        self.names = names
        self.sizes = sizes

    def _name(self, parameter: nn.Parameter) -> str:
        name = self.names.get(id(parameter))
        if name is None:  # a parameter that is not the model's
            name = self.names[id(parameter)] = f"(outside the model #{len(self.names)})"
            self.sizes[name] = parameter.numel()
        return name

    def _parameters(self, tensors: list[torch.Tensor]) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for t in tensors:
            base = t if isinstance(t, nn.Parameter) else t._base
            if isinstance(base, nn.Parameter):
                found[self._name(base)] = None
            found.update(dict.fromkeys(self.derived.get(t, ())))
        return tuple(found)

    def _derive(self, out: object, params: tuple[str, ...]) -> None:
        if not params:
            return
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                self.derived[t] = tuple(dict.fromkeys((*self.derived.get(t, ()), *params)))

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        reads_data = name not in METADATA or (name == "__get__" and isinstance(out, torch.Tensor))
        params = self._parameters(tensor_args(args, kwargs)) if reads_data else ()
        self.read.update(dict.fromkeys(params))
        counter = COUNTERS.get(name)
        result = first_tensor(out)
        if counter is None or result is None:
            if name in FREE:  # moves data: what it gives still carries the parameters
                self._derive(out, params)
            elif counter is None:
                self.uncounted[name] += 1
            return out
        counted = counter(func, args, kwargs, result)
        path, module_type = self.stack[-1]
        self.calls.append((path, module_type, name, counted, tuple(result.shape), params))
        return out


def _examples(value: object, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    expected = "a shape (a sequence of positive ints), a tensor, or a tuple of tensors"
    if isinstance(value, torch.Tensor):
        return ((value.to(dtype) if value.is_floating_point() else value).clone(),)
    if not isinstance(value, (tuple, list)) or not value:
        raise _checks.invalid("input_shape_or_example", expected, value, kind=TypeError)
    if all(isinstance(v, torch.Tensor) for v in value):
        return tuple((v.to(dtype) if v.is_floating_point() else v).clone() for v in value)
    if all(_checks._is_int(v) for v in value):
        shape = tuple(int(v) for v in value)
        if min(shape) < 1:
            raise _checks.invalid("input_shape_or_example", expected, value)
        if device.type == "meta":  # shapes only: nothing is computed
            return (torch.empty(shape, dtype=dtype, device=device),)
        generator = torch.Generator(device=device).manual_seed(0)
        return (torch.randn(shape, dtype=dtype, device=device, generator=generator),)
    raise _checks.invalid("input_shape_or_example", expected, value, kind=TypeError)


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype | None, torch.device]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return None, torch.device("cpu")


def profile(
    model: nn.Module,
    input_shape_or_example: Sequence[int] | torch.Tensor | Sequence[torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    peak: MachinePeak | str | None = None,
) -> Profile:
    """Run ``model`` once and count every layer it executes, exactly.

    The pass runs in eval mode without autograd (the modules' training flags
    are restored afterwards; nothing in the model changes). Each counted call
    becomes a ``Layer``: ``nn.Conv2d``, ``nn.Linear``, norms and pools, and
    the same calls made functionally inside ``forward`` (``onebyone.conv1x1``
    as one fused layer with its bias, residual and activation, ``F.conv2d``,
    ``F.linear``, ``matmul``/``@``, ``F.relu``, ``+``...). A module that runs
    twice gives two rows. Counts follow ``onebyone.cost.CONVENTION``: MAC = one
    multiply-accumulate; FLOPs = 2 x MACs; bias adds and other elementwise
    ops apart; params count weights, biases and norm affine terms, not
    running statistics (torchvision convention). ``total.params`` is every
    parameter the pass read, through a counted call or not (a ``cls_token``
    through ``expand`` and ``cat``, a bias table through indexing);
    ``unused_params`` the ones it never read.

    Predicted times need the machine's peak, and ``profile`` never measures
    one unless asked: by default it uses the peak set in the environment
    or cached for this machine (``onebyone.profiling.cached_peak``) and,
    without one, predicts no times (``Layer.time_s`` is ``None``;
    ``Profile.peak_note`` says how to get them).

    The counts depend on shapes only, so a model on the meta device
    (``with torch.device("meta"): model = ...``) is profiled without
    allocating or computing any data.

    Args:
        model: any ``nn.Module``.
        input_shape_or_example: a shape such as ``(1, 3, 224, 224)`` (a random
            input is made), an example tensor, or a tuple of positional inputs.
        dtype: run and count in this floating dtype (default: the model's);
            a model of another dtype is copied and cast, never changed.
        peak: the roof for the predicted times: ``None`` for the peak set or
            cached for the model's device (the CPU for a meta model), if any;
            ``"measure"`` to measure it now (``machine_peak(refresh=True)``,
            1-2 s, and cached); or a ``MachinePeak``, used as it is.

    Shape:
        any input the model accepts, e.g. ``(N, C, H, W)``.

    Example:
        >>> import torch, onebyone as obo
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        >>> p = obo.profile(net, (1, 3, 32, 32))
        >>> p.total.macs, p.total.params, [l.category for l in p.layers]
        (221184, 240, ['conv', 'norm'])
    """
    if not isinstance(model, nn.Module):
        raise _checks.invalid("model", "a torch.nn.Module", type(model).__name__, kind=TypeError)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise _checks.invalid("dtype", "None or a floating torch.dtype", dtype, kind=TypeError)
    if isinstance(peak, str):
        _checks.choice("peak", peak, ("measure",))
    elif peak is not None and not isinstance(peak, MachinePeak):
        raise _checks.invalid(
            "peak", "None, 'measure' or a MachinePeak", type(peak).__name__, kind=TypeError
        )
    own_dtype, device = _model_dtype_device(model)
    run_dtype = dtype or own_dtype or torch.float32
    # the forward runs on a copy: buffers a forward updates (a step counter, an
    # observer's running max) and the caller's tensors stay as they were
    work = copy.deepcopy(model)
    if own_dtype is not None and run_dtype != own_dtype:
        work = work.to(run_dtype)
    inputs = _examples(input_shape_or_example, run_dtype, device)
    roof_device = "cpu" if device.type == "meta" else device
    if isinstance(peak, MachinePeak):
        roof: MachinePeak | None = peak
    elif peak == "measure":
        roof = machine_peak(roof_device, refresh=True)
    else:
        roof = cached_peak(roof_device)

    names = {id(p): n for n, p in work.named_parameters()}
    sizes = {n: p.numel() for n, p in work.named_parameters()}
    recorder = _Recorder(type(work).__name__, names, sizes)
    flags = [(m, m.training) for m in work.modules()]
    handles = []
    for path, module in work.named_modules():
        entry = (path, type(module).__name__)

        def enter(module: nn.Module, args: Any, entry: tuple[str, str] = entry) -> None:
            recorder.stack.append(entry)

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            recorder.stack.pop()

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        work.eval()
        with torch.no_grad(), recorder:
            work(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in flags:
            module.training = training

    layers = []
    for path, module_type, op, counted, out_shape, params in recorder.calls:
        cost = replace(counted.cost, params=sum(sizes[n] for n in params))
        layers.append(
            Layer(
                name=path,
                type=module_type,
                op=op,
                category=counted.category,
                input_shape=counted.input_shape,
                output_shape=out_shape,
                cost=cost,
                parameters=params,
                time_s=None if roof is None else roof.seconds(cost),
                bound=None if roof is None else roof.bound(cost),
            )
        )
    return Profile(
        model=type(model).__name__,
        inputs=tuple(tuple(t.shape) for t in inputs),
        dtype=str(run_dtype).removeprefix("torch."),
        peak=roof,
        layers=tuple(layers),
        parameter_sizes=sizes,
        parameters_read=tuple(recorder.read),
        uncounted=dict(recorder.uncounted),
    )
