"""GEMM benchmark rows for the 4-bit and MX kernels (issue 8), on bench/gemm.py's protocol.

    python bench/gemm4.py [--models 7b,70b] [--ms 1,16,1024,4096] [--kernels ...] [--configs "BM,BN,BK,W,S;..."] [--json OUT]
                          [--device-time]
    python bench/gemm4.py --tune [--models 7b,70b] [--shapes qkvo,down,q_o] [--kernels w4a16,w4a8,w4a8g,mx] [--compile-workers 8]

Kernels: w4a16 (AWQ g128), w4a8 (QQQ per-channel), w4a8g (QQQ g128), w4a4o16 (MixQ-4, 128
outlier columns), w4a4o16q (QUIK asymmetric activations, 128 outliers), mx (MXFP8 x MXFP4),
mxmix (MXFP8 x MXFP4, the last ~K/16 channels, a multiple of 128, MXFP6), mxfp8 (mx on its FP8
tensor-core path, `use_fp8=True`; needs compute capability >= 8.9); xla_w4a16, xla_w4a8, xla_w4a8g,
xla_mx, xla_mxmix (XLA's own GEMM on the same packed weights, `pallas_kernels/xla_matmuls.py`). Timing, input-set
rotation and the ratio to XLA bf16 measured in the same run are bench/gemm.py's (`time_call`,
`n_sets`); every output is checked against its reference on the first input set. Inputs are random on the device
(random bytes are valid packed int4 and E2M1 codes). Activation quantization is not timed
(the kernels take already-quantized activations, like gemm.py's w8a8 rows).
"""

import argparse
import dataclasses
import functools
import itertools
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gemm  # noqa: E402  (sets XLA_FLAGS before jax initializes a backend)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mixq_jax import pallas_kernels as pk  # noqa: E402
from mixq_jax.pallas_kernels import configs, xla_matmuls  # noqa: E402
from mixq_jax.pallas_kernels._w4_common import select_config  # noqa: E402
from mixq_jax.pallas_kernels.configs import KernelConfig  # noqa: E402
from mixq_jax.pallas_kernels.mx import MXWeights  # noqa: E402

