"""GEMM kernel benchmark and tuner for mixq_jax.pallas_kernels (issue 3).

    python bench/gemm.py [--models 7b,70b,extra] [--ms 1,16,64,256,1024,4096] [--json OUT]
    python bench/gemm.py --tune [--json OUT]        # rewrites mixq_jax/pallas_kernels/tuned_table.py
    python bench/gemm.py --models 7b --ms 1024,4096 --kernels quantize_act,quantize_act_xla --device-time

For each linear shape (N, K) and M it times, in the same run: XLA bf16 `x @ w.T`; XLA's own int8
dot (both operands K-major, int32 out) followed by the same dequant epilogue; the Pallas kernels
w8a8, w8a8o16 (128 outlier columns), w8a16; and quantize_act on x [M, K]. Every output is checked
against its reference. Timing: R distinct input sets (rotated so they do not all sit in L2) are run
by one jitted call (dispatch amortized over R kernels); that call is issued 3 times per sample and
the median over >= 20 samples is reported per kernel call. `--device-time` adds each kernel's device
time from a profiler trace (no dispatch, no loop), to show what the harness adds.
"""

import argparse
import dataclasses
import datetime
import functools
import itertools
import json
import math
import os
import pathlib
import statistics
import sys
import time

# Timing loops re-run kernels on unchanged inputs; keep XLA from hoisting them out of the loop.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_disable_hlo_passes=while-loop-invariant-code-motion").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import compile_pool  # noqa: E402  (bench/compile_pool.py: the thread-pool compile shared with throughput.py)

from mixq_jax import pallas_kernels as pk  # noqa: E402
from mixq_jax.pallas_kernels import configs  # noqa: E402
from mixq_jax.pallas_kernels.configs import KernelConfig  # noqa: E402
from mixq_jax.pallas_kernels.w8a8_matmul import hopper_config  # noqa: E402

# Linear layers (N, K) = (out_features, in_features), HF layout.
SHAPES = {
    "7b": {"qkvo": (4096, 4096), "gate_up": (11008, 4096), "down": (4096, 11008)},
    "70b": {"q_o": (8192, 8192), "kv": (1024, 8192), "gate_up": (28672, 8192),
            "down": (8192, 28672)},
    "extra": {"n8192_k21760": (8192, 21760)},
    "tiny": {"tiny": (256, 256)},  # CPU smoke runs
}
INTERPRET = jax.devices()[0].platform != "gpu"
SAMPLES = int(os.environ.get("GEMM_BENCH_SAMPLES", "0"))  # override (CPU smoke runs)
MS = (1, 16, 64, 256, 1024, 4096)
N_OUTLIERS = 128
TABLE_PATH = pathlib.Path(__file__).resolve().parents[1] / "mixq_jax/pallas_kernels/tuned_table.py"
NT = (((1,), (1,)), ((), ()))

# Rough ceilings used only to size the repetition count (measured ones are printed).
PEAK_FLOPS, PEAK_BW = 700e12, 3.0e12


def est_seconds(m, n, k, bytes_moved):
  return max(2 * m * n * k / PEAK_FLOPS, bytes_moved / PEAK_BW, 3e-6)


