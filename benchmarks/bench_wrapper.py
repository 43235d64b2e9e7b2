"""What the module ``optimize`` returns costs per call above its engine used plainly.

MobileNetV2 (built-in, random weights) at batch 1 (``--batch``) in float32 and bfloat16 (where
this CPU has it). For each engine ``optimize`` builds, two providers are timed, each
on its own in long blocks after a warm-up (``onebyone.deploy.timing.time_alone``),
in ``--rounds`` alternating blocks. Each round times one block of each, back to back,
and gives one ratio; the overhead is the median of the rounds' ratios (this machine's
speed drifts by tens of per cent between seconds, which a ratio of two blocks far
apart would take for overhead), with their range:

- ``returned``: the optimised module, as a user calls it (``Served``: binding the
  call, checking the input against the shapes the capture proved, then the engine
  module with its input conversion and output restructuring);
- ``plain``: the engine's own runtime called directly on the same input (ONNX
  Runtime's ``InferenceSession.run`` on a NumPy array, OpenVINO's compiled model
  called on the array (``CompiledModel.__call__``, which reads it in place),
  the torch engine's graph module on a channels-last tensor).

Writes ``benchmarks/results/wrapper.json``. Run (short, on a shared machine):
``nice python benchmarks/bench_wrapper.py --block 1.0``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import torch

import onebyone as obo
from common import environment, write_json
from onebyone.deploy import timing


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--block", type=float, default=2.0, help="seconds per timed block")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of untimed calls")
    parser.add_argument("--rounds", type=int, default=12, help="blocks of each provider")
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
            calls = {"returned": lambda f=fast: f(x), "plain": _plain(served, x)}
            blocks: dict[str, list[timing.Timing]] = {"returned": [], "plain": []}
            for r in range(args.rounds):  # alternating blocks, each order equally often
                for name in ("returned", "plain") if r % 2 == 0 else ("plain", "returned"):
                    blocks[name].append(timing.time_alone(calls[name], warmup_s=args.warmup,
                                                          block_s=args.block))  # fmt: skip
            returned, plain = (statistics.median(t.median_ms for t in blocks[n])
                               for n in ("returned", "plain"))  # fmt: skip
            pairs = zip(blocks["returned"], blocks["plain"], strict=True)
            per_round = [a.median_ms / b.median_ms - 1 for a, b in pairs]
            overhead = statistics.median(per_round)
            rows.append({
                "engine": engine, "precision": precision,
                "returned_ms": returned, "plain_ms": plain,
                "returned": [t.__dict__ for t in blocks["returned"]],
                "plain": [t.__dict__ for t in blocks["plain"]],
                "overhead": overhead,
                "ratio_of_medians": returned / plain - 1,
                "overhead_per_round": per_round,
            })  # fmt: skip
            print(f"{engine:12s} {precision:9s} returned {returned:.3f} ms  plain {plain:.3f} ms"
                  f"  overhead {100 * overhead:+.1f}% (rounds "
                  f"{', '.join(f'{100 * o:+.1f}' for o in per_round)})")  # fmt: skip
    load = timing.machine_load()
    payload = {"environment": environment(), "load_before": str(load), "rows": rows}
    path = write_json("wrapper", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