KINDS = ("w4a16", "w4a8", "w4a8g", "w4a4o16", "w4a4o16q", "mx", "mxmix", "mxfp8")
# XLA's own program on the same packed weights (pallas_kernels/xla_matmuls.py): no config, same inputs.
XLA_KINDS = ("xla_w4a16", "xla_w4a8", "xla_w4a8g", "xla_mx", "xla_mxmix")
# Kernels called directly at their default config, whatever the wrapper would dispatch (sm_90 only).
DIRECT_KINDS = ("w4a16_mosaic",)
NO_CONFIG_KINDS = XLA_KINDS + DIRECT_KINDS
C = gemm.N_OUTLIERS


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _bytes(key, r, c, dtype):
  return jax.random.randint(key, (r, c), 0, 256, jnp.int32).astype(jnp.uint8).view(dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _e8m0(key, r, c, lo=122):
  return jax.random.randint(key, (r, c), lo, lo + 8, jnp.int32).astype(jnp.uint8)


def make_set(kind, m, n, k, i):
  kind = kind.removeprefix("xla_").removesuffix("_triton").removesuffix("_mosaic")
  ks = jax.random.split(gemm._key(kind, m, n, k, i), 8)
  g = k // 128
  if kind == "w4a16":
    return (gemm._normal(ks[0], m, k), _bytes(ks[1], n, k // 2, jnp.uint8),
            (gemm._scale(ks[2], g * n).reshape(g, n)).astype(jnp.bfloat16),
            jnp.full((g, n), 8, jnp.bfloat16))
  if kind in ("w4a8", "w4a8g"):
    s = (gemm._int8(ks[0], m, k), gemm._scale(ks[1], m), _bytes(ks[2], n, k // 2, jnp.int8),
         gemm._scale(ks[3], n))
    if kind == "w4a8g":
      s += (jax.random.randint(ks[4], (n, g), 1, 16, jnp.int32).astype(jnp.int8),)
    return s
  if kind in ("w4a4o16", "w4a4o16q"):
    asym = kind == "w4a4o16q"
    s = (_bytes(ks[0], m, k // 2, jnp.uint8 if asym else jnp.int8), gemm._scale(ks[1], m),
         _bytes(ks[2], n, k // 2, jnp.int8), gemm._scale(ks[3], n), gemm._normal(ks[4], m, C),
         gemm._normal(ks[5], n, C), jnp.int32(C))
    if asym:
      s += (gemm._scale(ks[6], m), jax.random.randint(ks[7], (n,), -500, 500, jnp.int32))
    return s
  if kind in ("mx", "mxmix", "mxfp8"):
    k6 = max(128, k // 16 // 128 * 128) if kind == "mxmix" else 0  # K4 stays a multiple of 128
    k4 = k - k6
    x_e = (4 * gemm._normal(ks[0], m, k)).astype(jnp.float8_e4m3fn)
    w = MXWeights(_bytes(ks[1], n, k4 // 2, jnp.uint8), _e8m0(ks[2], n, k4 // 32),
                  (4 * gemm._normal(ks[3], n, k6)).astype(jnp.float8_e4m3fn) if k6 else None,
                  _e8m0(ks[4], n, k6 // 32) if k6 else None)
    return (x_e, _e8m0(ks[5], m, k // 32), w)
  raise ValueError(kind)


def set_bytes(kind, m, n, k):
  kind = kind.removeprefix("xla_").removesuffix("_triton").removesuffix("_mosaic")
  return {"w4a16": 2 * m * k + n * k // 2 + 4 * n * k // 128,
          "w4a8": m * k + n * k // 2, "w4a8g": m * k + n * k // 2 + n * k // 128,
          "w4a4o16": (m + n) * k // 2 + 2 * C * (m + n),
          "w4a4o16q": (m + n) * k // 2 + 2 * C * (m + n),
          "mx": m * k + n * k // 2 + (m + n) * k // 32,
          "mxfp8": m * k + n * k // 2 + (m + n) * k // 32,
          "mxmix": m * k + n * k // 2 + n * k // 16 + (m + n) * k // 32}[kind]


def kernel_fn(kind):
  kw = dict(interpret=True) if gemm.INTERPRET else {}
  if kind == "xla_w4a16":
    return xla_matmuls.w4a16_matmul_xla, pk.w4a16_matmul_reference
  if kind == "w4a16_mosaic":
    if gemm.INTERPRET:
      raise ValueError("w4a16_mosaic (the Mosaic GPU kernel) runs on sm_90 GPUs only")
    return pk.w4a16_matmul_hopper, pk.w4a16_matmul_reference
  if kind == "xla_w4a8":
    return xla_matmuls.w4a8_matmul_xla, pk.w4a8_matmul_reference
  if kind == "xla_w4a8g":
    return (lambda x, sx, w, sw, sg: xla_matmuls.w4a8_matmul_xla(x, sx, w, sw, None, sg),
            lambda x, sx, w, sw, sg: pk.w4a8_matmul_reference(x, sx, w, sw, None, sg))
  if kind in ("xla_mx", "xla_mxmix"):
    return xla_matmuls.mx_matmul_xla, pk.mx_matmul_reference
  fns = {
      "w4a16": (pk.w4a16_matmul, pk.w4a16_matmul_reference),
      "w4a8": (pk.w4a8_matmul, pk.w4a8_matmul_reference),
      "w4a4o16": (pk.w4a4o16_matmul, pk.w4a4o16_matmul_reference),
      "mx": (pk.mx_matmul, pk.mx_matmul_reference),
  }
  if kind == "w4a8g":
    f = lambda x, sx, w, sw, sg, **a: pk.w4a8_matmul(x, sx, w, sw, None, sg, **a)
    r = lambda x, sx, w, sw, sg: pk.w4a8_matmul_reference(x, sx, w, sw, None, sg)
    return functools.partial(f, **kw), r
  if kind == "w4a4o16q":
    f = lambda x, sx, w, sw, xo, wo, c, mx, ws, **a: pk.w4a4o16_matmul(
        x, sx, w, sw, xo, wo, c, None, mx, ws, **a)
    r = lambda x, sx, w, sw, xo, wo, c, mx, ws: pk.w4a4o16_matmul_reference(
        x, sx, w, sw, xo, wo, c, None, mx, ws)
    return functools.partial(f, **kw), r
  if kind == "mxfp8":
    return functools.partial(pk.mx_matmul, use_fp8=True, **kw), pk.mx_matmul_reference
  fn, ref = fns["mx" if kind == "mxmix" else kind]
  return functools.partial(fn, **kw), ref


def inputs(kind, m, n, k):
  """(input sets, estimated seconds per call) for one kernel at one shape, as run_one times it."""
  sb = set_bytes(kind, m, n, k)
  t_est = gemm.est_seconds(m, n, k, sb + 2 * m * n)
  return [make_set(kind, m, n, k, i) for i in range(gemm.n_sets(t_est, sb))], t_est


def run_one(kind, m, n, k, samples, config=None):
  if kind.endswith("_triton"):  # an explicit config keeps the Pallas Triton kernel on sm_90
    kind = kind.removesuffix("_triton")
    config = config or pk_select(kind, m, n, k)
  if config is not None and kind in NO_CONFIG_KINDS:
    raise ValueError(f"{kind} takes no config (XLA's program, or a kernel at its default)")
  fn, ref = kernel_fn(kind)
  if config is not None:
    fn = functools.partial(fn, config=config)
  sets, t_est = inputs(kind, m, n, k)
  err = gemm.max_rel_err(fn(*sets[0]), ref(*sets[0]))
  t = gemm.time_call(fn, sets, samples, t_est=t_est)
  global LAST_PROFILE
  LAST_PROFILE = gemm.device_profile(fn, sets) if DEVICE_TIME else None
  return t, err


DEVICE_TIME = False  # --device-time: run_one also profiles each call (gemm.device_profile) into LAST_PROFILE
LAST_PROFILE = None  # (device seconds, device kernels) per call of the last run_one, or None


# Decode (M <= 16) candidates per kernel: (block_m, block_n, block_k, warps, stages, split_k). At M <= 16 a
# kernel streams the weights once, so what matters is how many programs share that stream (N / block_n x
# split_k, against 132 SMs) and how many bytes each loop step moves; split-K partials cost one small XLA sum.
TUNE_CANDIDATES = {  # (block_m, block_n, block_k, warps, stages, split_k); the two-warp ones were added after
    # the w8a16 word-decode A/B ran 3-5% faster on two warps than on four (H100, 2026-12-06)
    "w4a16": [(16, 64, 256, 4, 4, 4), (16, 64, 256, 4, 4, 8), (16, 32, 256, 4, 4, 4), (16, 64, 512, 4, 3, 2),
              (16, 128, 256, 4, 4, 8), (16, 32, 256, 4, 4, 1), (16, 64, 256, 4, 4, 2), (16, 64, 256, 4, 2, 4),
              (16, 64, 256, 4, 3, 4), (16, 64, 256, 4, 2, 8), (16, 64, 128, 4, 3, 4),
              (16, 64, 128, 2, 3, 4), (16, 32, 256, 2, 3, 4), (16, 64, 256, 2, 3, 4), (16, 64, 128, 4, 3, 8)],
    "w4a8": [(16, 32, 512, 4, 4, 1), (16, 32, 256, 4, 4, 1), (16, 32, 256, 4, 4, 2), (16, 64, 256, 4, 4, 2),
             (16, 32, 256, 4, 4, 4), (16, 64, 256, 4, 2, 2), (16, 64, 256, 4, 3, 2), (16, 32, 512, 4, 2, 1),
             (16, 32, 256, 2, 4, 1), (16, 32, 512, 2, 4, 1), (16, 32, 256, 2, 4, 2), (16, 64, 256, 2, 4, 2),
             # 128-256 programs on narrow N (k/v): 30% faster at 1024 x 4096 (H100, 2026-12-06 15:25 UTC)
             (16, 64, 256, 4, 4, 8), (16, 32, 256, 2, 4, 8)],
    "w4a8g": [(16, 32, 1024, 4, 3, 1), (16, 32, 512, 4, 4, 1), (16, 32, 512, 4, 4, 2), (16, 32, 256, 4, 4, 4),
              (16, 32, 256, 4, 2, 4), (16, 32, 512, 4, 2, 2), (16, 64, 256, 4, 2, 4),
              (16, 32, 256, 2, 2, 4), (16, 32, 512, 2, 4, 1),
              # block_k 128 with six stages: 8.5 against 9.3 us at 4096 x 4096 (H100, 2026-12-06 17:20 UTC)
              (16, 32, 128, 2, 6, 4), (16, 32, 256, 2, 4, 4)],
    # mx unrolls block_k / 32 scale blocks per step (block_k 512 spilled at block_m 64). Two stages ran 10%
    # faster than four at 8192 x 8192, M = 16 (H100, 2026-12-06), so the sweep covers stages too.
    "mx": [(16, 64, 256, 4, 4, 4), (16, 64, 256, 4, 2, 4), (16, 64, 256, 4, 3, 4), (16, 64, 128, 4, 2, 4),
           (16, 64, 128, 4, 3, 4), (16, 64, 256, 4, 2, 8), (16, 64, 256, 4, 2, 2), (16, 128, 256, 4, 2, 4),
           (16, 32, 256, 4, 2, 4), (16, 64, 512, 4, 2, 4), (16, 64, 256, 2, 2, 4), (16, 32, 256, 2, 2, 4)],
}


def tune(a):
  """Sweep TUNE_CANDIDATES at each (kernel, shape, M <= 16); the fastest correct config per shape and the
  best geometric mean over the shapes (the bucket default) go into tuned_table.py (gemm.write_table)."""
  from mixq_jax.pallas_kernels import tuned_table  # noqa: PLC0415
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  gpu, merged, log, bf16 = configs.gpu_name(), dict(tuned_table.TABLE), [], {}
  keep = None if a.shapes is None else a.shapes.split(",")
  shapes = [gemm.SHAPES[mdl][nm] for mdl in a.models.split(",") for nm in gemm.SHAPES[mdl] if keep is None or nm in keep]
  for kind in a.kernels.split(","):
    if kind not in TUNE_CANDIDATES:
      print(f"{kind}: no decode candidates, skipped", flush=True)
      continue
    for m in [int(v) for v in a.ms.split(",") if int(v) <= 16]:
      best, scores = {}, {}
      for n, k in shapes:  # every candidate of a shape compiles at once (threads), then each is timed alone
        cands = [KernelConfig(block_m=c[0], block_n=c[1], block_k=c[2], num_warps=c[3], num_stages=c[4],
                              split_k=c[5]) for c in TUNE_CANDIDATES[kind]]
        fn, ref = kernel_fn(kind)
        fns = [functools.partial(fn, config=cfg) for cfg in cands]
        sets, t_est = inputs(kind, m, n, k)
        want = ref(*sets[0])
        if (m, n, k) not in bf16:  # the same-process baseline for the speedups in the log
          bf16[(m, n, k)] = gemm.run_one("bf16", m, n, k, samples=a.samples)[0]
        tb = bf16[(m, n, k)]
        t0 = time.perf_counter()
        results = gemm.time_candidates(fns, sets, gemm.timing_loops(t_est, len(sets)), a.samples,
                                       lambda f, s0=sets[0]: gemm.max_rel_err(f(*s0), want), workers=a.compile_workers)
        print(f"  {kind} M={m} {n}x{k}: {len(cands)} candidates in {time.perf_counter() - t0:.0f} s", flush=True)
        for cfg, res in zip(cands, results):
          if isinstance(res, Exception):  # report, keep going
            print(f"  {kind} M={m} {n}x{k} {_cfg_name(cfg)}: FAILED {type(res).__name__}: {str(res)[:200]}", flush=True)
            continue
          t, err = res
          log.append(dict(kernel=kind, M=m, N=n, K=k, config=cfg.to_dict(), time_us=t * 1e6, max_rel_err=err,
                          bf16_time_us=tb * 1e6, speedup=tb / t))
          print(f"  {kind} M={m} {n}x{k} {_cfg_name(cfg)}: {t * 1e6:.1f} us ({tb / t:.2f}x bf16) err={err:.1e}",
                flush=True)
          if err < 2e-2:
            gemm.keep_fastest(best, scores, configs.table_key(kind, gpu, configs.m_bucket(m), n, k), t, cfg)
        del sets
      gemm.set_bucket_default(best, scores, len(shapes), kind, gpu, m)
      merged.update({key: v[1].to_dict() for key, v in best.items()})
      gemm.write_table(merged, info, [f"{kind}|{gpu}"])  # after every kernel, so a cut-off run keeps it
      if a.json:  # after every kernel too
        pathlib.Path(a.json).write_text(json.dumps({"env": info, "tune_log": log, "table": merged}, indent=1))


def parse_configs(text):
  """"BM,BN,BK,WARPS,STAGES[,SPLIT_K];..." -> [KernelConfig]."""
  out = []
  for item in filter(None, (t.strip() for t in (text or "").split(";"))):
    v = [int(x) for x in item.split(",")]
    if len(v) not in (5, 6):
      raise SystemExit(f"--configs entry {item!r}: expected BM,BN,BK,WARPS,STAGES[,SPLIT_K]")
    out.append(KernelConfig(block_m=v[0], block_n=v[1], block_k=v[2], num_warps=v[3], num_stages=v[4],
                            split_k=v[5] if len(v) == 6 else 1))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="7b,70b", help="comma list of model shape sets from bench/gemm.py (7b, 70b, extra, tiny)")
  p.add_argument("--shapes", default=None, help="comma list of shape names to keep (e.g. qkvo,q_o)")
  p.add_argument("--ms", default="1,16,1024,4096", help="comma list of token counts M")
  p.add_argument("--kernels", default=",".join(KINDS), help="comma list of " + ",".join(KINDS + NO_CONFIG_KINDS)
                 + "; KIND_triton forces the Pallas Triton kernel (the plain name goes through the wrapper's "
                 "dispatch, which on sm_90 may run XLA's program or the Mosaic GPU kernels); w4a16_mosaic is "
                 "the sm_90 Mosaic GPU w4a16 kernel (w4a16_matmul_hopper) called directly")
  p.add_argument("--samples", type=int, default=25, help="timed samples per kernel (median kept; default 25)")
  p.add_argument("--configs", default=None, metavar="BM,BN,BK,W,S[,SPLIT];...",
                 help="also time every kernel with each of these configs (block_m, block_n, block_k, warps, "
                      "stages, split-K) next to its default; block_m is clipped to M's bucket. "
                      "Columns are named kernel@BMxBNxBKwWsS[kSPLIT]")
  p.add_argument("--json", default=None, help="write one record per kernel x shape here (after every kernel, so a "
                                              "cut-off run keeps what it timed)")
  p.add_argument("--tune", action="store_true",
                 help="sweep the decode configs (TUNE_CANDIDATES, M <= 16) of w4a16, w4a8, w4a8g, mx on --models / "
                      "--shapes and rewrite mixq_jax/pallas_kernels/tuned_table.py with the fastest per shape")
  p.add_argument("--compile-workers", type=int, default=8,
                 help="--tune: threads that compile a shape's candidates at once before they are timed one by one "
                      "(default 8; 1 compiles them one after another)")
  p.add_argument("--device-time", action="store_true",
                 help="also profile each call: device time (kernels only, no dispatch) and the number of device "
                      "kernels one call launches (the GEMM plus the XLA passes around it), in the JSON and a "
                      "second table")
  a = p.parse_args()
  if a.tune:
    return tune(a)
  global DEVICE_TIME
  DEVICE_TIME = gemm.DEVICE_TIME = a.device_time
  kinds = a.kernels.split(",")
  extra = parse_configs(a.configs)
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  keep = None if a.shapes is None else a.shapes.split(",")
  shapes = [(f"{mdl}/{nm}", nk) for mdl in a.models.split(",")
            for nm, nk in gemm.SHAPES[mdl].items() if keep is None or nm in keep]
  rows, records, cols, prof = [], [], [], []
  for (label, (n, k)), m in itertools.product(shapes, [int(v) for v in a.ms.split(",")]):
    t_bf16, _, _ = gemm.run_one("bf16", m, n, k, samples=a.samples)
    row = {"shape": label, "M": m, "N": n, "K": k, "bf16": t_bf16 * 1e6}
    print(f"{label} M={m}: bf16 {t_bf16 * 1e6:.1f} us", flush=True)
    for kind in kinds:
      for cfg in [None] + (extra if kind not in NO_CONFIG_KINDS else []):
        col = kind if cfg is None else f"{kind}@{_cfg_name(cfg)}"
        if cfg is not None:
          cfg = dataclasses.replace(cfg, block_m=min(cfg.block_m, max(16, configs.m_bucket(m))))
        t0 = time.perf_counter()
        try:
          t, err = run_one(kind, m, n, k, a.samples, cfg)
        except Exception as e:  # report, keep going
          print(f"FAILED {col} M={m} N={n} K={k}: {type(e).__name__}: {str(e)[:300]}", flush=True)
          continue
        cols += [col] if col not in cols else []
        row[col] = (t * 1e6, t_bf16 / t, err)
        if kind in NO_CONFIG_KINDS:
          path, config = ("xla" if kind in XLA_KINDS else "mosaic: " + kind), None
        else:
          path, config = ("triton", cfg.to_dict()) if cfg is not None else dispatch(kind, m, n, k)
        records.append(dict(kernel=kind, M=m, N=n, K=k, shape=label, time_us=t * 1e6, bf16_time_us=t_bf16 * 1e6,
                            speedup=t_bf16 / t, max_rel_err=err, path=path, config=config))
        if LAST_PROFILE is not None:
          records[-1].update(device_us=LAST_PROFILE[0] * 1e6, kernels_per_call=LAST_PROFILE[1],
                             bf16_device_us=gemm.LAST_DEVICE_S * 1e6)
          prof.append((label, m, col, t * 1e6, *LAST_PROFILE, gemm.LAST_DEVICE_S))
        print(f"  {col}: {t * 1e6:.1f} us ({t_bf16 / t:.2f}x) err {err:.1e} [{time.perf_counter() - t0:.0f} s]",
              flush=True)
        if a.json:
          pathlib.Path(a.json).write_text(json.dumps({"env": info, "records": records}, indent=1))
    rows.append(row)
    print(gemm.fmt_row(row, cols), flush=True)
  gemm.print_table(rows, cols, info)
  if prof:
    print("\n# per call: timing-loop time next to the profiler's device time (kernels only) and kernel count")
    print("| shape | M | kernel | us (loop) | device us | kernels | bf16 device us |\n|---|---:|---|---:|---:|---:|---:|")
    for label, m, col, t_us, dev_s, nk, bf_s in prof:
      print(f"| {label} | {m} | {col} | {t_us:.1f} | {dev_s * 1e6:.1f} | {nk:.1f} | {bf_s * 1e6:.1f} |")


def _cfg_name(c):
  return (f"{c.block_m}x{c.block_n}x{c.block_k}w{c.num_warps}s{c.num_stages}"
          + (f"k{c.split_k}" if c.split_k > 1 else ""))


def dispatch(kind, m, n, k):
  """-> (path, config dict or None): the program the wrapper runs at its defaults, as the records
  should name it (the Triton config alone would be wrong where sm_90 leaves the Triton kernel)."""
  from mixq_jax.pallas_kernels import w4_hopper  # noqa: PLC0415
  from mixq_jax.pallas_kernels.w8a8_matmul import hopper_config  # noqa: PLC0415
  from mixq_jax.pallas_kernels.w8a8_matmul_hopper import on_hopper  # noqa: PLC0415

  base = kind.removesuffix("_triton")
  triton = ("triton", pk_select(kind, m, n, k).to_dict())
  if kind.endswith("_triton") or not on_hopper(gemm.INTERPRET, None):
    return triton
  if base in ("mx", "mxmix", "mxfp8"):
    return ("xla: decode + bf16 GEMM", None) if m >= sys.modules["mixq_jax.pallas_kernels.mx_matmul"].XLA_MIN_M else triton
  if base == "w4a16":  # g128 (make_set), bf16 x: the wrapper's rule
    mod = sys.modules["mixq_jax.pallas_kernels.w4a16_matmul"]
    wcfg = mod.hopper_route(m, n, -(-k // 128) * 128, 128, jnp.bfloat16)
    if wcfg is not None:
      return "mosaic: w4a16_matmul_hopper", dataclasses.asdict(wcfg)
    return triton if m <= mod.TRITON_MAX_M else ("xla: dequantize + bf16 GEMM", None)
  if base not in ("w4a8", "w4a8g", "w4a4o16", "w4a4o16q"):
    return triton
  outliers = C if base.startswith("w4a4o16") else 0
  hcfg = hopper_config(m, n, k, False, None, outlier_columns=outliers, rank1=base == "w4a4o16q")
  if hcfg is None:
    return triton
  if base == "w4a8" and m < w4_hopper.FUSED_MAX_M:
    return "mosaic: w4a8_matmul_hopper (int4 unpacked in smem)", dataclasses.asdict(hcfg)
  return f"mosaic: XLA int4 unpack + {'w8a8o16' if outliers else 'w8a8'}_matmul_hopper", dataclasses.asdict(hcfg)


def pk_select(kind, m, n, k):
  """The config the wrapper picks by itself (recorded with each default-config row)."""
  kind = kind.removesuffix("_triton")
  base = {"w4a4o16q": "w4a4o16", "mxmix": "mx", "mxfp8": "mx"}.get(kind, kind)  # w4a8g has its own entries
  return select_config(base, m, n, k)


if __name__ == "__main__":
  main()
