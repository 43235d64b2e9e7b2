"""Data-parallel training of the demo's network on several processes or machines.

``python -m onebyone.train`` is one process of a ``torchrun`` job::

    torchrun --nproc-per-node 2 -m onebyone.train --epochs 20 --out run/

Each process reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` from the environment torchrun gives it, joins the process group
(gloo on the CPU, NCCL on CUDA, one GPU per process), and trains ``DigitsNiN`` on
scikit-learn's digits with ``train_digits(data_parallel=True)``: the same seed and
global batches as one process, each process on its share of every batch. Rank 0
prints one line per epoch and writes the trained weights (``model.safetensors``)
and the history (``history.json``) to ``--out``, a new folder (or ``--force``),
checked before training and written at once when it has finished.

``launch`` starts such a job on this machine from Python (``onebyone demo
--distributed`` does), with a time limit, and stops every process it started
when the job fails or runs out of time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist

import onebyone
from onebyone import _checks, _files
from onebyone.cli import EXIT_FAILURE, EXIT_USAGE, error_line
from onebyone.explain.digits import (
    DigitsNiN,
    EpochStats,
    TrainingResult,
    load_digits_split,
    train_digits,
)

__all__ = [
    "ENV_VARIABLES",
    "HISTORY_FILE",
    "MODEL_FILE",
    "ProcessEnv",
    "launch",
    "main",
    "process_count",
    "process_env",
    "process_group",
]

ENV_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What a launcher (torchrun) sets for each process, and what ``main`` needs."""
MODEL_FILE = "model.safetensors"
HISTORY_FILE = "history.json"
_EPOCH_LINE = "onebyone.train epoch "  # prefix of the JSON line per epoch that ``--json`` prints
_START_HINT = (
    "start the processes with a launcher: `torchrun --nproc-per-node 2 -m onebyone.train` "
    "(or `onebyone demo --distributed`)"
)


@dataclass(frozen=True)
class ProcessEnv:
    """One process's place in a job, as its launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` when CUDA is present, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @property
    def backend(self) -> str:
        """``"nccl"`` for GPUs, ``"gloo"`` for the CPU."""
        return "nccl" if self.device.type == "cuda" else "gloo"


def _env_int(name: str, value: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an int of at least {least}. "
            f"Received {name}={value!r}."
        )
    return number


def process_env() -> ProcessEnv:
    """This process's rank, world size and rendezvous address, read from the environment.

    Raises ``ValueError`` naming what is missing when the process was not started by
    a launcher, and when the job has a single process (data-parallel training needs
    at least two; one process trains with ``train_digits`` or ``onebyone demo``).

    Example:
        >>> import os
        >>> from unittest import mock
        >>> torchrun_sets = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
        ...                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
        >>> with mock.patch.dict(os.environ, torchrun_sets):
        ...     (process_env().rank, process_env().world_size)
        (1, 2)
    """
    missing = [name for name in ENV_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            "Invalid value for argument `environment`. Expected the variables a launcher "
            f"sets for each process ({', '.join(ENV_VARIABLES)}): {_START_HINT}. "
            f"Received no {', '.join(missing)}."
        )
    world = _env_int("WORLD_SIZE", os.environ["WORLD_SIZE"], 1)
    if world < 2:
        raise ValueError(
            "Invalid value for argument `WORLD_SIZE`. Expected at least 2 processes "
            "(one process trains without a launcher: `onebyone demo`). "
            f"Received WORLD_SIZE={world}."
        )
    rank = _env_int("RANK", os.environ["RANK"], 0)
    if rank >= world:
        raise ValueError(
            f"Invalid value for argument `RANK`. Expected a rank below WORLD_SIZE={world}. "
            f"Received RANK={rank}."
        )
    return ProcessEnv(
        rank=rank,
        world_size=world,
        local_rank=_env_int("LOCAL_RANK", os.environ["LOCAL_RANK"], 0),
        master_addr=os.environ["MASTER_ADDR"],
        master_port=_env_int("MASTER_PORT", os.environ["MASTER_PORT"], 1),
    )


@contextlib.contextmanager
def process_group(env: ProcessEnv, *, timeout: float = 300.0) -> Iterator[None]:
    """Join the job's process group for the block, then leave it.

    Rendezvous through the launcher's environment (``env://``); a peer that never
    arrives, or a collective that stalls, raises after ``timeout`` seconds instead
    of hanging.

    Args:
        env: this process's place, from ``process_env``.
        timeout: seconds to wait for the peers and for each collective.
    """
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise _checks.invalid("timeout", "a positive number of seconds", timeout)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    dist.init_process_group(
        env.backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _exit_with_parent() -> None:
    """End this process when its parent (the launcher that started it, as of this call)
    dies: a launcher killed outright leaves no workers behind."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="onebyone-parent-watch", daemon=True).start()