def n_sets(t_est, set_bytes):
  """Distinct input sets per jitted call: enough work to amortize dispatch (~200 us) and enough
  bytes to rotate out of L2 (~200 MB), within 6 GB."""
  r = max(math.ceil(200e-6 / t_est), math.ceil(200e6 / max(set_bytes, 1)), 2)
  return int(min(r, 32, max(2, 6e9 // max(set_bytes, 1))))


def _first(o):
  o = jax.tree.leaves(o)[0]
  return o.reshape(-1)[0].astype(jnp.float32)


def timing_loops(t_est, nsets):
  """fori_loop iterations per timed call: about 2 ms of kernels, 2..64."""
  return max(2, min(64, math.ceil(2e-3 / max((t_est or 1e-4) * nsets, 1e-6))))


def timing_program(fn, sets, loops):
  """The jitted program `time_call` times: `loops` iterations of a fori_loop, each calling `fn` once per
  set. The outputs are the loop carry, so they are fully materialized, and the barrier ties each
  iteration's inputs to the previous outputs so that no iteration is dead. XLA's loop-invariant code
  motion is disabled (XLA_FLAGS at the top of this file), otherwise the calls, whose inputs do not
  change, would be hoisted out of the loop."""
  def run(ss):
    def body(i, outs):
      _, ss_i = jax.lax.optimization_barrier((outs, ss))
      return [fn(*s) for s in ss_i]
    init = [jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(fn, *s))
            for s in ss]
    return jax.lax.fori_loop(0, loops, body, init)
  return jax.jit(run)


def compile_programs(fns, sets, loops, workers=8):
  """`timing_program(fn, sets, loops)` of every fn, compiled at once (`compile_pool`; a 4-bit decode kernel
  takes ~20 s to compile alone, twenty of them 12-35 s together on 16 cores). Returns the compiled
  programs in fns' order, or the exception a compile raised."""
  jobs = {i: functools.partial(timing_program(fn, sets, loops).lower, sets) for i, fn in enumerate(fns)}
  done = compile_pool.compile_programs(jobs, workers, log=lambda _: None)
  return [done[i] for i in range(len(fns))]


def time_candidates(fns, sets, loops, samples, error, workers=8):
  """A tuning sweep at one shape: every fn's timing program compiled at once (`compile_programs`), then
  each checked (`error(fn)`, its max relative error) and timed alone. Returns (seconds, error) per fn,
  or the exception its compile, check or timing raised."""
  out = []
  for fn, prog in zip(fns, compile_programs(fns, sets, loops, workers)):
    try:
      if isinstance(prog, Exception):
        raise prog
      err = error(fn)
      out.append((time_call(fn, sets, samples, loops=loops, program=prog), err))
    except Exception as e:  # noqa: BLE001 -- reported per candidate by the caller
      out.append(e)
  return out


def time_call(fn, sets, samples=25, loops=None, t_est=None, program=None):
  """Median seconds per kernel call of `fn(*s)` over the input sets `sets`.

  One call of `timing_program` (or `program`, its compiled form from `compile_programs`, made with
  the same `loops`) runs `loops` iterations, each calling `fn` once per set, so the host dispatch
  (which grows with the number of array arguments) is paid once per loops * len(sets) kernels.
  """
  samples = SAMPLES or samples
  if loops is None:
    loops = timing_loops(t_est, len(sets))
  multi = program or timing_program(fn, sets, loops)
  jax.block_until_ready(multi(sets))  # compile (unless given compiled) + warm-up
  per = []
  for _ in range(samples):
    t0 = time.perf_counter()
    jax.block_until_ready(multi(sets))
    per.append((time.perf_counter() - t0) / (loops * len(sets)))
  return statistics.median(per)


def time_call_unrolled(fn, sets, samples=10):
  """Cross-check of time_call: the sets unrolled in one jit, no loop (dispatch not amortized)."""
  multi = jax.jit(lambda ss: [fn(*s) for s in ss])
  jax.block_until_ready(multi(sets))
  per = []
  for _ in range(samples):
    t0 = time.perf_counter()
    jax.block_until_ready(multi(sets))
    per.append((time.perf_counter() - t0) / len(sets))
  return statistics.median(per)


def device_profile(fn, sets, reps=3):
  """(seconds of device time, device kernels) per call of `fn(*s)`, from a profiler trace of the sets
  unrolled in one jit (every kernel of the program, summed: `bench/trace_summary.py`'s busy time).
  Unlike `time_call` it leaves out dispatch and the timing loop's carry, so next to it it shows what the
  harness adds; the kernel count says how many launches one call makes (the GEMM plus any XLA passes)."""
  import tempfile  # noqa: PLC0415
  import trace_summary  # noqa: PLC0415 -- bench/ is on sys.path when this file runs
  multi = jax.jit(lambda ss: [fn(*s) for s in ss])
  jax.block_until_ready(multi(sets))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(reps):
        jax.block_until_ready(multi(sets))
    s = trace_summary.summarize(d, top=1)
  return s["busy_us"] * 1e-6 / (reps * len(sets)), s["events"] / (reps * len(sets))


def device_time(fn, sets, reps=3):
  """Seconds of device time per call of `fn(*s)` (`device_profile`)."""
  return device_profile(fn, sets, reps)[0]


def max_rel_err(y, ref):
  y = np.asarray(y, np.float64)
  ref = np.asarray(ref, np.float64)
  if not np.all(np.isfinite(y)):
    return float("inf")
  return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


# ---------------------------------------------------------------- input sets (on device, random)

def _key(*ids):
  return jax.random.PRNGKey(hash(ids) % (2**31))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _int8(key, m, k):
  return jax.random.randint(key, (m, k), -127, 128, jnp.int32).astype(jnp.int8)


@functools.partial(jax.jit, static_argnums=(1,))
def _scale(key, n):
  return jax.random.uniform(key, (n,), jnp.float32, 0.5, 1.5) / 127.0


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal(key, m, k):
  return jax.random.normal(key, (m, k), jnp.bfloat16)


QA_KINDS = ("quantize_act", "quantize_act_xla")


def make_sets(kind, m, n, k, r):
  sets = []
  for i in range(r):
    ks = jax.random.split(_key(kind, m, n, k, i), 6)
    if kind == "bf16":
      sets.append((_normal(ks[0], m, k), _normal(ks[1], n, k)))
    elif kind in ("w8a8", "xla_int8", "w8a8_triton"):
      sets.append((_int8(ks[0], m, k), _scale(ks[1], m), _int8(ks[2], n, k), _scale(ks[3], n)))
    elif kind in ("w8a8o16", "w8a8o16_triton"):
      idx_c = N_OUTLIERS
      sets.append((_int8(ks[0], m, k), _scale(ks[1], m), _int8(ks[2], n, k), _scale(ks[3], n),
                   _normal(ks[4], m, idx_c), _normal(ks[5], n, idx_c), jnp.int32(idx_c)))
    elif kind == "w8a16":
      sets.append((_normal(ks[0], m, k), _int8(ks[2], n, k), _scale(ks[3], n)))
    elif kind in QA_KINDS:
      idx = jax.random.permutation(ks[1], k)[:N_OUTLIERS].astype(jnp.int32)
      sets.append((_normal(ks[0], m, k), idx, jnp.int32(N_OUTLIERS),
                   pk.outlier_mask_from_idx(idx, N_OUTLIERS, k)))
    else:
      raise ValueError(kind)
  return sets


def set_bytes(kind, m, n, k):
  kind = kind.removesuffix("_triton")
  return {"bf16": 2 * (m * k + n * k), "w8a8": m * k + n * k, "xla_int8": m * k + n * k,
          "w8a8o16": m * k + n * k + 2 * N_OUTLIERS * (m + n), "w8a16": 2 * m * k + n * k,
          "quantize_act": 2 * m * k, "quantize_act_xla": 2 * m * k}[kind]


def moved_bytes(kind, m, n, k):
  """Fewest bytes through device memory for one call (inputs once, outputs once)."""
  if kind in QA_KINDS:
    return 2 * m * k + m * k + 4 * m + 2 * m * N_OUTLIERS
  return set_bytes(kind, m, n, k) + 2 * m * n


# ---------------------------------------------------------------- the functions timed

def xla_bf16(x, w):
  return x @ w.T


def xla_int8(x_q, s_x, w_q, s_w):
  acc = jax.lax.dot_general(x_q, w_q, NT, preferred_element_type=jnp.int32)
  return (acc.astype(jnp.float32) * s_x[:, None] * s_w[None, :]).astype(jnp.bfloat16)


def kernel_fn(kind, config):
  kind = kind.removesuffix("_triton")  # run_one passes these an explicit config
  if INTERPRET:  # CPU smoke runs only
    config = dict(config=config, interpret=True)
  else:
    config = dict(config=config)
  if kind == "w8a8":
    return functools.partial(pk.w8a8_matmul, **config), pk.w8a8_matmul_reference
  if kind == "w8a8o16":
    return functools.partial(pk.w8a8o16_matmul, **config), pk.w8a8o16_matmul_reference
  if kind == "w8a16":
    return functools.partial(pk.w8a16_matmul, **config), pk.w8a16_matmul_reference
  if kind == "quantize_act":
    f = lambda x, i, c, om: pk.quantize_act(x, i, c, outlier_mask=om, **config)[:3]
    ref = lambda x, i, c, om: pk.quantize_act_reference(x, i, c)[:3]
    return f, ref
  if kind == "quantize_act_xla":  # XLA's fusion of the reference (what the layers run for <= 64 tokens)
    ref = lambda x, i, c, om: pk.quantize_act_reference(x, i, c)[:3]
    return ref, ref
  if kind == "xla_int8":
    return xla_int8, pk.w8a8_matmul_reference  # the same int32 product and epilogue
  if kind == "bf16":
    return xla_bf16, lambda x, w: jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32).T)
  raise ValueError(kind)


