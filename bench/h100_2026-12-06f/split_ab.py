# Runs against commit 8f73079 ("Split-K partials summed in the kernel"; reverted after this A/B).
"""Same-process A/B: split-K partials summed by an XLA fusion (current) vs by the kernel's last-arriving
program (`_split_k.py`), at the H100 table's configs, plus the in-kernel form at twice the split.
Also a race stress test: 300 calls of the in-kernel form, each compared bit for bit with the XLA form."""
import dataclasses, datetime, functools, importlib, json, os, sys, time
sys.path.insert(0, "bench")
import gemm, gemm4  # noqa: E402  (gemm sets XLA_FLAGS)
import jax, numpy as np  # noqa: E402
from mixq_jax.pallas_kernels import w8a16_matmul, w8a16_matmul_reference, tuned_table  # noqa: E402
from mixq_jax.pallas_kernels.configs import KernelConfig, table_key  # noqa: E402

W = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul")
OUT = os.environ.get("OUT", "/tmp")


def entry(kind, n, k):
  if gemm.INTERPRET:
    n, k = 4096, 4096
  for key in (table_key(kind, "h100", 16, n, k), table_key(kind, "h100", 16, "*", "*")):
    if key in tuned_table.TABLE:
      return KernelConfig(**tuned_table.TABLE[key])
  raise KeyError((kind, n, k))


S4 = [(4096, 4096), (4096, 11008), (8192, 8192), (8192, 28672)]
CASES = ([("w8a16", s, m) for s in [(4096, 4096), (11008, 4096), (4096, 11008), (1024, 8192), (28672, 8192),
                                    (8192, 8192)] for m in (16, 1)]
         + [("w4a16", s, m) for s in S4 for m in (16, 1)] + [("mx", s, 16) for s in S4]
         + [("w4a8", s, 16) for s in [(4096, 11008), (8192, 8192), (8192, 28672)]]
         + [("w4a8g", s, 16) for s in [(4096, 4096), (4096, 11008), (8192, 8192)]])
SMOKE = gemm.INTERPRET  # CPU: tiny shapes in interpret mode, to check the script itself
STRESS = [("w8a16", (4096, 4096), 16), ("w8a16", (4096, 4096), 5), ("mx", (4096, 4096), 16),
          ("w4a8", (8192, 8192), 16), ("w4a16", (4096, 11008), 3)]
N_STRESS = 300
if SMOKE:
  CASES = [("w8a16", (256, 1024), 16), ("w4a16", (256, 1024), 1), ("mx", (256, 1024), 16)]
  STRESS = [("w8a16", (256, 1024), 5), ("w4a8", (256, 1024), 16)]
  N_STRESS = 2
  _w8 = w8a16_matmul
  w8a16_matmul = functools.partial(_w8, interpret=True)
  _entry = None
info = dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
print(info, flush=True)


def setup(kind, n, k, m):
  if kind == "w8a16":
    fn, ref = w8a16_matmul, w8a16_matmul_reference
    t_est = gemm.est_seconds(m, n, k, gemm.moved_bytes("w8a16", m, n, k))
    sets = gemm.make_sets("w8a16", m, n, k, gemm.n_sets(t_est, gemm.set_bytes("w8a16", m, n, k)))
  else:
    fn, ref = gemm4.kernel_fn(kind)
    sets, t_est = gemm4.inputs(kind, m, n, k)
  return fn, ref, sets, gemm.timing_loops(t_est, len(sets))


cases = []
for kind, (n, k), m in CASES:
  fn, ref, sets, loops = setup(kind, n, k, m)
  c = entry(kind, n, k)
  variants = [("xla", c), ("kernel", c), ("kernel", dataclasses.replace(c, split_k=2 * c.split_k))]
  if c.split_k == 1:
    variants = [("xla", c), ("kernel", dataclasses.replace(c, split_k=2)), ("kernel", dataclasses.replace(c, split_k=4))]
  want = ref(*sets[0])
  cases.append(dict(kind=kind, n=n, k=k, m=m, fn=fn, sets=sets, loops=loops, want=want, variants=variants,
                    progs={}, errs={}))
print(f"{len(cases)} cases set up", flush=True)

