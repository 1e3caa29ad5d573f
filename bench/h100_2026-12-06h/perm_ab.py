"""What the XLA pass that reorders x costs a decode call: w4a16 (magic_x_order) and mx (mx_x_order) timed as
they are, and with the reorder replaced by the identity (wrong output, same kernel work: the time a pre-shuffled
weight layout would give). Alternating, 3 rounds, same-process bf16.
  python .devassets/perm_ab.py OUT.json
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import gemm  # noqa: E402
import gemm4  # noqa: E402
import jax  # noqa: E402

from mixq_jax.pallas_kernels import _w4_common  # noqa: E402

mxm = sys.modules["mixq_jax.pallas_kernels.mx_matmul"]
JOBS = [("w4a16", 16, 4096, 4096), ("w4a16", 16, 8192, 8192), ("w4a16", 16, 4096, 11008), ("w4a16", 1, 4096, 4096),
        ("mx", 16, 4096, 4096), ("mx", 16, 8192, 8192)]


def main():
  out = sys.argv[1]
  info = gemm.env_info()
  log = []
  jobs = JOBS if "--quick" not in sys.argv else [("w4a16", 16, 64, 256), ("mx", 16, 64, 256)]
  for kind, m, n, k in jobs:
    sets, t_est = gemm4.inputs(kind, m, n, k)
    loops = gemm.timing_loops(t_est, len(sets))
    fns = {}
    for ident in (False, True):  # trace each under its own patch (jit traces on first call)
      orig = (_w4_common.magic_x_order, mxm.mx_x_order)
      if ident:
        _w4_common.magic_x_order = lambda x: x
        mxm.mx_x_order = lambda x: x
      fn, _ = gemm4.kernel_fn(kind)
      jax.clear_caches()
      prog = gemm.timing_program(fn, sets, loops).lower(sets).compile()
      _w4_common.magic_x_order, mxm.mx_x_order = orig
      fns[ident] = (fn, prog)
    for rnd in range(3):
      tb = gemm.run_one("bf16", m, n, k, samples=10)[0]
      for ident in (False, True):
        fn, prog = fns[ident]
        t = gemm.time_call(fn, sets, 10, loops=loops, program=prog)
        log.append(dict(kernel=kind, M=m, N=n, K=k, identity=ident, time_us=t * 1e6, bf16_us=tb * 1e6, round=rnd))
        print(f"{kind} M={m} {n}x{k} r{rnd} {'no reorder' if ident else 'as is     '}: {t * 1e6:.1f} us ({tb / t:.2f}x)", flush=True)
    pathlib.Path(out).write_text(json.dumps({"env": info, "log": log}, indent=1))
  print("PERM TABLE")
  for kind, m, n, k in jobs:
    for ident in (False, True):
      r = [x for x in log if (x["kernel"], x["M"], x["N"], x["K"], x["identity"]) == (kind, m, n, k, ident)]
      if r:
        ts = [x["time_us"] for x in r]
        sp = [x["bf16_us"] / x["time_us"] for x in r]
        print(f"{kind:5s} M={m:2d} {n}x{k} {'no reorder' if ident else 'as is':10s}: {min(ts):.1f}-{max(ts):.1f} us, {min(sp):.2f}-{max(sp):.2f}x")


if __name__ == "__main__":
  main()