def check(kind, fn, ref, args):
  y, r = fn(*args), ref(*args)
  if kind in QA_KINDS:  # x_q may differ by one step (1/127) at rounding ties
    return max(max_rel_err(y[0], r[0]), max_rel_err(y[1], r[1]))
  return max_rel_err(y, r)


DEVICE_TIME = False  # --device-time: run_one also traces each kernel (device_time), stored in LAST_DEVICE_S
LAST_DEVICE_S = float("nan")


def run_one(kind, m, n, k, config=None, samples=25):
  """(seconds per call, max_rel_err, config dict) for one kernel at one shape. Kinds ending in
  "_triton" get an explicit KernelConfig, which keeps the Triton kernel on sm_90 too."""
  global LAST_DEVICE_S
  if kind.endswith("_triton") and config is None:
    config = configs.select_config(kind.removesuffix("_triton"), m, n, k)
  fn, ref = kernel_fn(kind, config)
  if kind in QA_KINDS:  # x [M, K] alone: the GEMM shape's N must not size the repetitions
    n = 0
  t_est = est_seconds(m, n, k, moved_bytes(kind, m, n, k))
  r = n_sets(t_est, set_bytes(kind, m, n, k))
  sets = make_sets(kind, m, n, k, r)
  err = check(kind, fn, ref, sets[0])
  t = time_call(fn, sets, samples, t_est=t_est)
  LAST_DEVICE_S = device_time(fn, sets) if DEVICE_TIME else float("nan")
  del sets
  cfg = None
  base = kind.removesuffix("_triton")
  hcfg = None
  if base in ("w8a8", "w8a8o16") and kind == base and not INTERPRET:
    hcfg = hopper_config(m, n, k, False, config, outlier_columns=N_OUTLIERS if base == "w8a8o16" else 0)
  if hcfg is not None:
    cfg = {"hopper_mosaic_gpu": dataclasses.asdict(hcfg)}
  elif base in configs.KERNELS:
    cfg = (config or configs.select_config(base, m, n if base != "quantize_act" else 0, k)).to_dict()
  return t, err, cfg


