"""A small Network-in-Network trained on real handwritten digits.

The data are scikit-learn's bundled digits: 1,797 real 8x8 grey images of the
digits 0-9 (the UCI "optical recognition of handwritten digits" test set),
split into a training set and a stratified held-out test set.

The network is built around 1x1 convolutions, as in Lin et al.'s Network in
Network: two "mlpconv" layers (a 3x3 convolution followed by 1x1
convolutions), a 1x1 reduction between them, and no fully connected head: the
last 1x1 convolution produces one map per class and global average pooling
turns each map into that class's score.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from onebyone import _checks, _optional
from onebyone.nn import Conv1x1

__all__ = [
    "DigitMaps",
    "DigitsData",
    "DigitsNiN",
    "EpochStats",
    "TrainingResult",
    "digit_feature_maps",
    "evaluate",
    "load_digits_split",
    "torch_threads",
    "train_digits",
]


@dataclass(frozen=True)
class DigitsData:
    """Images scaled to ``[0, 1]`` as ``(N, 1, 8, 8)`` float32 tensors, labels as int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(*, test_size: float = 0.25, seed: int = 0) -> DigitsData:
    """scikit-learn's 1,797 bundled 8x8 digits, split with every class in the same
    proportion in both parts (stratified).

    Args:
        test_size: fraction held out for testing, in ``(0, 1)``.
        seed: seeds the split.

    Shape:
        ``x_train``: ``(N_train, 1, 8, 8)``, ``x_test``: ``(N_test, 1, 8, 8)``.

    Example:
        >>> data = load_digits_split()
        >>> tuple(data.x_test.shape)
        (450, 1, 8, 8)
    """
    purpose = "the digits data set (onebyone.explain.digits)"
    load_digits = _optional.require("sklearn.datasets", purpose).load_digits
    train_test_split = _optional.require("sklearn.model_selection", purpose).train_test_split
    if isinstance(test_size, bool) or not isinstance(test_size, float) or not 0 < test_size < 1:
        raise _checks.invalid("test_size", "a float between 0 and 1 (exclusive)", test_size)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel values 0..16 -> 0..1
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=test_size, stratify=digits.target, random_state=seed
    )
    return DigitsData(
        x_train=torch.from_numpy(x_tr).unsqueeze(1),  # (N, 8, 8) -> (N, 1, 8, 8)
        y_train=torch.from_numpy(y_tr).long(),
        x_test=torch.from_numpy(x_te).unsqueeze(1),
        y_test=torch.from_numpy(y_te).long(),
    )


class DigitsNiN(nn.Module):
    """NiN for 8x8 digits: mlpconv -> pool -> [1x1 reduction] -> mlpconv -> global average.

    ``mlpconv1``: 3x3 conv (1 -> ``width``) + BN + ReLU, then two ``Conv1x1(width, width)``
    with ReLU. ``pool``: 2x2 max, 8x8 -> 4x4. ``reduce``: ``Conv1x1(width, reduced)`` + ReLU
    (``nn.Identity`` when ``reduced`` is ``None``). ``mlpconv2``: 3x3 conv (-> ``2*width``)
    + BN + ReLU, ``Conv1x1(2*width, 2*width)`` + ReLU, ``Conv1x1(2*width, classes)``.
    The class scores are the spatial means of the last maps: no fully connected layer.

    Args:
        width: maps in the first mlpconv layer.
        reduced: maps after the 1x1 reduction, or ``None`` for no reduction.
        classes: output maps (scores).

    Shape:
        ``(N, 1, 8, 8) -> (N, classes)``.

    Example:
        >>> DigitsNiN()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, reduced: int | None = 16, classes: int = 10) -> None:
        super().__init__()
        w = _checks.positive_int("width", width)
        r = None if reduced is None else _checks.positive_int("reduced", reduced)
        k = _checks.positive_int("classes", classes)
        self.width, self.reduced, self.classes = w, r, k
        self.mlpconv1 = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            Conv1x1(w, w, activation="relu"),
            Conv1x1(w, w, activation="relu"),
        )
        self.pool = nn.MaxPool2d(2)
        self.reduce: nn.Module = nn.Identity() if r is None else Conv1x1(w, r, activation="relu")
        self.mlpconv2 = nn.Sequential(
            nn.Conv2d(w if r is None else r, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            Conv1x1(2 * w, 2 * w, activation="relu"),
            Conv1x1(2 * w, k),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.mlpconv1(x))  # (N, 1, 8, 8) -> (N, w, 4, 4)
        maps = self.mlpconv2(self.reduce(x))  # (N, w or r, 4, 4) -> (N, classes, 4, 4)
        return maps.mean(dim=(2, 3))  # global average: (N, classes, 4, 4) -> (N, classes)

    def extra_repr(self) -> str:
        return f"width={self.width}, reduced={self.reduced}, classes={self.classes}"

    def pointwise_layers(self) -> dict[str, Conv1x1]:
        """Every ``Conv1x1`` of the network by its module path (e.g. ``"mlpconv1.3"``)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, Conv1x1)}


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss/accuracy over its batches, then test loss/accuracy.

    ``seconds`` is the whole epoch with its evaluation; ``step_seconds`` the median
    wall time of one training step (forward, backward, gradient all-reduce when data
    parallel, optimizer step).
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    step_seconds: float = math.nan


