"""Decode (M <= 16) sweep of configs that start more programs on narrow or small GEMMs, next to the table's.

Every candidate list of gemm.py (w8a16) gave at most 64 programs at N = 1024 (70B k/v). This times the
current table config against configs with 128-512 programs, then re-times the best new one and the
current one alternately (A/B, 3 rounds) with the same-process bf16 baseline.
  python .devassets/narrow_sweep.py OUT.json [--quick]
"""
import functools
import json
import sys
import time
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # bench/
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import gemm  # noqa: E402
import gemm4  # noqa: E402

from mixq_jax.pallas_kernels import _w4_common, configs  # noqa: E402
from mixq_jax.pallas_kernels.configs import KernelConfig  # noqa: E402

C = lambda bn, bk, w, s, sk: KernelConfig(block_m=16, block_n=bn, block_k=bk, num_warps=w, num_stages=s,  # noqa: E731
                                           split_k=sk)
NARROW8 = [C(32, 256, 4, 4, 4), C(32, 256, 2, 4, 4), C(64, 256, 4, 4, 8), C(32, 256, 4, 4, 8),
           C(32, 128, 4, 4, 8), C(16, 256, 2, 4, 8), C(32, 512, 4, 3, 4), C(32, 256, 4, 3, 16)]
WIDE8 = [C(32, 256, 4, 4, 4), C(32, 256, 2, 4, 4), C(32, 512, 4, 3, 2), C(64, 512, 4, 3, 4),
         C(64, 256, 4, 4, 8), C(32, 128, 4, 4, 4)]
NARROW4 = [C(32, 256, 4, 4, 8), C(16, 256, 2, 4, 8), C(32, 512, 4, 3, 4), C(64, 256, 4, 4, 8),
           C(32, 256, 2, 4, 8)]
Q_O4 = [C(64, 512, 4, 3, 1), C(128, 256, 4, 4, 2), C(64, 256, 4, 4, 1), C(64, 512, 4, 2, 2),
        C(64, 256, 2, 4, 2)]
JOBS = [("w8a16", 16, 1024, 8192, NARROW8), ("w8a16", 16, 1024, 4096, NARROW8), ("w8a16", 1, 1024, 8192, NARROW8),
        ("w4a8", 16, 1024, 4096, NARROW4), ("w8a16", 16, 4096, 4096, WIDE8), ("w4a8", 16, 8192, 8192, Q_O4),
        ("w4a16", 16, 1024, 4096, NARROW4), ("w8a16", 16, 512, 3584, NARROW8), ("w8a16", 16, 4096, 11008, WIDE8),
        ("w8a16", 1, 4096, 4096, WIDE8)]


def fns_for(kind, cfgs):
  if kind == "w8a16":
    return [gemm.kernel_fn(kind, c)[0] for c in cfgs], gemm.kernel_fn(kind, cfgs[0])[1]
  fn, ref = gemm4.kernel_fn(kind)
  return [functools.partial(fn, config=c) for c in cfgs], ref


def sets_for(kind, m, n, k):
  if kind == "w8a16":
    t_est = gemm.est_seconds(m, n, k, gemm.moved_bytes(kind, m, n, k))
    return gemm.make_sets(kind, m, n, k, gemm.n_sets(t_est, gemm.set_bytes(kind, m, n, k))), t_est
  return gemm4.inputs(kind, m, n, k)


def name(c):
  return f"{c.block_n},{c.block_k},{c.num_warps},{c.num_stages},{c.split_k}"