for mode in ("xla", "kernel"):
  W.SPLIT_K_IN_KERNEL = mode == "kernel"
  jax.clear_caches()
  jobs, keys = [], []
  for ci, c in enumerate(cases):
    for vi, (md, cfg) in enumerate(c["variants"]):
      if md == mode:
        jobs.append((functools.partial(c["fn"], config=cfg), c["sets"], c["loops"]))
        keys.append((ci, vi))
  t0 = time.time()
  import compile_pool  # all at once in the thread pool
  if True:
    done = compile_pool.compile_programs(
        {i: functools.partial(gemm.timing_program(f, s, lp).lower, s) for i, (f, s, lp) in enumerate(jobs)},
        1 if SMOKE else 14, log=lambda _: None)
    progs = [done[i] for i in range(len(jobs))]
  print(f"mode {mode}: {len(jobs)} programs compiled in {time.time() - t0:.0f} s", flush=True)
  for (ci, vi), p in zip(keys, progs):
    c = cases[ci]
    c["progs"][vi] = p
    if isinstance(p, Exception):
      c["errs"][vi] = repr(p)[:300]
      continue
    out = p(c["sets"])
    c["errs"][vi] = gemm.max_rel_err(out[0], c["want"])

# race stress: the in-kernel form (flag still on) against the XLA form, bit for bit, 300 calls
stress = []
for kind, (n, k), m in STRESS:
  fn, ref, sets, _ = setup(kind, n, k, m) if m in (1, 16) else (None,) * 4
  if fn is None:  # ragged M: the w8a16 / w4a16 sets at M = 16, rows cut
    fn, ref, sets, _ = setup(kind, n, k, 16)
    sets = [tuple(a[:m] if (hasattr(a, "ndim") and a.ndim == 2 and a.shape[0] == 16) else a for a in s)
            for s in sets[:2]]
  cfg = entry(kind, n, k)
  cfg = cfg if cfg.split_k > 1 else dataclasses.replace(cfg, split_k=2)
  W.SPLIT_K_IN_KERNEL = False
  jax.clear_caches()
  base = [np.asarray(jax.block_until_ready(fn(*s, config=cfg))) for s in sets[:2]]
  W.SPLIT_K_IN_KERNEL = True
  jax.clear_caches()
  f = jax.jit(functools.partial(fn, config=cfg))
  bad = 0
  for i in range(N_STRESS):
    y = np.asarray(f(*sets[i % 2]))
    bad += int(not np.array_equal(y, base[i % 2]))
  stress.append(dict(kind=kind, n=n, k=k, m=m, split_k=cfg.split_k, calls=N_STRESS, mismatches=bad))
  print(f"stress {kind} {n}x{k} M={m} split {cfg.split_k}: {bad} of {N_STRESS} calls differ from the XLA form", flush=True)

rows = []
print("| kernel | N x K | M | bf16 | table cfg, XLA sum | table cfg, in-kernel | 2x split, in-kernel | errs |", flush=True)
for c in cases:
  t = {vi: [] for vi in range(len(c["variants"]))}
  for _ in range(2):
    for vi in t:
      p = c["progs"][vi]
      if not isinstance(p, Exception):
        t[vi].append(gemm.time_call(None, c["sets"], 10, loops=c["loops"], program=p))
  del c["sets"]
  tb = gemm.run_one("bf16", c["m"], c["n"], c["k"], samples=10)[0]
  r = dict(kernel=c["kind"], M=c["m"], N=c["n"], K=c["k"], bf16_us=tb * 1e6,
           variants=[dict(reduce=md, config=cfg.to_dict(), us=[v * 1e6 for v in t[vi]], max_rel_err=c["errs"][vi])
                     for vi, (md, cfg) in enumerate(c["variants"])])
  rows.append(r)
  cells = []
  for vi, (md, cfg) in enumerate(c["variants"]):
    if t[vi]:
      b = min(t[vi])
      cells.append(f"{'/'.join(f'{v * 1e6:.1f}' for v in t[vi])} s{cfg.split_k} ({tb / b:.2f}x)")
    else:
      cells.append("fail")
  errs = ",".join(f"{e:.0e}" if isinstance(e, float) else "E" for e in c["errs"].values())
  print(f"| {c['kind']} | {c['n']}x{c['k']} | {c['m']} | {tb * 1e6:.1f} | " + " | ".join(cells) + f" | {errs} |",
        flush=True)
  json.dump(dict(info=info, rows=rows, stress=stress), open(f"{OUT}/split_ab.json", "w"), indent=1)
