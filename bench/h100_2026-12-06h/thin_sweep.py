"""Decode sweep: the table's config against narrow-tile (block_n 16/32, 1-2 warps, deep pipelines) configs
without or with few K slices. Then alternating A/B of the current and the best new config.
  python .devassets/thin_sweep.py OUT.json DEADLINE_S [--quick]
"""
import functools
import json
import sys
import time
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import gemm  # noqa: E402
import gemm4  # noqa: E402

from mixq_jax.pallas_kernels import _w4_common, configs  # noqa: E402
from mixq_jax.pallas_kernels.configs import KernelConfig  # noqa: E402

C = lambda bn, bk, w, st, sk: KernelConfig(block_m=16, block_n=bn, block_k=bk, num_warps=w, num_stages=st, split_k=sk)  # noqa: E731
THIN8 = [C(16, 256, 1, 4, 1), C(16, 256, 2, 4, 1), C(16, 512, 2, 3, 1), C(16, 256, 1, 6, 1), C(16, 512, 1, 4, 1),
         C(32, 256, 2, 6, 1), C(32, 128, 2, 6, 2), C(32, 128, 4, 6, 2), C(16, 256, 2, 4, 2), C(16, 128, 1, 6, 2),
         C(32, 512, 2, 3, 2), C(64, 128, 4, 6, 4)]
THIN4 = [C(16, 256, 1, 4, 2), C(16, 256, 2, 4, 2), C(16, 512, 2, 3, 1), C(32, 256, 2, 6, 2), C(32, 512, 2, 4, 1),
         C(16, 512, 1, 4, 1), C(32, 256, 2, 4, 4), C(16, 256, 2, 4, 4), C(64, 128, 4, 6, 4), C(32, 128, 2, 6, 4)]
JOBS = [("w8a16", 16, 4096, 4096, THIN8), ("w8a16", 16, 4096, 11008, THIN8), ("w4a8", 16, 8192, 8192, THIN4),
        ("w8a16", 16, 1024, 8192, THIN8), ("w4a16", 16, 4096, 4096, THIN4), ("w8a16", 1, 4096, 4096, THIN8),
        ("w4a8g", 16, 4096, 4096, THIN4), ("mx", 16, 4096, 4096, THIN4), ("w8a16", 16, 8192, 8192, THIN8)]


def fns_for(kind, cfgs):
  if kind in ("w8a16", "w8a8"):
    return [gemm.kernel_fn(kind, c)[0] for c in cfgs], gemm.kernel_fn(kind, cfgs[0])[1]
  fn, ref = gemm4.kernel_fn(kind)
  return [functools.partial(fn, config=c) for c in cfgs], ref


def sets_for(kind, m, n, k):
  if kind in ("w8a16", "w8a8"):
    t_est = gemm.est_seconds(m, n, k, gemm.moved_bytes(kind, m, n, k))
    return gemm.make_sets(kind, m, n, k, gemm.n_sets(t_est, gemm.set_bytes(kind, m, n, k))), t_est
  return gemm4.inputs(kind, m, n, k)


def name(c):
  return f"{c.block_n},{c.block_k},{c.num_warps},{c.num_stages},{c.split_k}"


def main():
  out, deadline = sys.argv[1], float(sys.argv[2])
  quick = "--quick" in sys.argv
  t_start = time.perf_counter()
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  jobs = JOBS if not quick else [("w8a16", 16, 256, 1024, THIN8[:2]), ("w4a8", 16, 128, 1024, THIN4[:2])]
  log = []
  for kind, m, n, k, cand_list in jobs:
    if time.perf_counter() - t_start > deadline:
      print(f"deadline: skipped {kind} M={m} {n}x{k}", flush=True)
      continue
    sel = configs.select_config if kind in ("w8a16", "w8a8") else _w4_common.select_config
    cur = sel(kind, m, n, k)
    cfgs = [cur] + [c for c in cand_list if n % c.block_n == 0 and (kind != "mx" or c.block_n >= 32)]
    if quick:
      cfgs = cfgs[:3]
    cfgs = list(dict.fromkeys(cfgs))
    fns, ref = fns_for(kind, cfgs)
    sets, t_est = sets_for(kind, m, n, k)
    want = ref(*sets[0])
    loops = gemm.timing_loops(t_est, len(sets))
    tb = gemm.run_one("bf16", m, n, k, samples=10)[0]
    t0 = time.perf_counter()
    res = gemm.time_candidates(fns, sets, loops, 10, lambda f, s0=sets[0]: gemm.max_rel_err(f(*s0), want), workers=15)
    print(f"{kind} M={m} {n}x{k} {len(cfgs)} cands in {time.perf_counter() - t0:.0f} s, bf16 {tb * 1e6:.1f} us", flush=True)
    ok = []
    for i, (c, r) in enumerate(zip(cfgs, res)):
      if isinstance(r, Exception):
        print(f"  {name(c)}: FAILED {type(r).__name__}: {str(r)[:300]}", flush=True)
        continue
      t, err = r
      print(f"  {'*' if i == 0 else ' '}{name(c)}: {t * 1e6:.1f} us ({tb / t:.2f}x) err {err:.1e}", flush=True)
      log.append(dict(kernel=kind, M=m, N=n, K=k, config=c.to_dict(), current=i == 0, time_us=t * 1e6,
                      bf16_us=tb * 1e6, err=err, phase="sweep"))
      if err < 2e-2:
        ok.append((t, i))
    best = min((x for x in ok if x[1] != 0), default=None)
    if best is not None:
      for rnd in range(2):
        tb2 = gemm.run_one("bf16", m, n, k, samples=10)[0]
        for i in (0, best[1]):
          t = gemm.time_call(fns[i], sets, 10, loops=loops)
          log.append(dict(kernel=kind, M=m, N=n, K=k, config=cfgs[i].to_dict(), current=i == 0, time_us=t * 1e6,
                          bf16_us=tb2 * 1e6, phase=f"ab{rnd}", best=i == best[1]))
          print(f"  ab{rnd} {'cur' if i == 0 else 'new'} {name(cfgs[i])}: {t * 1e6:.1f} us ({tb2 / t:.2f}x)", flush=True)
    del sets
    pathlib.Path(out).write_text(json.dumps({"env": info, "log": log}, indent=1))
  print("TABLE")
  for kind, m, n, k, _ in jobs:
    rows = [r for r in log if (r["kernel"], r["M"], r["N"], r["K"]) == (kind, m, n, k) and r["phase"].startswith("ab")]
    for tag, pick in (("cur", lambda r: r["current"]), ("best", lambda r: r.get("best"))):
      sel = [r for r in rows if pick(r)]
      if sel:
        ts, bs = [r["time_us"] for r in sel], [r["bf16_us"] for r in sel]
        c = KernelConfig(**sel[0]["config"])
        print(f"{kind:6s} M={m:2d} {n}x{k} {tag:5s} {name(c):22s}: {min(ts):.1f}-{max(ts):.1f} us, "
              f"{min(b / t for b, t in zip(bs, ts)):.2f}-{max(b / t for b, t in zip(bs, ts)):.2f}x")


if __name__ == "__main__":
  main()
