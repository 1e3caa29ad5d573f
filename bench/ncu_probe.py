"""Decode GEMM calls to look at under Nsight Compute: XLA bf16, w8a16 and w4a8 at M = 16.

    python bench/ncu_probe.py --time          # the same calls timed by bench/gemm.py's harness (no ncu)
    export XLA_FLAGS=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/xla_autotune
    python bench/ncu_probe.py                 # fills the autotune cache (XLA picks bf16's kernel)
    ncu --clock-control none -k regex:"w8a16|w4a8|gemm|gemv|nvjet|sm90|cutlass|reduce" \\
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \\
        python bench/ncu_probe.py            # each kernel 3 times per shape, serialized by ncu

What it is for: the 4-bit and 8-bit decode kernels pay about 5 us per call beyond their weight bytes
(BENCHMARKS.md, "the fixed cost of a call"), and XLA's bf16 GEMM (a split-K Triton GEMM and a reduction at
M = 16 on an H100) pays much less. ncu's duration of one
kernel alone, set against the harness time of back-to-back calls, says whether that cost is inside the
kernel (ramp-up, tail, stalls: see the warp states) or between kernels. Under ncu, XLA reads its GEMM choice
from the autotune cache that the first run filled, so its compile launches no candidate GEMMs and bf16 runs the
kernel the harness times (with autotuning off instead, the bf16 dot became an untuned Triton fusion that took
42 us at 4096 x 4096, M = 16, against the harness's 17). The tuned table's H100 entries are used on any GPU.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gemm  # noqa: E402  (sets XLA_FLAGS before jax starts)
import gemm4  # noqa: E402
import jax  # noqa: E402

from mixq_jax.pallas_kernels import _w4_common, configs  # noqa: E402

SHAPES = [(4096, 4096), (1024, 8192), (8192, 8192)]  # (N, K): 7B qkvo, 70B k/v, 70B q_o


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--time", action="store_true", help="time the calls with the harness instead of running "
                  "each three times for ncu")
  ap.add_argument("--m", type=int, default=16, help="tokens M (default 16)")
  ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES),
                  help="comma-separated NxK weight shapes (default: 7B qkvo, 70B k/v, 70B q_o)")
  args = ap.parse_args(argv)
  try:
    shapes = [(int(n), int(k)) for n, k in (s.split("x") for s in args.shapes.split(","))]
  except ValueError:
    ap.error(f"--shapes {args.shapes!r}: expected comma-separated NxK, e.g. 4096x4096,1024x8192")
  saved = configs.gpu_name, _w4_common.gpu_name
  configs.gpu_name = _w4_common.gpu_name = lambda: "h100"  # the H100 table's entries on any GPU
  try:
    run(shapes, args.m, args.time)
  finally:
    configs.gpu_name, _w4_common.gpu_name = saved


def run(shapes, m, time_only):
  bf16 = jax.jit(gemm.xla_bf16)
  w8a16 = gemm.kernel_fn("w8a16", None)[0]  # interpret mode on CPU (a smoke run of this script)
  w4a8 = gemm4.kernel_fn("w4a8")[0]
  for n, k in shapes:
    if time_only:
      row = [f"{n}x{k}"]
      for kind, fn in (("bf16", gemm.xla_bf16), ("w8a16", w8a16)):
        t_est = gemm.est_seconds(m, n, k, gemm.moved_bytes(kind, m, n, k))
        sets = gemm.make_sets(kind, m, n, k, gemm.n_sets(t_est, gemm.set_bytes(kind, m, n, k)))
        row.append(f"{kind} {gemm.time_call(fn, sets, 10, t_est=t_est) * 1e6:.1f}")
      sets, t_est = gemm4.inputs("w4a8", m, n, k)
      row.append(f"w4a8 {gemm.time_call(w4a8, sets, 10, t_est=t_est) * 1e6:.1f}")
      print("harness us:", " | ".join(row), flush=True)
      continue
    s8 = gemm.make_sets("w8a16", m, n, k, 1)[0]
    sb = gemm.make_sets("bf16", m, n, k, 1)[0]
    s4 = gemm4.make_set("w4a8", m, n, k, 0)
    for _ in range(3):
      jax.block_until_ready(bf16(*sb))
      jax.block_until_ready(w8a16(*s8))
      jax.block_until_ready(w4a8(*s4))


if __name__ == "__main__":
  main()