@dataclass
class TrainingResult:
    """The trained model (eval mode), its per-epoch history and the data it saw."""

    model: DigitsNiN
    data: DigitsData
    history: list[EpochStats] = field(default_factory=list)
    seed: int = 0

    @property
    def test_accuracy(self) -> float:
        return self.history[-1].test_accuracy if self.history else float("nan")

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.history)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode.

    The model's training flag is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(x)
            loss = F.cross_entropy(logits, y).item()
            accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    finally:
        model.train(was_training)
    return loss, accuracy


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Move every image by -1, 0 or +1 pixel in each direction (zeros shifted in)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))  # (N, 1, H, W) -> (N, 1, H+2, W+2)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    rows = (torch.arange(h) + dy[:, None])[:, :, None]  # (N, H, 1)
    cols = (torch.arange(w) + dx[:, None])[:, None, :]  # (N, 1, W)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)  # (N, 1, H, W)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    n = _checks.positive_int("n", n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


BatchCallback = Callable[[int, int, int, float, float], None]
"""``on_batch(epoch, batch, batches, running_loss, running_accuracy)``."""


def _process_share(data_parallel: object) -> tuple[int, int]:
    """``(rank, world size)`` of this process in data-parallel training; ``(0, 1)`` alone."""
    if not isinstance(data_parallel, bool):
        raise _checks.invalid("data_parallel", "True or False", data_parallel, kind=TypeError)
    if not data_parallel:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise _checks.invalid(
            "data_parallel",
            "True only inside an initialised torch.distributed process group (start the "
            "processes with torchrun: `torchrun --nproc-per-node 2 -m onebyone.train`)",
            data_parallel,
        )
    return dist.get_rank(), dist.get_world_size()


def _broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (the batch-norm running statistics)."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def train_digits(
    *,
    epochs: int = 20,
    seed: int = 0,
    reduced: int | None = 16,
    width: int = 32,
    batch_size: int = 64,
    lr: float = 1e-2,
    data: DigitsData | None = None,
    train_limit: int | None = None,
    threads: int = 1,
    augment: bool = True,
    data_parallel: bool = False,
    device: torch.device | str | None = None,
    on_batch: BatchCallback | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainingResult:
    """Train ``DigitsNiN`` with Adam and a one-cycle learning-rate schedule.

    Deterministic for a given ``seed`` and ``threads``: the weights, the split and
    the batch order are all seeded, and the global random state is left as it was.

    With ``data_parallel=True`` (inside a ``torch.distributed`` process group, as
    ``python -m onebyone.train`` under torchrun sets up) every process draws the
    same global batches and shifts, trains on its equal share of each under
    ``DistributedDataParallel`` (the gradient is averaged over the processes, the
    gradient of the mean loss over the global batch), and ends with the same
    parameters. Batch norm normalises each process's share: on CUDA the layers
    become ``SyncBatchNorm`` (statistics of the global batch); on the CPU, where
    ``SyncBatchNorm`` does not run, each process uses its own share's statistics
    and the running statistics are rank 0's. The reported losses and accuracies are
    those of the global batch on every process.

    Args:
        epochs: passes over the training set.
        seed: seeds the initial weights, the split (when ``data`` is ``None``) and
            the shuffling.
        reduced: width of the 1x1 reduction (``None``: no reduction layer).
        width: width of the first mlpconv layer.
        batch_size: images per step (the global batch when data parallel, split
            equally between the processes); the last incomplete batch of an epoch is
            dropped (the order changes every epoch, so every image is used).
        lr: peak learning rate.
        data: a split from ``load_digits_split``; loaded with ``seed`` when ``None``.
        train_limit: train on only the first this many training images (for quick runs).
        threads: torch intra-op threads while training (restored afterwards); the
            network is small enough that one thread is usually fastest.
        augment: shift each training image by up to one pixel in each direction
            (a fresh random shift every time it is drawn).
        data_parallel: train as one of the processes of the current
            ``torch.distributed`` process group.
        device: where to train (default the CPU); the returned model stays there.
        on_batch: called after every step, for progress display (this process's
            running numbers).
        on_epoch: called after every epoch with its ``EpochStats``.

    Shape:
        images ``(N, 1, 8, 8)`` -> scores ``(N, 10)``.

    Example:
        >>> result = train_digits(epochs=1, train_limit=128)
        >>> len(result.history)
        1
    """
    n_epochs = _checks.positive_int("epochs", epochs)
    bs = _checks.positive_int("batch_size", batch_size)
    n_threads = _checks.positive_int("threads", threads)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _checks.invalid("seed", "an int", seed, kind=TypeError)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise _checks.invalid("lr", "a positive number", lr)
    rank, world = _process_share(data_parallel)
    if bs % world:
        raise _checks.invalid(
            "batch_size", f"a multiple of the {world} processes (each takes an equal share)", bs
        )
    dev = torch.device("cpu") if device is None else torch.device(device)
    data = load_digits_split(seed=seed) if data is None else data
    x_train, y_train = data.x_train, data.y_train
    if train_limit is not None:
        limit = _checks.positive_int("train_limit", train_limit)
        x_train, y_train = x_train[:limit], y_train[:limit]
    if bs > len(x_train):
        raise _checks.invalid("batch_size", f"at most the {len(x_train)} training images", bs)
    batches = len(x_train) // bs
    share = bs // world
    mine = slice(rank * share, (rank + 1) * share)  # this process's part of every batch
    x_test, y_test = data.x_test.to(dev), data.y_test.to(dev)
    with torch.random.fork_rng(devices=[]), torch_threads(n_threads):
        torch.manual_seed(seed)
        model = DigitsNiN(width=width, reduced=reduced)
        net: nn.Module = model.to(dev)
        if data_parallel:
            if dev.type == "cuda":  # swaps the BatchNorm2d children in place
                nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = None if dev.type == "cpu" else [dev]
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)  # rank 0's weights
        shuffle = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=n_epochs * batches, pct_start=0.2
        )
        result = TrainingResult(model=model, data=data, seed=seed)
        for epoch in range(1, n_epochs + 1):
            start = time.perf_counter()
            net.train()
            order = torch.randperm(len(x_train), generator=shuffle)
            loss_sum, correct, seen = 0.0, 0, 0
            steps: list[float] = []
            for b in range(batches):
                step_start = time.perf_counter()
                idx = order[b * bs : (b + 1) * bs]
                # every process draws the whole global batch's shifts: the same random stream
                images = _shift(x_train[idx], shuffle) if augment else x_train[idx]
                x, y = images[mine].to(dev), y_train[idx][mine].to(dev)
                logits = net(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
                steps.append(time.perf_counter() - step_start)
                if on_batch is not None:
                    on_batch(epoch, b + 1, batches, loss_sum / seen, correct / seen)
            if data_parallel:
                totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=dev)
                dist.all_reduce(totals)  # sums over the processes: the global batches' numbers
                loss_sum, correct, seen = totals[0].item(), int(totals[1]), int(totals[2])
                _broadcast_buffers(model)
            test_loss, test_acc = evaluate(model, x_test, y_test)
            stats = EpochStats(
                epoch=epoch,
                train_loss=loss_sum / seen,
                train_accuracy=correct / seen,
                test_loss=test_loss,
                test_accuracy=test_acc,
                seconds=time.perf_counter() - start,
                step_seconds=statistics.median(steps),
            )
            result.history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
        model.eval()
        del net  # a DistributedDataParallel wrapper's gradient hooks go with it
    return result