def copy_bandwidth():
  """Device-to-device bandwidth (bytes read + written per second) of a large elementwise copy."""
  x = jax.random.normal(jax.random.PRNGKey(0), (512, 1 << 20), jnp.bfloat16)  # 1 GiB
  t = time_call(lambda a: a * 2, [(x,)], samples=20, loops=16)
  return 2 * x.size * 2 / t


def bf16_flops():
  x = jax.random.normal(jax.random.PRNGKey(1), (8192, 8192), jnp.bfloat16)
  w = jax.random.normal(jax.random.PRNGKey(2), (8192, 8192), jnp.bfloat16)
  t = time_call(xla_bf16, [(x, w)], samples=20, loops=8)
  return 2 * 8192**3 / t


def harness_check():
  """Loop timing must agree with plain (unrolled) timing where dispatch does not matter, and
  must not depend on the loop count (a hoisted or dead kernel would show up here)."""
  sets = make_sets("bf16", 4096, 8192, 8192, 2)
  a = time_call(xla_bf16, sets, samples=10, loops=4)
  b = time_call(xla_bf16, sets, samples=10, loops=16)
  c = time_call_unrolled(xla_bf16, sets)
  sets = make_sets("w8a16", 16, 4096, 4096, 16)
  fn = kernel_fn("w8a16", None)[0]
  d = time_call(fn, sets, samples=10, loops=4)
  e = time_call(fn, sets, samples=10, loops=16)
  f = time_call_unrolled(fn, sets)
  print(f"harness check: bf16 4096x8192x8192 loop4 {a * 1e6:.1f} loop16 {b * 1e6:.1f} "
        f"unrolled {c * 1e6:.1f} us; w8a16 M=16 4096^2 loop4 {d * 1e6:.1f} loop16 {e * 1e6:.1f} "
        f"unrolled {f * 1e6:.1f} us", flush=True)


