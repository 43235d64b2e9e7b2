"""What the module ``optimize`` returns costs per call above its engine used plainly.

MobileNetV2 (built-in, random weights) at batch 1 (``--batch``) in float32 and bfloat16 (where
this CPU has it). For each engine ``optimize`` builds, three providers are timed,
each on its own in long blocks after a warm-up (``onebyone.deploy.timing.time_alone``),
in ``--rounds`` rounds of one block each, back to back, in a rotating order. Each
round gives one ratio to the plain call; the overhead is the median of the rounds'
ratios (this machine's speed drifts by tens of per cent between seconds, which a
ratio of two blocks far apart would take for overhead), with their range:

- ``returned``: the optimised module, as a user calls it (``Served``: binding the
  call, checking the input against the shapes the capture proved, then the engine
  module with its input conversion and output restructuring);
- ``plain``: the engine's own runtime called directly on the same input (ONNX
  Runtime's ``InferenceSession.run`` on a NumPy array, OpenVINO's compiled model
  called on the array (``CompiledModel.__call__``, which reads it in place),
  the torch engine's graph module on the input converted to its dtype and layout in
  one copy, as any caller of it must);
- ``plain again``: the plain call timed as a third provider: how far identical calls
  differ between these blocks, the floor against which the overhead is read.

Blocks of different providers are seconds apart, and the machine drifts between them
by more than the 2% in question. The three providers call one engine (one session,
one compiled model, one graph), so they can also be timed call by call without one
engine's threads slowing another's: ``--alternate`` seconds of calls of ``returned``
and ``plain`` in turn, the order swapped every pair, each pair giving the returned
call's time over the plain one's; the overhead is the median of the pairs, its range
the medians of five equal slices of them. Two calls in a row see the same machine,
so the drift cancels. The same is done with ``plain`` against ``plain again`` as the
control, and, for ONNX Runtime and OpenVINO, with ``returned`` against the plain call
made from PyTorch (``Tensor.numpy`` on the input, ``torch.from_numpy`` on the outputs):
what the returned module adds to the conversions any PyTorch caller of the engine makes.

Beside the blocks, the Python side of a call is measured alone: the returned module
with the engine's own work replaced by handing back a stored result, microseconds
per call, warm (the best of five loops of 20,000 calls) and cold (each call right after
a plain call of the engine, whose weights have filled the caches meanwhile: the median
over ``--alternate`` seconds). The cold figure is what a real call pays.

Writes ``benchmarks/results/wrapper.json``. Run (short, on a shared machine):
``nice python benchmarks/bench_wrapper.py --block 1.0``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

import onebyone as obo
from common import environment, write_json
from onebyone.deploy import timing
from onebyone.deploy.engines.base import arrays_of


def _plain(engine: Any, x: torch.Tensor) -> Callable[[], object]:
    """The engine's runtime called directly on ``x`` (no onebyone code per call)."""
    name = type(engine).__name__
    if name == "OnnxRuntimeModule":
        session = engine._session(fixed=engine._batch_symbol is not None)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)
    if name == "OpenVINOModule":
        request = engine._request("fixed" if engine.shapes is not None else "dynamic")
        compiled, array = request.get_compiled_model(), x.numpy()
        return lambda: compiled(array)
    graph, dtype = engine.graph_module, engine.dtype
    # the one copy any caller of the graph makes: the input in its dtype and layout
    return lambda: graph(x.to(dtype, memory_format=torch.channels_last))


def _plain_from_torch(engine: Any, x: torch.Tensor) -> Callable[[], object] | None:
    """The engine's runtime called directly as a PyTorch caller must: the input viewed
    as an array (``Tensor.numpy``), the outputs wrapped as tensors (``torch.from_numpy``).
    ``None`` for the torch engine, whose plain call takes tensors already."""
    name = type(engine).__name__
    if name == "OnnxRuntimeModule":
        session = engine._session(fixed=engine._batch_symbol is not None)
        input_name = session.get_inputs()[0].name
        return lambda: [torch.from_numpy(o)
                        for o in session.run(None, {input_name: x.numpy()})]  # fmt: skip
    if name == "OpenVINOModule":
        request = engine._request("fixed" if engine.shapes is not None else "dynamic")
        compiled = request.get_compiled_model()
        return lambda: [torch.from_numpy(o) for o in compiled(x.numpy()).to_tuple()]
    return None


