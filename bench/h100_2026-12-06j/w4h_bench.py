"""(As run on 2026-12-06 23:02 UTC; `inflight` was removed from W4A16HopperConfig after this run showed it wrong.)
w4a16 at prefill sizes on sm_90: the Mosaic GPU kernel (w4a16_matmul_hopper, several configs) against
XLA's program (current, and W formed in logical order) and XLA bf16, same process.
  python .devassets/w4h_bench.py OUT.json [--quick] [--budget S]
"""
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import gemm  # noqa: E402
import gemm4  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mixq_jax.pallas_kernels import xla_matmuls  # noqa: E402
from mixq_jax.pallas_kernels.int4_pack import from_asym_storage_order, unpack_int4  # noqa: E402
from mixq_jax.pallas_kernels.w4a16_matmul_hopper import W4A16HopperConfig as C, w4a16_matmul_hopper  # noqa: E402
from mixq_jax.pallas_kernels.w8a8_matmul import _NT  # noqa: E402


@jax.jit
def wnat(x, w_q, scale, zero):
  n, kh = w_q.shape
  kp = 2 * kh
  g = scale.shape[0]
  q = from_asym_storage_order(unpack_int4(w_q)).astype(x.dtype).reshape(n, g, kp // g)
  w = ((q - zero.T.astype(x.dtype)[:, :, None]) * scale.T.astype(x.dtype)[:, :, None]).reshape(n, kp)
  return jax.lax.dot_general(x, w, _NT, preferred_element_type=jnp.float32).astype(x.dtype)


def hop(cfg, raw=False):
  f = lambda x, w, s, z: w4a16_matmul_hopper(x, w, s, z, config=cfg)
  return jax.jit((lambda *a: f(*a).T) if raw else f)  # raw: the transposed kernel output (XLA drops .T.T)


VARIANTS = {
    "xla_cur": jax.jit(xla_matmuls.w4a16_matmul_xla),
    "xla_nat": wnat,
    "h64x128": hop(C(64, 128, 4)),
    "h64x128_raw": hop(C(64, 128, 4), raw=True),
    "h64x128_if4": hop(C(64, 128, 4, inflight=4)),
    "h128x128": hop(C(128, 128, 4)),
    "h64x256": hop(C(64, 256, 3)),
}


def main():
  out = sys.argv[1]
  budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 420
  rows = [(2048, 8192, 8192), (2048, 4096, 4096), (256, 8192, 8192), (1024, 11008, 4096), (2048, 4096, 11008),
          (128, 4096, 4096), (1024, 8192, 8192), (4096, 8192, 8192), (2048, 28672, 8192), (2048, 8192, 28672),
          (512, 8192, 8192)]
  if "--quick" in sys.argv:
    rows = [(200, 256, 512)]
  t0 = time.time()
  info = gemm.env_info()
  print(json.dumps(info), flush=True)
  log = []
  for m, n, k in rows:
    if time.time() - t0 > budget:
      print("budget reached; rows left:", rows[rows.index((m, n, k)):], flush=True)
      break
    sets, t_est = gemm4.inputs("w4a16", m, n, k)
    loops = gemm.timing_loops(t_est, len(sets))
    want = VARIANTS["xla_cur"](*sets[0])
    tb = gemm.run_one("bf16", m, n, k, samples=10)[0]
    res = {}
    for name, f in VARIANTS.items():
      try:
        y = f(*sets[0])
        err = gemm.max_rel_err(y.T if name.endswith("_raw") else y, want)
        t = gemm.time_call(f, sets, 10, loops=loops)
        res[name] = (t, err)
        log.append(dict(M=m, N=n, K=k, variant=name, time_us=t * 1e6, bf16_us=tb * 1e6, err=err))
      except Exception as e:  # noqa: BLE001
        log.append(dict(M=m, N=n, K=k, variant=name, error=f"{type(e).__name__}: {str(e)[:400]}"))
        print(f"M={m} {n}x{k} {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
    print(f"M={m} {n}x{k} bf16 {tb * 1e6:.1f} us | " + " | ".join(
        f"{nm} {t * 1e6:.1f} ({tb / t:.2f}x, {e:.0e})" for nm, (t, e) in res.items()), flush=True)
    pathlib.Path(out).write_text(json.dumps({"env": info, "log": log}, indent=1))
  print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  main()