def env_info():
  d = jax.devices()[0]
  return {"device": d.device_kind, "platform": d.platform, "jax": jax.__version__,
          "jaxlib": getattr(jax.lib, "__version__", jax.__version__),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------- bench

def bench(args):
  info = env_info()
  print(json.dumps(info), flush=True)
  bw = copy_bandwidth()
  fl = bf16_flops()
  print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read+write); bf16 8192^3 {fl / 1e12:.0f} TFLOP/s",
        flush=True)
  shapes = [(f"{mdl}/{name}", nk) for mdl in args.models for name, nk in SHAPES[mdl].items()]
  kinds = [k for k in args.kernels if k != "bf16"]
  records, rows, dev_rows = [], [], []
  done_q = set()
  walls = {}
  v = jnp.ones((16,), jnp.float32)
  floor = time_call(lambda a: a + 1, [(v + i,) for i in range(32)], t_est=2e-6)
  floor2 = time_call(lambda a: a + 1, [(v + i,) for i in range(32)], loops=8)
  print(f"harness floor (a tiny elementwise kernel): {floor * 1e6:.2f} us/call "
        f"({floor2 * 1e6:.2f} with 8 loops)", flush=True)
  if not INTERPRET and not os.environ.get("GEMM_BENCH_SKIP_CHECK"):
    harness_check()
  for (label, (n, k)), m in itertools.product(shapes, args.ms):
    qa_only = all(kd in QA_KINDS for kd in kinds)
    if qa_only and all((kd, m, k) in done_q for kd in kinds):
      continue
    if qa_only:  # bandwidth is its measure; skip the GEMM baseline
      t_bf16, e_bf16 = float("nan"), 0.0
    else:
      t_bf16, e_bf16, _ = run_one("bf16", m, n, k)
    records.append(dict(kernel="xla_bf16", M=m, N=n, K=k, shape=label, time_us=t_bf16 * 1e6,
                        bf16_time_us=t_bf16 * 1e6, speedup=1.0, max_rel_err=e_bf16, config=None))
    row = {"shape": label, "M": m, "N": n, "K": k, "bf16": t_bf16 * 1e6}
    for kind in kinds:
      if kind in QA_KINDS:
        if (kind, m, k) in done_q:
          continue
        done_q.add((kind, m, k))
      try:
        t0 = time.perf_counter()
        t, err, cfg = run_one(kind, m, n, k)
        walls[kind] = walls.get(kind, 0.0) + time.perf_counter() - t0
      except Exception as e:  # report, keep going
        print(f"FAILED {kind} M={m} N={n} K={k}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        continue
      rec = dict(kernel=kind, M=m, N=n, K=k, shape=label, time_us=t * 1e6,
                 bf16_time_us=t_bf16 * 1e6, speedup=t_bf16 / t, max_rel_err=err, config=cfg)
      if DEVICE_TIME:
        rec["device_us"] = LAST_DEVICE_S * 1e6
        dev_rows.append((label, m, kind, t * 1e6, LAST_DEVICE_S * 1e6))
      if kind in QA_KINDS:
        rec["gbps"] = moved_bytes(kind, m, n, k) / t / 1e9
        rec["frac_copy_bw"] = moved_bytes(kind, m, n, k) / t / bw
        rec["N"] = 0
        row[kind] = (t * 1e6, rec["frac_copy_bw"], err, "%")  # bandwidth is its measure
      else:
        row[kind] = (t * 1e6, t_bf16 / t, err)
      records.append(rec)
    rows.append(row)
    print(fmt_row(row, kinds), flush=True)
    if args.json:  # keep partial results if the run is cut off
      with open(args.json, "w") as f:
        json.dump({"env": info, "copy_bw_Bps": bw, "bf16_flops": fl, "records": records}, f)
  print("wall seconds per kernel kind (compile + check + timing):",
        {k: round(v, 1) for k, v in walls.items()})
  print_table(rows, kinds, info, bw, fl)
  if dev_rows:
    print("\n# device time per call from a profiler trace (no dispatch, no timing loop) next to the table's time")
    print(f"{'shape':<18} {'M':>5} {'kernel':<18} {'table_us':>9} {'device_us':>9}")
    for label, m, kind, t_us, d_us in dev_rows:
      print(f"{label:<18} {m:>5} {kind:<18} {t_us:>9.1f} {d_us:>9.1f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"env": info, "copy_bw_Bps": bw, "bf16_flops": fl, "records": records}, f, indent=1)


def fmt_row(row, kinds):
  s = f"{row['shape']:<18} {row['M']:>5} {row['N']:>6} {row['K']:>6} {row['bf16']:>9.1f}"
  for kind in kinds:
    if kind in row:
      t, sp, err, *unit = row[kind]
      flag = "" if err < 2e-2 else "!"
      if unit:  # quantize_act: share of the measured copy bandwidth
        s += f" {t:>9.1f} {100 * sp:>5.0f}%{flag}"
      else:
        s += f" {t:>9.1f} {sp:>5.2f}x{flag}"
    else:
      s += f" {'-':>9} {'-':>6}"
  return s


def print_table(rows, kinds, info, bw=None, fl=None):
  """The final table of a run (bench/gemm.py, gemm4.py, gemm_hopper.py): one row per (shape, M)."""
  extra = f"  copy {bw / 1e12:.2f} TB/s  bf16 {fl / 1e12:.0f} TFLOP/s" if bw and fl else ""
  print(f"\n# {info['device']}  jax {info['jax']}  {info['date']}{extra}")
  print("# time_us and speedup over XLA bf16 (same run), or for quantize_act the share of the copy "
        "bandwidth (x read once + outputs written once); '!' = max_rel_err >= 2e-2")
  hdr = f"{'shape':<18} {'M':>5} {'N':>6} {'K':>6} {'bf16_us':>9}"
  for kind in kinds:
    hdr += f" {kind[:9]:>9} {'x':>6}"
  print(hdr)
  for row in rows:
    print(fmt_row(row, kinds))


# ---------------------------------------------------------------- tune

CANDIDATES = {  # (block_m, block_n, block_k, num_warps, num_stages) per M regime
    "w8a8": {
        "small": [(16, 64, 256, 4, 4), (16, 32, 256, 4, 4), (16, 128, 128, 4, 4),
                  (16, 32, 512, 4, 3), (16, 64, 512, 4, 4)],
        "mid": [(64, 64, 256, 4, 4), (64, 128, 128, 4, 4), (64, 128, 256, 4, 3),
                (64, 32, 256, 4, 4)],
        "medium": [(128, 128, 128, 4, 4), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4),
                   (64, 64, 256, 4, 4), (128, 128, 256, 8, 3),
                   # deeper pipelines and wider tiles (no spills at sm_90, bench/inspect_kernels.py)
                   (64, 128, 128, 4, 5), (64, 128, 256, 4, 3), (128, 128, 128, 8, 4), (64, 256, 128, 4, 4),
                   (128, 256, 128, 8, 3), (64, 64, 128, 4, 5), (128, 64, 256, 4, 3), (64, 128, 64, 4, 6)],
        "large": [(128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (128, 128, 128, 4, 4),
                  (256, 128, 128, 8, 3), (128, 128, 256, 8, 3), (128, 256, 64, 8, 5),
                  (128, 128, 128, 8, 3)],  # the last: no register spill at sm_90 (inspect_kernels.py)
    },
    "w8a16": {  # (..., split_k)
        # fewer stages won for the 4-bit decode kernels (bench/gemm4.py --tune, H100, 2026-12-06)
        "small": [(16, 32, 512, 4, 4, 1), (16, 32, 256, 4, 4, 1), (16, 64, 256, 4, 4, 2),
                  (16, 64, 512, 4, 3, 2), (16, 64, 256, 4, 4, 4), (16, 128, 256, 4, 4, 4),
                  (16, 32, 256, 4, 4, 2), (16, 128, 128, 4, 5, 8), (16, 32, 256, 4, 2, 2),
                  (16, 32, 256, 4, 3, 2), (16, 64, 256, 4, 2, 2), (16, 64, 256, 4, 3, 4),
                  (16, 32, 512, 4, 2, 1), (16, 64, 128, 4, 3, 4),
                  # two warps: the w8a16 word-decode A/B ran 3-5% faster on them (H100, 2026-12-06)
                  (16, 32, 256, 2, 4, 2), (16, 32, 256, 2, 4, 1), (16, 32, 512, 2, 4, 1),
                  (16, 64, 256, 2, 4, 2), (16, 32, 256, 2, 3, 2),
                  # 128-512 programs on narrow N (k/v): every candidate above started <= 64 at N = 1024, and
                  # 128-256 ran 15-20% faster there (H100, 2026-12-06 15:25 UTC, configs.spread_split_k)
                  (16, 32, 256, 4, 4, 8), (16, 32, 128, 4, 4, 8), (16, 32, 256, 4, 3, 16),
                  # block_k 128 with six stages: 7B down 22.2 against 24.0 us (H100, 2026-12-06 17:20 UTC)
                  (16, 32, 128, 4, 6, 2), (16, 32, 128, 2, 6, 2), (16, 64, 128, 4, 6, 4)],
        "mid": [(64, 64, 128, 4, 4), (64, 32, 256, 4, 4), (64, 128, 64, 4, 4)],
        "medium": [(128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4)],
        "large": [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 64, 4, 4),
                  (128, 128, 32, 4, 5)],
    },
    # (block_m, -, block_k, warps, stages, passes): passes 1 holds the row block in registers,
    # 2 reads it twice (KernelConfig.passes).
    "quantize_act": {"any": [(1, 16, 2048, 8, 1, 1), (1, 16, 2048, 4, 1, 1), (1, 16, 4096, 16, 1, 1),
                             (1, 16, 1024, 4, 1, 1), (1, 16, 2048, 4, 1, 2), (1, 16, 2048, 8, 1, 2),
                             (2, 16, 2048, 8, 1, 2), (4, 16, 1024, 8, 1, 2), (1, 16, 1024, 4, 1, 2),
                             (2, 16, 1024, 4, 2, 2), (4, 16, 2048, 8, 3, 2), (1, 16, 512, 2, 1, 2)]},
}
CANDIDATES["w8a8o16"] = CANDIDATES["w8a8"]


def regime(kind, m):
  if kind == "quantize_act":
    return "any"
  if m <= 16:
    return "small"
  if m <= 64:
    return "mid"
  return "medium" if m <= 1024 else "large"


def tune(args):
  info = env_info()
  print(json.dumps(info), flush=True)
  gpu = configs.gpu_name()
  table = {}
  log = []
  shapes = [SHAPES["7b"]["qkvo"], SHAPES["7b"]["gate_up"], SHAPES["70b"]["q_o"]]
  if args.tune_shapes:
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.tune_shapes.split(",")]
  from mixq_jax.pallas_kernels import tuned_table
  merged, bf16_times = dict(tuned_table.TABLE), {}
  for kind in args.kernels:
    if kind not in configs.KERNELS:
      continue
    ms = [m for m in args.ms if m >= 1024] if kind == "quantize_act" else args.ms
    kshapes = [(0, k) for k in (4096, 11008, 28672)] if kind == "quantize_act" else shapes
    for m in ms:
      scores = {}
      for n, k in kshapes:  # every candidate of a shape compiles at once (threads), then each is timed alone
        cands, cfgs = CANDIDATES[kind][regime(kind, m)], []
        for bm, bn, bk, nw, ns, *extra in cands:
          if kind == "quantize_act":
            cfgs.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, num_warps=nw, num_stages=ns,
                                     passes=extra[0] if extra else 1))
          else:
            cfgs.append(KernelConfig(block_m=min(bm, max(16, configs.m_bucket(m))), block_n=max(bn, 16),
                                     block_k=bk, num_warps=nw, num_stages=ns, split_k=extra[0] if extra else 1))
        ref = kernel_fn(kind, cfgs[0])[1]
        fns = [kernel_fn(kind, cfg)[0] for cfg in cfgs]
        t_est = est_seconds(m, n, k, moved_bytes(kind, m, n, k))
        sets = make_sets(kind, m, n, k, n_sets(t_est, set_bytes(kind, m, n, k)))
        tb = None if kind == "quantize_act" else bf16_times.setdefault((m, n, k), run_one("bf16", m, n, k, samples=10)[0])
        t0 = time.perf_counter()
        results = time_candidates(fns, sets, timing_loops(t_est, len(sets)), 10,
                                  lambda f, s0=sets[0]: check(kind, f, ref, s0), workers=args.compile_workers)
        print(f"  {kind} M={m} {n}x{k}: {len(cfgs)} candidates in {time.perf_counter() - t0:.0f} s", flush=True)
        for cand, cfg, res in zip(cands, cfgs, results):
          if isinstance(res, Exception):
            print(f"  {kind} M={m} {n}x{k} {cand}: FAILED {type(res).__name__}: {str(res)[:200]}")
            continue
          t, err = res
          ok = err < 2e-2
          log.append(dict(kernel=kind, M=m, N=n, K=k, config=cfg.to_dict(), time_us=t * 1e6,
                          max_rel_err=err, bf16_time_us=tb and tb * 1e6, speedup=tb and tb / t))
          vs = f" ({tb / t:.2f}x bf16)" if tb else ""
          print(f"  {kind} M={m} {n}x{k} {cand}: {t * 1e6:.1f} us{vs} err={err:.1e}", flush=True)
          if not ok:
            continue
          keep_fastest(table, scores, configs.table_key(kind, gpu, configs.m_bucket(m), n if n else 0, k), t, cfg)
        del sets
      set_bucket_default(table, scores, len(kshapes), kind, gpu, m)
      merged.update({k: v[1].to_dict() for k, v in table.items()})
      write_table(merged, info, [f"{kind}|{gpu}"])  # after every bucket, so a cut-off run keeps what it found
      if args.json:
        with open(args.json, "w") as f:
          json.dump({"env": info, "tune_log": log, "table": merged}, f, indent=1)


