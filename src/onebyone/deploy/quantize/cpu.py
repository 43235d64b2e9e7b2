"""Whether this CPU has integer dot-product instructions, which make int8 native.

VNNI (``avx512_vnni``, ``avx_vnni``) multiplies and accumulates int8 in one
instruction; AMX (``amx_int8``) does it on tiles. Without either, the quantised
kernels still run (oneDNN, ONNX Runtime and OpenVINO emulate them with AVX2 / AVX-512
multiply-adds) but gain less, and may be slower than float32.
"""

from __future__ import annotations

import functools

__all__ = ["INT8_FLAGS", "int8_instructions"]

INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
"""``/proc/cpuinfo`` flags that give int8 dot products."""


@functools.cache
def int8_instructions() -> tuple[str, ...] | None:
    """The flags of ``INT8_FLAGS`` this CPU has (empty: none), or ``None`` where unknown
    (no ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return tuple(f for f in INT8_FLAGS if f in flags)
    except OSError:
        return None
    return None
