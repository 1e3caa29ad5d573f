"""After the change: w4a16 with weights in the asymmetric storage order (x read as it is), and the two new
table entries (w8a16 7B down, w4a8g 7B qkvo). Every program compiled at once, then each row timed in 3
alternating rounds next to the same-process XLA bf16; outputs checked against the references.
  python .devassets/verify_w4.py OUT.json [--quick]
"""
import functools
import importlib
import json
import pathlib
import statistics
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import compile_pool  # noqa: E402
import gemm  # noqa: E402
import gemm4  # noqa: E402

from mixq_jax.pallas_kernels import _w4_common, configs  # noqa: E402

ROWS = [("w4a16", 16, 4096, 4096), ("w4a16", 16, 11008, 4096), ("w4a16", 16, 4096, 11008),
        ("w4a16", 16, 8192, 8192), ("w4a16", 16, 28672, 8192), ("w4a16", 16, 8192, 28672),
        ("w4a16", 16, 1024, 8192), ("w8a16", 16, 4096, 11008), ("w4a8g", 16, 4096, 4096),
        ("w4a16", 2048, 4096, 4096), ("w4a16", 2048, 11008, 4096),
        ("w4a16", 2048, 4096, 11008), ("w4a16old", 2048, 4096, 4096), ("w4a16old", 2048, 11008, 4096),
        ("w4a16old", 2048, 4096, 11008), ("reorder", 2048, 4096, 4096), ("reorder", 2048, 4096, 11008)]


def w4a16_old(x, w, s, z):
  """w4a16 as before MAGIC_DEQUANT: large M unpacks bytes against an XLA-reordered x."""
  w4mod = importlib.import_module("mixq_jax.pallas_kernels.w4a16_matmul")
  prev = _w4_common.MAGIC_DEQUANT
  _w4_common.MAGIC_DEQUANT = False
  try:
    return w4mod.w4a16_matmul.__wrapped__(x, w, s, z, interpret=gemm.INTERPRET)
  finally:
    _w4_common.MAGIC_DEQUANT = prev


def setup(kind, m, n, k):
  if kind == "reorder":  # the XLA pass the large-M w4a16 path puts in front of the kernel
    from mixq_jax.pallas_kernels.int4_pack import to_asym_storage_order
    fn = jax.jit(to_asym_storage_order)
    sets, t_est = gemm4.inputs("w4a16", m, n, k)
    sets = [(s[0],) for s in sets]
    return fn, fn, sets, gemm.timing_loops(t_est, len(sets)), _w4_common.select_config("w4a16", m, n, k)
  if kind == "w4a16old":
    _, ref = gemm4.kernel_fn("w4a16")
    sets, t_est = gemm4.inputs("w4a16", m, n, k)
    return jax.jit(w4a16_old), ref, sets, gemm.timing_loops(t_est, len(sets)), _w4_common.select_config("w4a16", m, n, k)
  if kind == "w8a16":
    fn, ref = gemm.kernel_fn(kind, None)
    t_est = gemm.est_seconds(m, n, k, gemm.moved_bytes(kind, m, n, k))
    sets = gemm.make_sets(kind, m, n, k, gemm.n_sets(t_est, gemm.set_bytes(kind, m, n, k)))
    cfg = configs.select_config(kind, m, n, k)
  else:
    fn, ref = gemm4.kernel_fn(kind)
    sets, t_est = gemm4.inputs(kind, m, n, k)
    cfg = _w4_common.select_config(kind, m, n, k)
  return fn, ref, sets, gemm.timing_loops(t_est, len(sets)), cfg


def main():
  out = sys.argv[1]
  rows = ROWS if "--quick" not in sys.argv else [("w4a16", 16, 64, 256), ("w8a16", 1, 64, 256), ("w4a16", 80, 64, 256),
                                                 ("w4a16old", 80, 64, 256), ("reorder", 80, 64, 256)]
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  st = {}
  jobs = {}
  for r in rows:
    kind, m, n, k = r
    fn, ref, sets, loops, cfg = setup(*r)
    bfn, _ = gemm.kernel_fn("bf16", None)
    bt_est = gemm.est_seconds(m, n, k, gemm.moved_bytes("bf16", m, n, k))
    bsets = gemm.make_sets("bf16", m, n, k, gemm.n_sets(bt_est, gemm.set_bytes("bf16", m, n, k)))
    bloops = gemm.timing_loops(bt_est, len(bsets))
    st[r] = dict(fn=fn, ref=ref, sets=sets, loops=loops, cfg=cfg, bfn=bfn, bsets=bsets, bloops=bloops)
    jobs[(r, "k")] = functools.partial(gemm.timing_program(fn, sets, loops).lower, sets)
    jobs[(r, "b")] = functools.partial(gemm.timing_program(bfn, bsets, bloops).lower, bsets)
  progs = compile_pool.compile_programs(jobs, 15, log=lambda _: None)
  log = []
  for r in rows:
    s = st[r]
    y, want = s["fn"](*s["sets"][0]), s["ref"](*s["sets"][0])
    err = gemm.max_rel_err(y, want)
    ts, bs = [], []
    for rnd in range(3):
      bs.append(gemm.time_call(s["bfn"], s["bsets"], 10, loops=s["bloops"], program=progs[(r, "b")]))
      ts.append(gemm.time_call(s["fn"], s["sets"], 10, loops=s["loops"], program=progs[(r, "k")]))
    kind, m, n, k = r
    c = s["cfg"]
    rec = dict(kernel=kind, M=m, N=n, K=k, time_us=[t * 1e6 for t in ts], bf16_us=[b * 1e6 for b in bs],
               speedup=[b / t for b, t in zip(bs, ts)], max_rel_err=err, config=c.to_dict())
    log.append(rec)
    print(f"{kind:6s} M={m:2d} {n}x{k} {c.block_n},{c.block_k},{c.num_warps},{c.num_stages},{c.split_k}: "
          f"{min(ts) * 1e6:.1f}-{max(ts) * 1e6:.1f} us, bf16 {min(bs) * 1e6:.1f}-{max(bs) * 1e6:.1f}, "
          f"{min(rec['speedup']):.2f}-{max(rec['speedup']):.2f}x (median {statistics.median(rec['speedup']):.2f}), err {err:.1e}",
          flush=True)
    pathlib.Path(out).write_text(json.dumps({"env": info, "log": log}, indent=1))


if __name__ == "__main__":
  main()