def _save(result: TrainingResult, folder: Path) -> None:
    """The trained weights and the per-epoch history, into ``folder``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(folder / MODEL_FILE))
    history = [dataclasses.asdict(e) for e in result.history]
    (folder / HISTORY_FILE).write_text(json.dumps(history) + "\n")


def _reduction(text: str) -> int | None:
    """``--reduced``: a width, or ``none``."""
    return None if text == "none" else int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m onebyone.train",
        description="One process of a data-parallel training of the demo's network on the "
        "digits; start it with torchrun (torchrun --nproc-per-node 2 -m onebyone.train ...).",
    )
    p.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, split and batches")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    p.add_argument("--width", type=int, default=32, help="maps in the first mlpconv layer")
    p.add_argument(
        "--reduced",
        type=_reduction,
        default=16,
        help="maps after the 1x1 reduction, or 'none' for no reduction (default 16)",
    )
    p.add_argument("--train-limit", type=int, default=None, help="train on this many images")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for peers")
    p.add_argument(
        "--out",
        default=None,
        help="new folder for rank 0's model.safetensors and history.json",
    )
    p.add_argument("--force", action="store_true", help="write into an existing --out folder")
    p.add_argument("--json", action="store_true", help="one JSON line per epoch (for launch)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one process of the job; returns its exit status (errors are one line)."""
    args = _parser().parse_args(argv)
    rank = os.environ.get("RANK", "?")
    try:
        env = process_env()
        target = None  # rank 0 writes; the other ranks may not even share its disk
        if env.rank == 0 and args.out is not None:
            target = _files.output_folder(  # before training
                "--out", args.out, (MODEL_FILE, HISTORY_FILE), force=args.force
            )

        def report(stats: EpochStats) -> None:
            if args.json:
                print(_EPOCH_LINE + json.dumps(dataclasses.asdict(stats)), flush=True)
            else:
                print(
                    f"epoch {stats.epoch}/{args.epochs}: train loss {stats.train_loss:.4f}, "
                    f"train {stats.train_accuracy:.2%}, test {stats.test_accuracy:.2%}, "
                    f"{1e3 * stats.step_seconds:.1f} ms/step on {env.world_size} processes",
                    flush=True,
                )

        with process_group(env, timeout=args.timeout):
            result = train_digits(
                epochs=args.epochs,
                seed=args.seed,
                reduced=args.reduced,
                width=args.width,
                batch_size=args.batch_size,
                lr=args.lr,
                train_limit=args.train_limit,
                data_parallel=True,
                device=env.device,
                on_epoch=report if env.rank == 0 else None,
            )
            if target is not None:
                with _files.staged([target]) as (folder,):  # all of it, or nothing
                    _save(result, folder)
            dist.barrier()  # nobody leaves before the weights are written
    except Exception as exc:  # KeyboardInterrupt and SystemExit are not Exceptions
        message = error_line(exc)
        print(f"onebyone.train (rank {rank}): error: {message}", file=sys.stderr, flush=True)
        return EXIT_USAGE if isinstance(exc, (ValueError, TypeError, KeyError)) else EXIT_FAILURE
    return 0


