"""Compile many jax programs at once in a thread pool (tracing holds the GIL, XLA compilation, including
its Triton and Mosaic GPU kernels, does not): bench/throughput.py's model programs and the tuning sweeps
of bench/gemm.py and bench/gemm4.py."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any


def compile_programs(jobs: dict[Any, Any], workers: int, log) -> dict[Any, Any]:
  """jobs: key -> zero-argument function returning a jax `Lowered`. Lowers and compiles them in a
  thread pool (tracing holds the GIL, XLA compilation does not). Returns key -> Compiled, or the
  exception that stopped it (reported in that configuration's record)."""
  out: dict[Any, Any] = {}

  def one(key, make):
    t0 = time.perf_counter()
    try:
      res = make().compile()
    except Exception as e:  # noqa: BLE001 -- reported per configuration
      res = e
    log(f"  compiled {key} in {time.perf_counter() - t0:.1f}s" + (f" FAILED: {res}" if isinstance(res, Exception)
                                                                  else ""))
    return key, res

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as ex:
    for key, res in ex.map(lambda kv: one(*kv), list(jobs.items())):
      out[key] = res
  return out