@dataclass(frozen=True)
class DigitMaps:
    """One test image per digit and the maps going into and out of one 1x1 layer."""

    layer: str
    images: dict[int, np.ndarray]  # digit -> (8, 8)
    before: dict[int, np.ndarray]  # digit -> (C, 8, 8): the 1x1 layer's input
    after: dict[int, np.ndarray]  # digit -> (K, 8, 8): its output
    channels_before: list[int]  # the maps whose means differ most between the digits
    channels_after: list[int]


def digit_feature_maps(
    result: TrainingResult, digits: tuple[int, int] = (2, 3), *, show: int = 4
) -> DigitMaps:
    """The first 1x1 layer of ``mlpconv1`` on the first correctly classified test image of
    each of two digits: its input maps, its output maps, and the ``show`` maps (of each)
    whose spatial means differ most between the two images.

    Shape:
        two ``(1, 8, 8)`` images -> ``(width, 8, 8)`` maps before and after the layer.
    """
    n = _checks.positive_int("show", show)
    model, data = result.model, result.data
    layer = model.pointwise_layers()["mlpconv1.3"]
    with torch.inference_mode():
        predicted = model(data.x_test).argmax(dim=1)
    picks = []
    for d in digits:
        hits = torch.nonzero((data.y_test == d) & (predicted == d)).flatten()
        if len(hits) == 0:
            hits = torch.nonzero(data.y_test == d).flatten()
        if len(hits) == 0:
            raise _checks.invalid("digits", "digits present in the test set", digits)
        picks.append(int(hits[0]))
    x = data.x_test[picks]  # (2, 1, 8, 8): one image per digit
    seen: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.update(before=args[0], after=out)

    handle = layer.register_forward_hook(keep)
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    images = {d: x[i, 0].numpy() for i, d in enumerate(digits)}
    before = {d: seen["before"][i].numpy() for i, d in enumerate(digits)}
    after = {d: seen["after"][i].numpy() for i, d in enumerate(digits)}

    def most_different(maps: dict[int, np.ndarray]) -> list[int]:
        a, b = (maps[d].mean(axis=(1, 2)) for d in digits)
        return [int(i) for i in np.argsort(-np.abs(a - b))[: min(n, len(a))]]

    return DigitMaps(
        layer="mlpconv1.3",
        images=images,
        before=before,
        after=after,
        channels_before=most_different(before),
        channels_after=most_different(after),
    )
