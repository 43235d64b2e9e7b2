"""What the module ``optimize`` returns costs per call above its engine used plainly.

MobileNetV2 (built-in, random weights) at batch 1 in float32 and bfloat16 (where
this CPU has it). For each engine ``optimize`` builds, two providers are timed, each
on its own in long blocks after a warm-up (``onebyone.deploy.timing.time_alone``):

- ``returned``: the optimised module, as a user calls it (``Served``: binding the
  call, checking the input against the shapes the capture proved, then the engine
  module with its input conversion and output restructuring);
- ``plain``: the engine's own runtime called directly on the same input (ONNX
  Runtime's ``InferenceSession.run`` on a NumPy array, OpenVINO's compiled model,
  the torch engine's graph module on a channels-last tensor).

Writes ``benchmarks/results/wrapper.json``. Run (short, on a shared machine):
``nice python benchmarks/bench_wrapper.py --block 1.0``.
"""

from __future__ import annotations

import argparse
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
        array = x.numpy()
        return lambda: request.infer([array])
    graph = engine.graph_module
    cl = x.to(engine.dtype).contiguous(memory_format=torch.channels_last)
    return lambda: graph(cl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--block", type=float, default=2.0, help="seconds per timed block")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of untimed calls")
    args = parser.parse_args()
    model = obo.create_model("mobilenet_v2").eval()
    x = torch.randn(1, 3, 224, 224)
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
            returned = timing.time_alone(lambda f=fast: f(x), warmup_s=args.warmup,
                                         block_s=args.block)  # fmt: skip
            plain = timing.time_alone(_plain(served, x), warmup_s=args.warmup,
                                      block_s=args.block)  # fmt: skip
            ratio = returned.median_ms / plain.median_ms
            rows.append({
                "engine": engine, "precision": precision,
                "returned": returned.__dict__, "plain": plain.__dict__,
                "overhead": ratio - 1,
            })  # fmt: skip
            print(f"{engine:12s} {precision:9s} returned {returned}  plain {plain}  "
                  f"overhead {100 * (ratio - 1):+.1f}%")  # fmt: skip
    load = timing.machine_load()
    payload = {"environment": environment(), "load_before": str(load), "rows": rows}
    path = write_json("wrapper", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
