"""What the model commands share: ``MODEL``, ``--input``, ``--option`` and ``--weights``.

``MODEL`` is a registered name (``onebyone.list_models()``), ``timm:NAME`` or
``torchvision:NAME`` (when those packages are installed), or
``package.module:factory``. Failures of the user's code (importing the module,
calling the factory) become one-line errors naming the factory and the
exception.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onebyone import _checks
from onebyone.models.external import is_external, load_external

__all__ = ["MODEL_FORMS", "REJECTIONS", "expected_input", "first_line", "load_weights",
           "parse_input", "parse_options", "rejected_input", "resolve_model"]  # fmt: skip

_OTHER_FORMS = "timm:NAME, torchvision:NAME or package.module:factory"
MODEL_FORMS = f"a registered model name (onebyone.list_models()), {_OTHER_FORMS}"
"""What ``MODEL`` may be, for ``--help`` and error messages."""
_INPUT_FORM = "a shape of positive ints joined by 'x', such as 1x3x224x224"
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its type's name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def parse_input(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` -> ``(1, 3, 224, 224)``.

    Example:
        >>> parse_input("1x3x32x32")
        (1, 3, 32, 32)
    """
    if not re.fullmatch(r"\s*\d+(\s*[x,]\s*\d+)*\s*", text):
        raise _checks.invalid("--input", _INPUT_FORM, text)
    shape = tuple(int(part) for part in re.split(r"[x,]", text))
    if min(shape) < 1:
        raise _checks.invalid("--input", _INPUT_FORM, text)
    return shape