def keep_fastest(table, scores, key, t, cfg):
  """A tuning result: table[key] keeps the fastest (t, cfg); scores[cfg] collects log t over shapes."""
  if key not in table or t < table[key][0]:
    table[key] = (t, cfg)
  scores.setdefault(cfg, []).append(math.log(t))


def set_bucket_default(table, scores, n_shapes, kind, gpu, m):
  """The bucket default: the best geometric mean over the shapes, among configs that ran on every shape."""
  full = {c: v for c, v in scores.items() if len(v) == n_shapes}
  if full:
    best = min(full, key=lambda c: sum(full[c]))
    table[configs.table_key(kind, gpu, configs.m_bucket(m), "*", "*")] = (0.0, best)
    print(f"{kind} M={m}: bucket default {best}", flush=True)


def write_table(table, info, tuned=()):
  """Rewrite tuned_table.py with `table`; `tuned` = the "kernel|gpu" groups this run swept, whose
  PROVENANCE line becomes this run's device, jax version and date (the others are kept)."""
  from mixq_jax.pallas_kernels import tuned_table
  prov = dict(getattr(tuned_table, "PROVENANCE", {}))
  for group in tuned:
    prov[group] = f"{info['device']}, jax {info['jax']}, {info['date']}"
  tuned_table.PROVENANCE = prov  # a later write in this process keeps these lines
  lines = ['"""Tuned kernel configs; regenerate with `python bench/gemm.py --tune`.',
           "",
           'Keys: "kernel|gpu|M bucket|N|K" ("*" = default for the bucket). PROVENANCE says where and',
           'when each "kernel|gpu" group was last swept."""',
           "", "PROVENANCE: dict[str, str] = {"]
  for key in sorted(prov):
    lines.append(f"    {key!r}: {prov[key]!r},")
  lines += ["}", "", "TABLE: dict[str, dict] = {"]
  for key in sorted(table):
    lines.append(f"    {key!r}: {table[key]!r},")
  lines.append("}")
  out = os.environ.get("TUNED_TABLE_OUT", str(TABLE_PATH))
  pathlib.Path(out).write_text("\n".join(lines) + "\n")
  print(f"wrote {out} ({len(table)} entries)")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tune", action="store_true", help="sweep configs, rewrite the tuned table")
  p.add_argument("--models", default="7b,70b,extra", help="comma list of " + ",".join(SHAPES))
  p.add_argument("--ms", default=",".join(map(str, MS)), help="comma list of token counts M")
  p.add_argument("--kernels", default="w8a8,w8a8o16,w8a16,xla_int8,quantize_act",
                 help="comma list: w8a8, w8a8o16 (Mosaic GPU on sm_90 from M=1024), w8a8_triton, w8a8o16_triton "
                      "(Triton always), w8a16, xla_int8, quantize_act, quantize_act_xla (XLA's fusion of "
                      "quantize_act_reference, the bandwidth baseline for the kernel)")
  p.add_argument("--json", default=None, help="write records here")
  p.add_argument("--tune-shapes", default=None, help="NxK,NxK,... shapes to tune on")
  p.add_argument("--compile-workers", type=int, default=8,
                 help="--tune: threads that compile a shape's candidates at once before they are timed one by one "
                      "(default 8; 1 compiles them one after another)")
  p.add_argument("--device-time", action="store_true",
                 help="also trace each kernel with the profiler and report its device time per call "
                      "(JSON device_us, and a table after the main one): what the timing harness adds")
  p.add_argument("--samples", type=int, default=None,
                 help="timing samples per kernel, each one jitted loop of calls; the median is reported "
                      "(default 25 for the table, 10 per tuning candidate; the GEMM_BENCH_SAMPLES variable does the same)")
  args = p.parse_args()
  global DEVICE_TIME, SAMPLES
  DEVICE_TIME = args.device_time
  if args.samples is not None:
    if args.samples < 1:
      p.error(f"--samples {args.samples}: must be at least 1")
    SAMPLES = args.samples
  args.models = args.models.split(",")
  args.ms = [int(v) for v in args.ms.split(",")]
  args.kernels = args.kernels.split(",")
  if jax.devices()[0].platform != "gpu":
    print("warning: no GPU; timings are meaningless (use for a smoke run only)", file=sys.stderr)
  if args.tune:
    tune(args)
  else:
    bench(args)


if __name__ == "__main__":
  main()