def _stop(process: subprocess.Popen[str], grace: float = 10.0) -> None:
    """Stop the launcher and its workers: SIGTERM (torchrun then stops its workers),
    SIGKILL for whatever is left after ``grace`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _pump(stream: IO[str], lines: queue.Queue[tuple[str, str | None]], name: str) -> None:
    """Put every line of ``stream`` on ``lines`` as ``(name, line)``, then ``(name, None)``."""
    for line in stream:
        lines.put((name, line.rstrip("\n")))
    lines.put((name, None))


def _failure(lines: Sequence[str]) -> str:
    """The most telling line of the workers' and the launcher's error output."""
    ours = [line for line in lines if line.startswith("onebyone.train (rank")]
    if ours:
        return ours[0].split("error: ", 1)[-1]
    errors = [line.strip() for line in lines if "Error" in line or "error" in line]
    text = [line.strip() for line in lines if line.strip()]
    return (errors or text or ["no error output"])[-1]


def process_count(nproc_per_node: object) -> int:
    """``nproc_per_node`` checked: an int of at least 2 (one process needs no launcher).

    Example:
        >>> process_count(2)
        2
    """
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int):
        raise _checks.invalid("nproc_per_node", "an int", nproc_per_node, kind=TypeError)
    if nproc_per_node < 2:
        raise _checks.invalid(
            "nproc_per_node",
            "at least 2 processes (one process trains without a launcher: `onebyone demo`)",
            nproc_per_node,
        )
    return nproc_per_node


def launch(
    *,
    nproc_per_node: int = 2,
    epochs: int = 20,
    seed: int = 0,
    reduced: int | None = 16,
    width: int = 32,
    batch_size: int = 64,
    lr: float = 1e-2,
    train_limit: int | None = None,
    timeout: float = 600.0,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainingResult:
    """Train ``DigitsNiN`` data-parallel on ``nproc_per_node`` local processes (torchrun).

    The job trains exactly what ``train_digits`` trains with the same arguments (same
    seed, global batch and schedule), split between the processes. The whole job,
    start-up included, has ``timeout`` seconds; past it, or when any process fails,
    every process is stopped and the error says why.

    Args:
        nproc_per_node: processes (at least 2; ``batch_size`` must be a multiple).
        epochs: passes over the training set, as in ``train_digits``.
        seed: seeds the weights, the split and the shuffling, as in ``train_digits``.
        reduced: width of the 1x1 reduction (``None``: none), as in ``train_digits``.
        width: width of the first mlpconv layer, as in ``train_digits``.
        batch_size: the global batch, split equally between the processes.
        lr: peak learning rate, as in ``train_digits``.
        train_limit: train on only the first this many training images.
        timeout: seconds for the whole job.
        on_epoch: called with rank 0's ``EpochStats`` after every epoch.

    Returns:
        The trained model (CPU, eval mode) loaded from rank 0's weights, its history,
        and the digits split of ``seed``.

    Example:
        >>> result = launch(nproc_per_node=2, epochs=1, train_limit=256)  # doctest: +SKIP
        >>> len(result.history)  # doctest: +SKIP
        1
    """
    nproc_per_node = process_count(nproc_per_node)
    n_epochs = _checks.positive_int("epochs", epochs)
    bs = _checks.positive_int("batch_size", batch_size)
    if bs % nproc_per_node:
        raise _checks.invalid(
            "batch_size", f"a multiple of nproc_per_node={nproc_per_node}", batch_size
        )
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise _checks.invalid("timeout", "a positive number of seconds", timeout)
    options = [
        f"--epochs={n_epochs}",
        f"--seed={seed}",
        f"--reduced={'none' if reduced is None else reduced}",
        f"--width={width}",
        f"--batch-size={bs}",
        f"--lr={lr}",
        f"--timeout={timeout}",
        "--json",
    ]
    if train_limit is not None:
        options.append(f"--train-limit={train_limit}")
    env = dict(os.environ)
    source = str(Path(onebyone.__file__).resolve().parents[1])  # the workers import this copy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="onebyone-train-") as folder:
        run = Path(folder) / "run"  # a new folder, as --out wants
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc_per_node}", "--max-restarts=0",
            "-m", "onebyone.train", *options, f"--out={run}",
        ]  # fmt: skip
        history = _run(command, env, timeout, nproc_per_node, on_epoch)
        from safetensors.torch import load_file

        state = load_file(str(run / MODEL_FILE))
        stored = json.loads((run / HISTORY_FILE).read_text())
    model = DigitsNiN(width=width, reduced=reduced)
    model.load_state_dict(state)
    model.eval()
    result = TrainingResult(model=model, data=load_digits_split(seed=seed), seed=seed)
    result.history.extend(EpochStats(**e) for e in stored)
    if [e.epoch for e in history] != [e.epoch for e in result.history]:
        raise RuntimeError("the training processes reported epochs their history lacks")
    return result


def _run(
    command: list[str],
    env: dict[str, str],
    timeout: float,
    nproc: int,
    on_epoch: Callable[[EpochStats], None] | None,
) -> list[EpochStats]:
    """Run the launcher until it ends or ``timeout`` passes; rank 0's epochs as they come."""
    deadline = time.monotonic() + timeout
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, stopped as one
    )
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    errors: collections.deque[str] = collections.deque(maxlen=200)
    streams = {"out": process.stdout, "err": process.stderr}
    pumps = [
        threading.Thread(target=_pump, args=(stream, lines, name), daemon=True)
        for name, stream in streams.items()
    ]
    for pump in pumps:
        pump.start()
    late = TimeoutError(
        f"the {nproc} training processes did not finish within {timeout:g} s; "
        "every process of the job was stopped"
    )
    epochs: list[EpochStats] = []
    try:
        ended: set[str] = set()
        while len(ended) < len(streams):
            left = deadline - time.monotonic()
            if left <= 0:
                raise late
            try:
                name, line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                ended.add(name)
            elif name == "out" and line.startswith(_EPOCH_LINE):
                stats = EpochStats(**json.loads(line[len(_EPOCH_LINE) :]))
                epochs.append(stats)
                if on_epoch is not None:
                    on_epoch(stats)
            elif name == "err":
                errors.append(line)
        status = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise late from None
    finally:
        _stop(process)
        for pump in pumps:
            pump.join(timeout=5.0)
    if status != 0:
        raise RuntimeError(
            f"the {nproc} training processes failed (exit status {status}): {_failure(errors)}"
        )
    return epochs


if __name__ == "__main__":
    _exit_with_parent()
    sys.exit(main())