def parse_options(items: list[str]) -> dict[str, object]:
    """``["num_classes=10", "variant=v1"]`` -> ``{"num_classes": 10, "variant": "v1"}``.

    Values are read as Python literals (``10``, ``0.5``, ``True``, ``(1, 2)``),
    anything else as a plain string.

    Example:
        >>> parse_options(["num_classes=10", "variant=v1"])
        {'num_classes': 10, 'variant': 'v1'}
    """
    options: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise _checks.invalid("--option", "key=value with a Python identifier as key", item)
        try:
            options[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            options[key] = raw.strip()
    return options


# ---------------------------------------------------------------- MODEL


def _not_found(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``exc`` says ``module_name`` itself (or a package above it) is missing,
    rather than something its code imports."""
    missing = exc.name or ""
    return missing == module_name or module_name.startswith(missing + ".")


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    if not (_DOTTED.fullmatch(module_name) and _DOTTED.fullmatch(attribute)):
        raise _checks.invalid("MODEL", MODEL_FORMS, spec)
    _current_folder_first()
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _not_found(exc, module_name):
            raise RuntimeError(
                f"importing `{module_name}` for MODEL `{spec}` failed: "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from exc
        raise ValueError(
            f"Invalid value for argument `MODEL`. Expected {MODEL_FORMS}. "
            f"Received MODEL={spec!r}: {first_line(exc)}."
        ) from exc
    except Exception as exc:  # the module's own code failed while it was imported
        raise RuntimeError(
            f"importing `{module_name}` for MODEL `{spec}` failed: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    try:
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError as exc:
        raise ValueError(
            f"Invalid value for argument `MODEL`. Expected {MODEL_FORMS}. "
            f"Received MODEL={spec!r}: {first_line(exc)}."
        ) from exc
    if not callable(target):
        raise _checks.invalid("MODEL", "package.module:factory naming a callable", spec)
    return target


def _current_folder_first() -> None:
    """Look for the user's module in the current folder first, as ``python -m`` does
    (an installed ``onebyone`` script starts with its own folder on the path instead)."""
    here = os.getcwd()
    if sys.path[:1] not in ([""], [here]):
        sys.path.insert(0, here)


def _options_refused(spec: str, options: dict[str, object], exc: TypeError) -> ValueError:
    return ValueError(
        f"Invalid value for argument `--option`. Expected options that {spec} accepts. "
        f"Received {options!r}: {first_line(exc)}"
    )


def _call_factory(spec: str, factory: Callable[..., Any], options: dict[str, object]) -> Any:
    """Call the user's factory; whatever it raises becomes one line naming it."""
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (ValueError, TypeError):  # no signature to check (a builtin): let the call decide
        signature = None
    if signature is not None and options:
        try:
            signature.bind_partial(**options)
        except TypeError as exc:
            names = ", ".join(signature.parameters) or "none"
            raise _checks.invalid(
                "--option", f"keyword arguments that {spec} accepts ({names}); {exc}", options
            ) from exc
    try:
        return factory(**options)
    except TypeError as exc:
        if signature is None and options:
            raise _options_refused(spec, options, exc) from exc
        raise RuntimeError(f"`{spec}` raised TypeError: {first_line(exc)}") from exc
    except Exception as exc:
        raise RuntimeError(f"`{spec}` raised {type(exc).__name__}: {first_line(exc)}") from exc


def _build_external(spec: str, options: dict[str, object]) -> Any:
    try:
        return load_external(spec, **options)
    except TypeError as exc:  # an option the architecture does not take
        if not options:
            raise
        raise _options_refused(spec, options, exc) from exc
    except (ValueError, ImportError):  # an unknown name; the package is not installed
        raise
    except Exception as exc:
        raise RuntimeError(f"`{spec}` raised {type(exc).__name__}: {first_line(exc)}") from exc


def _build_registered(spec: str, options: dict[str, Any]) -> nn.Module:
    from onebyone.models import create_model, list_models

    names = list_models()
    if spec not in names:
        raise _checks.invalid("MODEL", f"one of {', '.join(names)}, {_OTHER_FORMS}", spec)
    try:
        return create_model(spec, **options)
    except TypeError as exc:
        if not options:
            raise
        raise _options_refused(spec, options, exc) from exc


def resolve_model(spec: str, options: dict[str, object]) -> nn.Module:
    """Build the model ``spec`` names with ``options`` as keyword arguments.

    Args:
        spec: a registered name (``"resnet50"``), ``"timm:NAME"``,
            ``"torchvision:NAME"`` or ``"package.module:factory"``.
        options: keyword arguments for the factory.

    Raises:
        ValueError: an unknown model, options it does not take.
        ImportError: ``timm:``/``torchvision:`` without the package (the message
            names the pip install).
        RuntimeError: the user's module or factory raised (the message names it
            and the exception, on one line).

    Example:
        >>> resolve_model("onebyone.nn:Conv1x1", {"in_channels": 3, "out_channels": 8})
        Conv1x1(3, 8)
    """
    if is_external(spec):
        model = _build_external(spec, options)
    elif ":" in spec:
        model = _call_factory(spec, _import_factory(spec), options)
    else:
        model = _build_registered(spec, options)
    if not isinstance(model, nn.Module):
        raise _checks.invalid("MODEL", "a factory returning a torch.nn.Module",
                              f"{spec} -> {type(model).__name__}", kind=TypeError)  # fmt: skip
    return model


# ---------------------------------------------------------------- input

REJECTIONS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AssertionError)
"""What a model's ``forward`` raises when it rejects an input (a shape check, an assert)."""


def expected_input(model: nn.Module, batch: int) -> tuple[int, ...] | None:
    """The input shape ``model`` says it expects (timm's ``pretrained_cfg["input_size"]``
    with ``batch`` in front), or ``None`` when it says nothing."""
    for name in ("pretrained_cfg", "default_cfg"):
        config = getattr(model, name, None)
        size = config.get("input_size") if isinstance(config, dict) else None
        if isinstance(size, (tuple, list)) and all(isinstance(n, int) for n in size):
            return (batch, *size)
    return None


def rejected_input(
    spec: str, model: nn.Module, shape: tuple[int, ...], exc: BaseException
) -> ValueError:
    """The one-line error for a model that raised ``exc`` on an input of ``shape``: the
    input, the model's reason and, when the model says it, the shape it expects."""
    text = "x".join(map(str, shape))
    reason = first_line(exc).rstrip(".")
    line = f"the model rejected --input {text}: {type(exc).__name__}: {reason}"
    expected = expected_input(model, shape[0] if shape else 1)
    if expected is not None and tuple(expected) != tuple(shape):
        line += f"; {spec} expects {'x'.join(map(str, expected))} (its pretrained_cfg input_size)"
    return ValueError(line)


# ---------------------------------------------------------------- weights


def _state_dict(loaded: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            inner = loaded.get(key)
            if isinstance(inner, dict):
                loaded = inner
                break
    if (
        isinstance(loaded, dict)
        and loaded
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        return loaded
    raise _checks.invalid(
        "--weights", "a state dict: a mapping of names to tensors", f"{path} holding "
        f"{type(loaded).__name__}"
    )  # fmt: skip


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch checkpoint, executing nothing.

    A torch checkpoint is read with ``torch.load(..., weights_only=True)``: a
    file that needs arbitrary objects unpickled is refused before any runs.
    Every failure is a ``ValueError`` with a one-line message.

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"weight": torch.ones(2)}, path)
        >>> load_weights(path)["weight"]
        tensor([1., 1.])
    """
    file = Path(path)
    if not file.is_file():
        raise _checks.invalid("--weights", "an existing file", path)
    with file.open("rb") as handle:
        head = handle.read(9)
    expected = (
        "Invalid value for argument `--weights`. Expected safetensors or a torch checkpoint "
        f"of plain tensors. Received {path}"
    )
    try:
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header size, then JSON
            from safetensors.torch import load_file

            loaded: object = load_file(str(file), device="cpu")
        else:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4"
                warnings.simplefilter("ignore")
                loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # the weights-only unpickler stopped before running anything; say why in one line
        text = str(exc)
        detail = text.partition("WeightsUnpickler error:")[2].strip() or text.strip()
        reason = detail.splitlines()[0][:160] if detail else type(exc).__name__
        if "Unsupported global" in reason:
            raise ValueError(
                f"{expected}: refused, loading it would unpickle arbitrary objects ({reason})"
            ) from None
        raise ValueError(
            f"{expected}: unreadable as a weights-only checkpoint ({reason})"
        ) from None
    except Exception as exc:  # corrupt or foreign files fail in many ways
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ValueError(f"{expected}: unreadable ({type(exc).__name__} {reason})") from None
    return _state_dict(loaded, path)
