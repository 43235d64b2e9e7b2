"""Data for ``optimize(data=...)`` from a folder: images or tensors, in batches.

A folder holds images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.tif``,
``.tiff``, ``.webp``), or tensors (``.npy``, ``.pt`` read with
``weights_only=True``), or one sub-folder per class (an ImageFolder tree: labels are
the sub-folders' indices in sorted order). Images are converted to RGB, resized to
the example's height and width (bilinear) and normalised with the model's mean and
standard deviation (timm's data config for timm models, ImageNet's otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onebyone import _checks

__all__ = ["IMAGE_SUFFIXES", "TENSOR_SUFFIXES", "load_folder", "normalisation"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TENSOR_SUFFIXES = (".npy", ".pt")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel: timm's data config where the model has one."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return IMAGENET


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES + TENSOR_SUFFIXES)  # fmt: skip


def load_folder(
    argument: str, folder: str | Path, model: nn.Module, shape: Sequence[int]
) -> list[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Batches (of ``shape[0]`` rows) of the folder's data, shaped like ``shape``; with
    labels ``(x, y)`` for an ImageFolder tree.

    Raises:
        ValueError: a missing or empty folder, a file that cannot be read, data of
            another shape (``argument`` names the option).
    """
    root = Path(folder)
    expected = "a folder of images or of .npy/.pt tensors, or one sub-folder of images per class"
    if not root.is_dir():
        raise _checks.invalid(argument, expected, str(folder))
    classes = sorted(p for p in root.iterdir() if p.is_dir() and _files(p))
    items: list[tuple[Path, int | None]]
    if classes:
        items = [(f, label) for label, c in enumerate(classes) for f in _files(c)]
    else:
        items = [(f, None) for f in _files(root)]
    if not items:
        raise _checks.invalid(argument, expected, f"{folder} (no such files in it)")
    rows: list[torch.Tensor] = []
    labels: list[int] = []
    mean, std = normalisation(model)
    for path, label in items:
        for row in _read(argument, path, shape, mean, std):
            rows.append(row)
            labels.append(-1 if label is None else label)
    batch = max(1, int(shape[0]))
    out: list[torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(rows), batch):
        x = torch.stack(rows[start : start + batch])
        if classes:
            out.append((x, torch.tensor(labels[start : start + batch])))
        else:
            out.append(x)
    return out


def _read(
    argument: str, path: Path, shape: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> list[torch.Tensor]:
    """The rows (each shaped ``shape[1:]``) one file holds."""
    sample = tuple(int(d) for d in shape[1:])
    try:
        if path.suffix.lower() == ".npy":
            value = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        elif path.suffix.lower() == ".pt":
            loaded = torch.load(path, weights_only=True, map_location="cpu")
            if not isinstance(loaded, torch.Tensor):
                raise ValueError(f"holds a {type(loaded).__name__}, not a tensor")
            value = loaded.float()
        else:
            return [_image(path, sample, mean, std)]
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected readable data files. "
            f"Received {path.name}: {exc}"
        ) from None
    if tuple(value.shape) == sample:
        return [value]
    if value.dim() == len(sample) + 1 and tuple(value.shape[1:]) == sample:
        return list(value)
    raise ValueError(
        f"Invalid value for argument `{argument}`. Expected tensors of shape {sample} or "
        f"(N, {', '.join(map(str, sample))}) (the --input shape without its batch). "
        f"Received {path.name} of shape {tuple(value.shape)}."
    )


def _image(
    path: Path, sample: tuple[int, ...], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    from PIL import Image

    if len(sample) != 3 or sample[0] not in (1, 3):
        raise ValueError(f"images need an input of shape (N, 1 or 3, H, W), not {sample}")
    channels, height, width = sample
    with Image.open(path) as opened:
        image = opened.convert("RGB" if channels == 3 else "L")
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(array.copy())
    x = x.permute(2, 0, 1) if channels == 3 else x.unsqueeze(0)  # (H, W, C) -> (C, H, W)
    m = torch.tensor(mean[:channels], dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std[:channels], dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s
