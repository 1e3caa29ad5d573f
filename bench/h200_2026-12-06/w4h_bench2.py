"""(As run on 2026-12-06 23:36 UTC; pick_config's split rule changed after this run, see BENCHMARKS.md.)
w4a16 Mosaic GPU kernel: decode sizes with split-K (M = 1, 16, 32, 64) and more prefill configs, against
XLA bf16, the current dispatch (Triton / XLA's program) in the same process.
  python .devassets/w4h_bench2.py OUT.json [--budget S] [--parts dcp]
"""
import json, pathlib, sys, time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import gemm  # noqa: E402
import gemm4  # noqa: E402
import jax  # noqa: E402

from mixq_jax.pallas_kernels import w4a16_matmul, xla_matmuls  # noqa: E402
from mixq_jax.pallas_kernels.w4a16_matmul_hopper import W4A16HopperConfig as C, pick_config, w4a16_matmul_hopper  # noqa: E402

OUT = sys.argv[1]
BUDGET = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 400
PARTS = sys.argv[sys.argv.index("--parts") + 1] if "--parts" in sys.argv else "dcp"
T0 = time.time()
LOG = []
INFO = gemm.env_info()
XLA = jax.jit(xla_matmuls.w4a16_matmul_xla)
CUR = jax.jit(w4a16_matmul)


def hop(cfg):
  return jax.jit(lambda x, w, s, z: w4a16_matmul_hopper(x, w, s, z, config=cfg))


def timed(m, n, k, variants, label):
  """variants: name -> fn; prints one row; returns {name: (t, err)} and bf16 time."""
  sets, t_est = gemm4.inputs("w4a16", m, n, k)
  loops = gemm.timing_loops(t_est, len(sets))
  want = XLA(*sets[0])
  tb = gemm.run_one("bf16", m, n, k, samples=10)[0]
  res = {}
  for name, f in variants.items():
    try:
      err = gemm.max_rel_err(f(*sets[0]), want)
      t = gemm.time_call(f, sets, 10, loops=loops)
      res[name] = (t, err)
      LOG.append(dict(part=label, M=m, N=n, K=k, variant=name, time_us=t * 1e6, bf16_us=tb * 1e6, err=err))
    except Exception as e:  # noqa: BLE001
      LOG.append(dict(part=label, M=m, N=n, K=k, variant=name, error=f"{type(e).__name__}: {str(e)[:400]}"))
      print(f"  {label} M={m} {n}x{k} {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
  print(f"{label} M={m} {n}x{k} bf16 {tb * 1e6:.1f} | " + " | ".join(
      f"{nm} {t * 1e6:.1f} ({tb / t:.2f}x{'' if e < 1e-2 else ' ERR %.0e' % e})" for nm, (t, e) in res.items()), flush=True)
  pathlib.Path(OUT).write_text(json.dumps({"env": INFO, "log": LOG}, indent=1))
  return res, tb


def over():
  return time.time() - T0 > BUDGET


DEC = [(4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (1024, 8192), (28672, 8192), (8192, 28672)]


def decode():
  for n, k in DEC:
    if over():
      print("budget: decode stopped at", n, k, flush=True)
      return
    g = k // 128
    tiles = n // 128
    splits = [d for d in (1, 2, 4, 8, 16) if g % d == 0 and (d == 1 or tiles * d <= 600)]
    v = {"cur": CUR}
    v.update({f"s{d}": hop(C(64, 16, 6, epi_tile_n=16, split_k=d)) for d in splits})
    res, tb = timed(16, n, k, v, "dec")
    best = min((nm for nm in res if nm.startswith("s")), key=lambda nm: res[nm][0], default=None)
    if best is None:
      continue
    d = int(best[1:])
    v2 = {f"s{d}_st3": hop(C(64, 16, 3, epi_tile_n=16, split_k=d)), f"s{d}_st10": hop(C(64, 16, 10, epi_tile_n=16, split_k=d)),
          f"s{d}_tn128": hop(C(128, 16, 6, epi_tile_n=16, split_k=max(1, d // 2))) if n % 256 == 0 else None,
          "pick": hop(pick_config(16, n, k, 128))}
    timed(16, n, k, {a: b for a, b in v2.items() if b is not None}, "dec2")
    timed(1, n, k, {"cur": CUR, "pick": hop(pick_config(1, n, k, 128)), best: v[best]}, "dec1")


def mid():
  for n, k in [(4096, 4096), (8192, 8192), (11008, 4096)]:
    for m in (32, 64):
      if over():
        print("budget: mid stopped", flush=True)
        return
      p = pick_config(m, n, k, 128)
      v = {"cur": CUR, "xla": XLA, "pick": hop(p), "pick_s2x": hop(C(64, p.tile_m, 6, epi_tile_n=p.tile_m, split_k=min(16, p.split_k * 2)))
           if (k // 128) % (p.split_k * 2) == 0 else None, "tm16": hop(pick_config(16, n, k, 128))}
      timed(m, n, k, {a: b for a, b in v.items() if b is not None}, "mid")


def prefill():
  rows = [(512, 8192, 8192), (2048, 8192, 8192), (2048, 4096, 4096), (1024, 11008, 4096), (128, 8192, 8192), (4096, 4096, 4096)]
  for m, n, k in rows:
    if over():
      print("budget: prefill stopped", flush=True)
      return
    v = {"xla": XLA, "cur": CUR, "pick": hop(pick_config(m, n, k, 128)), "h128x128": hop(C(128, 128, 4)),
         "h64x256": hop(C(64, 256, 3)), "h128x256": hop(C(128, 256, 2)), "h64x256_g16": hop(C(64, 256, 3, grid_tile_width=16)),
         "h64x256_e128": hop(C(64, 256, 3, epi_tile_n=128)), "h128x128_g4": hop(C(128, 128, 4, grid_tile_width=4))}
    timed(m, n, k, v, "pre")


print(json.dumps(INFO), flush=True)
for part in PARTS:
  {"d": decode, "c": mid, "p": prefill}[part]()
print(f"done in {time.time() - T0:.0f} s")
