"""What a module computes beyond what its class and parameters say.

A module transform (folding, fusing, merging, converting a layer) rewrites a
layer from its class and its parameters. That is exact only when nothing else
takes part in the call: a forward hook or pre-hook changes or reads what
flows through it, old-style ``torch.nn.utils.weight_norm`` / ``spectral_norm``
recompute the weight in a pre-hook before every call, a
``torch.nn.utils.parametrize`` parametrisation computes it on every access,
and a subclass with its own ``forward`` (timm's ``StdConv2d`` standardises its
weight there) computes something else than its base class.
``why_untouchable`` names the first of these it finds; a transform leaves
such a module as it is and says why.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

__all__ = [
    "check_convertible",
    "copy_module",
    "global_hooks",
    "overrides_forward",
    "why_untouchable",
]

# the methods through which each base class computes its output
_FORWARD_METHODS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Conv1d: ("forward", "_conv_forward"),
    nn.Conv2d: ("forward", "_conv_forward"),
    nn.Conv3d: ("forward", "_conv_forward"),
}


def overrides_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether ``module``'s class redefines how ``base`` computes its output."""
    methods = _FORWARD_METHODS.get(base, ("forward",))
    return any(getattr(type(module), m) is not getattr(base, m) for m in methods)


def why_untouchable(module: nn.Module, base: type[nn.Module] | None = None) -> str | None:
    """Why a transform cannot tell what ``module`` computes from its class and parameters,
    or ``None`` when it can.

    Args:
        module: the module a transform would replace, remove or rewrite.
        base: the class the transform knows (``nn.Conv2d``, ``nn.BatchNorm2d``, ...): a
            subclass of it with its own ``forward`` is untouchable. ``None``: only hooks
            and parametrisations count.

    Example:
        >>> from torch import nn
        >>> conv = nn.Conv2d(3, 8, 1)
        >>> why_untouchable(conv) is None
        True
        >>> _ = conv.register_forward_hook(lambda m, args, out: out * 2)
        >>> why_untouchable(conv)
        'has a forward hook (it reads or changes what the module computes)'
    """
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return (
                f"under weight_norm ({hook.name}_g, {hook.name}_v make its {hook.name} "
                "in a forward pre-hook)"
            )
        if isinstance(hook, SpectralNorm):
            return (
                f"under spectral_norm ({hook.name}_orig makes its {hook.name} in a forward "
                "pre-hook)"
            )
    if parametrize.is_parametrized(module):
        names = ", ".join(module.parametrizations)  # type: ignore[arg-type]
        return f"parametrized ({names} computed by torch.nn.utils.parametrize)"
    hooks = {
        "forward pre-hook": module._forward_pre_hooks,
        "forward hook": module._forward_hooks,
        "backward hook": module._backward_hooks,
        "backward pre-hook": module._backward_pre_hooks,
    }
    for kind, registered in hooks.items():
        if registered:
            return f"has a {kind} (it reads or changes what the module computes)"
    if base is not None and isinstance(module, base) and overrides_forward(module, base):
        return (
            f"{type(module).__name__} defines its own forward (it may compute something "
            f"other than {base.__name__})"
        )
    return None


def check_convertible(argument: str, module: nn.Module, base: type[nn.Module]) -> None:
    """Refuse to build a layer from ``module`` (an instance of ``base``) when its class and
    parameters do not say what it computes.

    Raises:
        TypeError: ``module``'s class defines its own ``forward``.
        ValueError: ``module`` has hooks or a parametrised or normalised weight.
    """
    if overrides_forward(module, base):
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected a {base.__name__} computing "
            f"what {base.__name__}.forward computes. Received {type(module).__name__}, which "
            f"defines its own forward (it may compute something else from its weight)."
        )
    reason = why_untouchable(module)
    if reason is not None:
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected a {base.__name__} whose "
            f"parameters say what it computes. Received {type(module).__name__}: {reason}."
        )


def global_hooks() -> str | None:
    """Why no module can be rewritten while global module hooks are registered
    (``torch.nn.modules.module.register_module_forward_hook`` and relatives), or ``None``."""
    registered = {
        "forward pre-hook": module_hooks._global_forward_pre_hooks,
        "forward hook": module_hooks._global_forward_hooks,
        "backward hook": module_hooks._global_backward_hooks,
        "backward pre-hook": module_hooks._global_backward_pre_hooks,
    }
    for kind, hooks in registered.items():
        if hooks:
            return f"a global module {kind} is registered: it sees every module's call"
    return None


def copy_module(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy(module, memo)`` that also copies modules holding computed tensors.

    ``weight_norm`` and ``spectral_norm`` keep the weight they computed last as a
    plain attribute, a tensor with autograd history, which ``copy.deepcopy`` refuses;
    the copy holds it detached (their pre-hook computes it again before every call).
    """
    memo = {} if memo is None else memo
    for m in module.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf and id(value) not in memo:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(module, memo)