def main():
  out = sys.argv[1]
  quick = "--quick" in sys.argv
  gpu = configs.gpu_name()
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  jobs = JOBS
  if quick:  # CPU smoke run
    jobs = [(kind, m, 256, 512, cands[:2]) for kind, m, _, _, cands in JOBS[:1] + JOBS[3:4]]
  log = []
  for kind, m, n, k, cands in jobs:
    sel = configs.select_config if kind == "w8a16" else _w4_common.select_config
    configs.SPREAD_SPLIT_K = False
    cur = sel(kind, m, n, k)  # the table entry or bucket default, as before spread_split_k
    configs.SPREAD_SPLIT_K = True
    spread = sel(kind, m, n, k)
    cfgs = [cur] + [c for c in [spread] + cands if c != cur and n % c.block_n == 0]
    cfgs = list(dict.fromkeys(cfgs))
    if spread != cur:
      print(f"  spread_split_k: {name(cur)} -> {name(spread)}", flush=True)
    fns, ref = fns_for(kind, cfgs)
    sets, t_est = sets_for(kind, m, n, k)
    want = ref(*sets[0])
    loops = gemm.timing_loops(t_est, len(sets))
    tb = gemm.run_one("bf16", m, n, k, samples=10)[0]
    t0 = time.perf_counter()
    res = gemm.time_candidates(fns, sets, loops, 10, lambda f, s0=sets[0]: gemm.max_rel_err(f(*s0), want), workers=14)
    print(f"{kind} M={m} {n}x{k} {len(cfgs)} cands in {time.perf_counter() - t0:.0f} s, bf16 {tb * 1e6:.1f} us "
          f"({gpu} table: {name(cur)})", flush=True)
    ok = []
    for i, (c, r) in enumerate(zip(cfgs, res)):
      if isinstance(r, Exception):
        print(f"  {name(c)}: FAILED {type(r).__name__}: {str(r)[:160]}", flush=True)
        continue
      t, err = r
      print(f"  {'*' if i == 0 else ' '}{name(c)}: {t * 1e6:.1f} us ({tb / t:.2f}x) err {err:.1e}", flush=True)
      log.append(dict(kernel=kind, M=m, N=n, K=k, config=c.to_dict(), current=i == 0, time_us=t * 1e6,
                      bf16_us=tb * 1e6, err=err, phase="sweep", spread=c == spread))
      if err < 2e-2:
        ok.append((t, i))
    best = min((x for x in ok if x[1] != 0), default=None)
    if best is not None:  # A/B: current vs best new, alternating, with bf16 each round
      for rnd in range(3):
        tb2 = gemm.run_one("bf16", m, n, k, samples=10)[0]
        for i in dict.fromkeys([0, best[1]] + ([cfgs.index(spread)] if spread != cur else [])):
          t = gemm.time_call(fns[i], sets, 10, loops=loops)
          log.append(dict(kernel=kind, M=m, N=n, K=k, config=cfgs[i].to_dict(), current=i == 0, time_us=t * 1e6,
                          bf16_us=tb2 * 1e6, phase=f"ab{rnd}", spread=cfgs[i] == spread, best=i == best[1]))
          print(f"  ab{rnd} {'cur' if i == 0 else 'new'}{'/spread' if cfgs[i] == spread else ''} {name(cfgs[i])}: {t * 1e6:.1f} us ({tb2 / t:.2f}x)", flush=True)
    del sets
    pathlib.Path(out).write_text(json.dumps({"env": info, "log": log}, indent=1))
  print("TABLE")
  for kind, m, n, k, _ in jobs:
    rows = [r for r in log if (r["kernel"], r["M"], r["N"], r["K"]) == (kind, m, n, k) and r["phase"].startswith("ab")]
    for tag, pick in (("cur", lambda r: r["current"]), ("best", lambda r: r.get("best")),
                      ("spread", lambda r: r.get("spread") and not r["current"])):
      sel = [r for r in rows if pick(r)]
      if sel:
        ts, bs, c = [r["time_us"] for r in sel], [r["bf16_us"] for r in sel], sel[0]["config"]
        print(f"{kind:6s} M={m:2d} {n}x{k} {tag:6s} {c['block_n']},{c['block_k']},{c['num_warps']},"
              f"{c['num_stages']},{c['split_k']}: {min(ts):.1f}-{max(ts):.1f} us, "
              f"{min(b / t for b, t in zip(bs, ts)):.2f}-{max(b / t for b, t in zip(bs, ts)):.2f}x")

if __name__ == "__main__":
  main()
