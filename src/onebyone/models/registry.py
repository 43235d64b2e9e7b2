"""``create_model`` and ``list_models``: the built-in architectures by name."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch import nn

from onebyone import _checks
from onebyone.models.googlenet import googlenet
from onebyone.models.mobilenet_v1 import mobilenet_v1
from onebyone.models.mobilenet_v2 import mobilenet_v2
from onebyone.models.nin import nin
from onebyone.models.resnet import resnet50, resnet101, resnet152
from onebyone.models.shufflenet import shufflenet_v1
from onebyone.models.squeezenet import squeezenet1_0, squeezenet1_1

__all__ = ["create_model", "list_models", "model_options"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "googlenet": googlenet,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "nin": nin,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "shufflenet_v1": shufflenet_v1,
    "squeezenet1_0": squeezenet1_0,
    "squeezenet1_1": squeezenet1_1,
}


def list_models() -> list[str]:
    """The names ``create_model`` accepts, sorted.

    Example:
        >>> import onebyone as obo
        >>> "resnet50" in obo.list_models()
        True
    """
    return sorted(_BUILDERS)


def _builder(name: object) -> Callable[..., nn.Module]:
    if not isinstance(name, str):
        raise _checks.invalid("name", "a model name (see list_models())", name, kind=TypeError)
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name.lower(), list(_BUILDERS), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            "Invalid value for argument `name`. Expected one of "
            f"{', '.join(list_models())}. Received name={name!r}.{hint}"
        )
    return _BUILDERS[name]


def model_options(name: str) -> dict[str, object]:
    """The keyword options of model ``name`` and their defaults (``num_classes`` included).

    Example:
        >>> from onebyone.models import model_options
        >>> model_options("mobilenet_v2")
        {'num_classes': 1000, 'width_mult': 1.0, 'dropout': 0.2}
    """
    params = inspect.signature(_builder(name)).parameters
    return {k: p.default for k, p in params.items()}


def create_model(name: str, *, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build a registered architecture with freshly initialised weights.

    Args:
        name: one of ``list_models()``; a near miss raises ``ValueError`` naming
            the closest names.
        num_classes: size of the output; ``None`` keeps the model's published
            default (1000 for the ImageNet models, 10 for ``nin``).
        **options: the model's own options, see ``model_options(name)``:
            ``googlenet``: ``aux_logits``, ``faithful``, ``transform_input``,
            ``dropout``, ``dropout_aux``; ``resnet*``: ``variant`` (``"v1.5"`` or
            ``"v1"``), ``zero_init_residual``; ``mobilenet_v1``/``mobilenet_v2``:
            ``width_mult``, ``dropout``; ``squeezenet*``, ``nin``: ``dropout``;
            ``shufflenet_v1``: ``groups``. An unknown option raises ``TypeError``.

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``.

    Example:
        >>> import torch, onebyone as obo
        >>> model = obo.create_model("mobilenet_v2", num_classes=10, width_mult=0.5)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """
    builder = _builder(name)
    accepted = model_options(name)
    for key, value in options.items():
        if key not in accepted:
            raise TypeError(
                f"Invalid option `{key}` for model {name!r}. Expected one of "
                f"{', '.join(accepted)}. Received {key}={value!r}."
            )
    if num_classes is not None:
        options["num_classes"] = num_classes
    return builder(**options)
