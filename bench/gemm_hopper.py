"""Sweep of the Hopper (Mosaic GPU) W8A8 kernel against XLA bf16, XLA int8 and the Triton w8a8.

    python bench/gemm_hopper.py [--shapes 4096x4096,11008x4096,4096x11008] [--ms 1024,4096] [--json OUT]

Same harness as bench/gemm.py (rotated input sets, one jitted loop per sample, median); every
output is checked against `w8a8_matmul_reference`. Prints one row per (shape, M): the baselines
and each HopperConfig, with its speedup over bf16 of the same run.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gemm  # noqa: E402  (sets XLA_FLAGS before jax is imported)

from mixq_jax import pallas_kernels as pk  # noqa: E402
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import HopperConfig, w8a8_matmul_hopper  # noqa: E402
from mixq_jax.pallas_kernels.w8a8o16_matmul_hopper import w8a8o16_matmul_hopper  # noqa: E402

CONFIGS = {
    "h128x128s4": HopperConfig(tile_m=128, tile_n=128, stages=4),
    "h128x128s3": HopperConfig(tile_m=128, tile_n=128, stages=3),
    "h128x64s5": HopperConfig(tile_m=128, tile_n=64, stages=5),
    "h128x64s3": HopperConfig(tile_m=128, tile_n=64, stages=3),  # W8A8 at the tiling and depth of the first W8A8O16
    "h64x128s4": HopperConfig(tile_m=64, tile_n=128, stages=4),
    "h128x128w4": HopperConfig(tile_m=128, tile_n=128, stages=4, grid_tile_width=4),
    "h128x128w16": HopperConfig(tile_m=128, tile_n=128, stages=4, grid_tile_width=16),
    "h128x128d1": HopperConfig(tile_m=128, tile_n=128, stages=4, delay_release=1),
    "h128x64d1": HopperConfig(tile_m=128, tile_n=64, stages=5, delay_release=1),
    "h128x128k64s6": HopperConfig(tile_m=128, tile_n=128, tile_k=64, stages=6),
    # W8A8O16 (128 outlier columns; w8a8o16_matmul_hopper: the outlier columns are extra pipeline steps)
    "o16_128x128s4": HopperConfig(),
    "o16_128x128s3": HopperConfig(stages=3),
    "o16_128x64s5": HopperConfig(tile_n=64, stages=5),
    "o16_128x128d1": HopperConfig(delay_release=1),  # one int8 wgmma kept in flight
    "o16_128x128w4": HopperConfig(grid_tile_width=4),
    "o16_128x128w16": HopperConfig(grid_tile_width=16),
    # W8A8 on w8a8o16_matmul_hopper's hand-written pipeline (no outliers): against w8a8_matmul_hopper's
    "o16k_w8a8": HopperConfig(),
}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008", help="NxK list")
  p.add_argument("--ms", default="1024,4096", help="M list")
  p.add_argument("--configs", default=",".join(CONFIGS), help="HopperConfig names: " + ",".join(CONFIGS))
  p.add_argument("--samples", type=int, default=15, help="timed samples per kernel (median kept)")
  p.add_argument("--json", default=None, help="write records here")
  a = p.parse_args()
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  names = a.configs.split(",")
  cols = ["xla_int8", "w8a8", "w8a8o16"] + names
  recs, rows = [], []
  for shp in a.shapes.split(","):
    n, k = (int(v) for v in shp.split("x"))
    for m in (int(v) for v in a.ms.split(",")):
      t_bf, _, _ = gemm.run_one("bf16", m, n, k, samples=a.samples)
      row = {"shape": shp, "M": m, "N": n, "K": k, "bf16": t_bf * 1e6}
      for col in cols:
        try:
          if col in ("xla_int8", "w8a8", "w8a8o16"):
            t, err, _ = gemm.run_one(col, m, n, k, samples=a.samples)
          else:
            kind = "w8a8o16" if col.startswith("o16_") else "w8a8"
            cfg = CONFIGS[col]
            if col.startswith("o16k_"):
              fn = lambda *s, c=cfg: w8a8o16_matmul_hopper(*s, config=c)
              ref = pk.w8a8_matmul_reference
            elif kind == "w8a8":
              fn = lambda *s, c=cfg: w8a8_matmul_hopper(*s, config=c)
              ref = pk.w8a8_matmul_reference
            else:
              fn = lambda *s, c=cfg: w8a8o16_matmul_hopper(*s, config=c)
              ref = pk.w8a8o16_matmul_reference
            sb = gemm.set_bytes(kind, m, n, k)
            t_est = gemm.est_seconds(m, n, k, sb)
            sets = gemm.make_sets(kind, m, n, k, gemm.n_sets(t_est, sb))
            err = gemm.max_rel_err(fn(*sets[0]), ref(*sets[0]))
            t = gemm.time_call(fn, sets, a.samples, t_est=t_est)
            del sets
        except Exception as e:  # report, keep going
          print(f"FAILED {col} M={m} {shp}: {type(e).__name__}: {str(e)[:400]}", flush=True)
          continue
        row[col] = (t * 1e6, t_bf / t, err)
        recs.append(dict(kernel=col, M=m, N=n, K=k, time_us=t * 1e6, bf16_time_us=t_bf * 1e6,
                         speedup=t_bf / t, max_rel_err=err))
      rows.append(row)
      print(gemm.fmt_row(row, cols), flush=True)
      if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"env": info, "records": recs}, indent=1))
  gemm.print_table(rows, cols, info)

if __name__ == "__main__":
  main()