def _paired(blocks: dict[str, list[timing.Timing]], name: str) -> list[float]:
    """Per round: ``name``'s block median over the plain call's, less one."""
    pairs = zip(blocks[name], blocks["plain"], strict=True)
    return [a.median_ms / b.median_ms - 1 for a, b in pairs]


def _range(ratios: list[float]) -> str:
    return f"{100 * min(ratios):+.1f} to {100 * max(ratios):+.1f}%"


def _alternating(
    first: Callable[[], object], second: Callable[[], object], *, seconds: float, warmup: float
) -> list[float]:
    """Calls of ``first`` and ``second`` in turn for ``seconds`` (the order swapped every
    pair): per pair, ``first``'s time over ``second``'s, less one."""
    clock = time.perf_counter
    ratios: list[float] = []
    with torch.inference_mode():
        start = clock()
        while clock() - start < warmup:
            first()
            second()
        start = clock()
        while clock() - start < seconds:
            pair = []
            for call in (first, second) if len(ratios) % 2 == 0 else (second, first):
                t = clock()
                call()
                pair.append(clock() - t)
            a, b = pair if len(ratios) % 2 == 0 else pair[::-1]
            ratios.append(a / b - 1)
    return ratios


def _sliced(ratios: list[float], slices: int = 5) -> list[float]:
    """The medians of ``slices`` equal consecutive slices of ``ratios``."""
    size = max(1, len(ratios) // slices)
    return [statistics.median(ratios[i : i + size]) for i in range(0, size * slices, size)]


@contextlib.contextmanager
def _stubbed(fast: Any, served: Any, x: torch.Tensor) -> Iterator[None]:
    """The returned module with its engine's own work replaced by handing back a stored
    result: ``run_arrays`` and the single-call functions of the shapes proven."""
    outputs = served.run_arrays(arrays_of([x]))
    singles = dict(fast._single)
    served.run_arrays = lambda arrays: outputs  # an instance attribute over the method
    fast._single = {key: lambda array: outputs[0] for key in singles}
    try:
        yield
    finally:
        del served.run_arrays
        fast._single = singles


def _python_side_us(fast: Any, served: Any, x: torch.Tensor, calls: int = 20000) -> float | None:
    """Microseconds per call of the returned module with its engine's own work stubbed
    out: what onebyone's Python adds, with warm caches (the best of five loops). ``None``
    for the torch engine, whose conversions of the input are real work."""
    if not hasattr(served, "run_arrays"):
        return None
    best = float("inf")
    with _stubbed(fast, served, x), torch.inference_mode():
        fast(x)  # the shape proven: the calls below take the common path
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                fast(x)
            best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def _python_side_cold_us(
    fast: Any, served: Any, x: torch.Tensor, plain: Callable[[], object], seconds: float
) -> float | None:
    """Microseconds of the returned module's Python per call, each call made right
    after a plain call of the engine, with the engine's own work stubbed out (the median
    over ``seconds``). ``None`` for the torch engine."""
    if not hasattr(served, "run_arrays"):
        return None
    clock, times = time.perf_counter, []
    with _stubbed(fast, served, x), torch.inference_mode():
        fast(x)
        start = clock()
        while clock() - start < seconds:
            plain()
            t = clock()
            fast(x)
            times.append(clock() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--block", type=float, default=2.0, help="seconds per timed block")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of untimed calls")
    parser.add_argument("--rounds", type=int, default=12, help="blocks of each provider")
    parser.add_argument("--alternate", type=float, default=10.0,
                        help="seconds of calls in turn, per pair of providers")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    model = obo.create_model("mobilenet_v2").eval()
    x = torch.randn(args.batch, 3, 224, 224)
    rows: list[dict[str, Any]] = []
    load = timing.machine_load()
    print(f"timed at {load}" + (" (busy: ratios are noisy)" if load and load.busy else ""))
    for precision in ("float32", "bfloat16"):
        for engine in ("torch", "onnxruntime", "openvino"):
            try:
                fast, _ = obo.optimize(model, x, precision=precision, engine=engine, measure=False)
            except (ValueError, RuntimeError) as exc:
                rows.append({"engine": engine, "precision": precision, "skipped": str(exc)[:200]})
                continue
            served = getattr(fast, "engine", None)
            if served is None:
                continue
            # "plain again" is the plain call timed as a third provider: the spread of
            # identical calls in these blocks, against which the overhead is read
            plain = _plain(served, x)
            calls = {"returned": lambda f=fast: f(x), "plain": plain, "plain again": plain}
            blocks: dict[str, list[timing.Timing]] = {name: [] for name in calls}
            for r in range(args.rounds):  # each provider first, second and last in turn
                names = list(calls)[r % 3 :] + list(calls)[: r % 3]
                for name in names if r % 2 == 0 else names[::-1]:
                    blocks[name].append(timing.time_alone(calls[name], warmup_s=args.warmup,
                                                          block_s=args.block))  # fmt: skip
            per_round, control = _paired(blocks, "returned"), _paired(blocks, "plain again")
            overhead = statistics.median(per_round)
            medians = {n: statistics.median(t.median_ms for t in b) for n, b in blocks.items()}
            turns = {"seconds": args.alternate, "warmup": args.warmup}
            alternating = _alternating(calls["returned"], plain, **turns)
            alternating_control = _alternating(calls["plain again"], plain, **turns)
            from_torch = _plain_from_torch(served, x)
            over_conversion = None if from_torch is None else _alternating(
                calls["returned"], from_torch, **turns)  # fmt: skip
            python_us = _python_side_us(fast, served, x)
            cold_us = _python_side_cold_us(fast, served, x, plain, args.alternate / 2)
            rows.append({
                "engine": engine, "precision": precision,
                "returned_ms": medians["returned"], "plain_ms": medians["plain"],
                "blocks": {n: [t.__dict__ for t in b] for n, b in blocks.items()},
                "overhead": overhead,
                "overhead_per_round": per_round,
                "control": statistics.median(control),
                "control_per_round": control,
                "alternating": {
                    "pairs": len(alternating),
                    "overhead": statistics.median(alternating),
                    "overhead_per_slice": _sliced(alternating),
                    "control": statistics.median(alternating_control),
                    "control_per_slice": _sliced(alternating_control),
                    "over_plain_from_torch": None if over_conversion is None
                    else statistics.median(over_conversion),
                    "over_plain_from_torch_per_slice": None if over_conversion is None
                    else _sliced(over_conversion),
                },
                "python_side_us": python_us,
                "python_side_cold_us": cold_us,
            })  # fmt: skip
            side = "-" if python_us is None else f"{python_us:.1f} us, {cold_us:.1f} us cold"
            print(f"{engine:12s} {precision:9s} returned {medians['returned']:.3f} ms  plain "
                  f"{medians['plain']:.3f} ms  overhead {100 * overhead:+.1f}% "
                  f"(rounds {_range(per_round)}; plain against itself "
                  f"{100 * statistics.median(control):+.1f}%, {_range(control)}); "
                  f"Python side {side}", flush=True)  # fmt: skip
            print(f"{'':22s} call by call, {len(alternating)} pairs: overhead "
                  f"{100 * statistics.median(alternating):+.2f}% "
                  f"(slices {_range(_sliced(alternating))}); plain against itself "
                  f"{100 * statistics.median(alternating_control):+.2f}% "
                  f"({_range(_sliced(alternating_control))})", flush=True)  # fmt: skip
            if over_conversion is not None:
                print(f"{'':22s} over the plain call from PyTorch (Tensor.numpy in, "
                      f"torch.from_numpy out): {100 * statistics.median(over_conversion):+.2f}% "
                      f"(slices {_range(_sliced(over_conversion))})", flush=True)  # fmt: skip
    load = timing.machine_load()
    payload = {"environment": environment(), "load_before": str(load), "rows": rows}
    path = write_json("wrapper", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
