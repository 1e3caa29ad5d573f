"""The decode configs users now get on narrow layers (configs.spread_split_k + the new 70B k/v entry) against
the ones they got before, alternating 3 rounds in one process with XLA bf16 each round.
  python .devassets/spread_verify.py OUT.json [--quick]
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # narrow_sweep.py beside it
import narrow_sweep as ns  # noqa: E402  (bench/ on the path, gemm's XLA_FLAGS)
import gemm  # noqa: E402

from mixq_jax.pallas_kernels import _w4_common, configs  # noqa: E402
from mixq_jax.pallas_kernels.configs import KernelConfig  # noqa: E402

OLD_KV = KernelConfig(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=4, split_k=4)  # until today
JOBS = [("w8a16", 16, 1024, 8192), ("w8a16", 1, 1024, 8192), ("w8a16", 16, 1024, 4096), ("w8a16", 1, 1024, 4096),
        ("w8a16", 16, 512, 3584), ("w4a8", 16, 1024, 8192), ("w4a8", 16, 1024, 4096), ("w4a8g", 16, 1024, 8192),
        ("w4a16", 16, 1024, 8192), ("w4a16", 16, 1024, 4096), ("mx", 16, 1024, 8192), ("w8a16", 16, 4096, 4096)]


def main():
  out, quick = sys.argv[1], "--quick" in sys.argv
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  jobs = [(kd, m, 256, 1024) for kd, m, _, _ in JOBS[:1] + JOBS[5:6]] if quick else JOBS
  log = []
  for kind, m, n, k in jobs:
    sel = configs.select_config if kind == "w8a16" else _w4_common.select_config
    configs.SPREAD_SPLIT_K = False
    old = OLD_KV if (kind, n, k) == ("w8a16", 1024, 8192) and configs.gpu_name() == "h100" else sel(kind, m, n, k)
    configs.SPREAD_SPLIT_K = True
    new = sel(kind, m, n, k)
    sets, t_est = ns.sets_for(kind, m, n, k)
    (f_old, f_new), ref = ns.fns_for(kind, [old, new])
    want = ref(*sets[0])
    errs = [gemm.max_rel_err(f(*sets[0]), want) for f in (f_old, f_new)]
    loops = gemm.timing_loops(t_est, len(sets))
    for rnd in range(3):
      tb = gemm.run_one("bf16", m, n, k, samples=10)[0]
      for tag, f, c, e in (("old", f_old, old, errs[0]), ("new", f_new, new, errs[1])):
        if tag == "new" and new == old:
          continue
        t = gemm.time_call(f, sets, 10, loops=loops)
        log.append(dict(kernel=kind, M=m, N=n, K=k, which=tag, config=c.to_dict(), time_us=t * 1e6, bf16_us=tb * 1e6,
                        err=e, round=rnd))
    del sets
    rows = [r for r in log if (r["kernel"], r["M"], r["N"], r["K"]) == (kind, m, n, k)]
    line = f"{kind:6s} M={m:2d} {n}x{k}"
    for tag, c in (("old", old), ("new", new)):
      sel_rows = [r for r in rows if r["which"] == tag]
      if sel_rows:
        ts, bs = [r["time_us"] for r in sel_rows], [r["bf16_us"] for r in sel_rows]
        line += (f" | {tag} {ns.name(c)} {min(ts):.1f}-{max(ts):.1f} us "
                 f"{min(b / t for b, t in zip(bs, ts)):.2f}-{max(b / t for b, t in zip(bs, ts)):.2f}x")
    line += f" | bf16 {min(r['bf16_us'] for r in rows):.1f}-{max(r['bf16_us'] for r in rows):.1f} | err {max(errs):.1e}"
    print(line, flush=True)
    pathlib.Path(out).write_text(json.dumps({"env": info, "log": log}, indent=1))


if __name__ == "__main__":
  main()
