"""Helpers for the kernel tests: interpret mode unless a GPU is present, fresh random inputs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

HAS_GPU = any(d.platform == "gpu" for d in jax.devices())
INTERPRET = not HAS_GPU

_counter = itertools.count(1)


def keys(n):
  """Fresh keys per call, so every test draws new data (never zeros)."""
  return jax.random.split(jax.random.PRNGKey(1000 + next(_counter)), n)


def rand_int8(key, shape):
  return jax.random.randint(key, shape, -127, 128, jnp.int32).astype(jnp.int8)


def rand_scale(key, shape):
  return jax.random.uniform(key, shape, jnp.float32, 0.5, 1.5) / 127.0


def w8a8_operands(m, n, k):
  """Fresh int8 x [M, K] and w [N, K] with per-row scales: (x, s_x [M], w, s_w [N])."""
  kx, kw, ks, kt = keys(4)
  return rand_int8(kx, (m, k)), rand_scale(ks, (m,)), rand_int8(kw, (n, k)), rand_scale(kt, (n,))


def rel_err(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  assert np.all(np.isfinite(a)), "non-finite output"
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def w4a8_exact_case(m, n, k, grouped):
  """A W4A8 problem whose int32 accumulator is observable: random int8 x [M, K], int4 weights from
  `quantize_w4_sym` (or QQQ g128 with s_g [N, G]), unit scales, and the exact int32 product
  x @ w8[:, :K].T of the int8 weights the kernels must form. -> (x, w_q, s_g | None, ones_m, ones_n, want)."""
  from mixq_jax.pallas_kernels.int4_pack import quantize_w4_qqq_g128, quantize_w4_sym, unpack_int4

  kx, kw = keys(2)
  x = rand_int8(kx, (m, k))
  w = jax.random.normal(kw, (n, k))
  if grouped:
    w_q, s_g, _ = quantize_w4_qqq_g128(w)  # s_g [N, G]
    w8 = (unpack_int4(w_q).reshape(n, -1, 128) * s_g[:, :, None]).reshape(n, -1)
  else:
    (w_q, _), s_g = quantize_w4_sym(w), None
    w8 = unpack_int4(w_q)
  want = jax.lax.dot_general(x, w8[:, :k], (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
  return x, w_q, s_g, jnp.ones((m,), jnp.float32), jnp.ones((n,), jnp.float32), want


def mosaic_gpu_test_mode() -> bool:
  """For test modules of the Mosaic GPU kernels: skips the module on a non-sm_90 GPU, or where this
  jax's interpreter hooks moved; on the CPU patches the interpreter (mgpu_interpret). -> interpret?"""
  import pytest  # noqa: PLC0415

  from mixq_jax.pallas_kernels.w8a8_matmul_hopper import is_hopper  # noqa: PLC0415

  if HAS_GPU and not is_hopper():
    pytest.skip("the Mosaic GPU kernels need sm_90", allow_module_level=True)
  if HAS_GPU:
    return False
  try:  # jax-internal interpreter hooks: skip, naming the cause, if a jax release moved them
    import mgpu_interpret  # noqa: PLC0415

    mgpu_interpret.patch()
  except (ImportError, AttributeError) as e:
    pytest.skip(f"Mosaic GPU interpret mode unavailable in jax {jax.__version__}: {e}", allow_module_level=True)
  return True


def small_hopper_config():
  """Small tiles so the CPU interpreter has several output tiles, K steps and persistent-loop turns."""
  from mixq_jax.pallas_kernels.w8a8_matmul_hopper import HopperConfig  # noqa: PLC0415

  return HopperConfig(tile_m=64, tile_n=64, tile_k=128, stages=2, grid_tile_width=2)
