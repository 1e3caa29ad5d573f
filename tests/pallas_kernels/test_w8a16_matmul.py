import jax
import jax.numpy as jnp
import pytest

from mixq_jax.pallas_kernels import KernelConfig, w8a16_matmul, w8a16_matmul_reference
from kernel_testutil import INTERPRET, keys, rand_int8, rand_scale, rel_err

SMALL = KernelConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=2, group_m=2)


@pytest.mark.parametrize("m", [1, 7, 16, 33])
@pytest.mark.parametrize("n,k", [(48, 160), (96, 48)])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_w8a16(m, n, k, dtype):
  kx, kw, ks, kb = keys(4)
  x = jax.random.normal(kx, (m, k), dtype)
  w, sw = rand_int8(kw, (n, k)), rand_scale(ks, (n,))
  b = jax.random.normal(kb, (n,), dtype)
  got = w8a16_matmul(x, w, sw, b, interpret=INTERPRET, config=SMALL)
  want = w8a16_matmul_reference(x, w, sw, b)
  assert got.dtype == dtype and got.shape == (m, n)
  assert rel_err(got, want) < 4e-3


@pytest.mark.parametrize("m,split_k", [(1, 2), (7, 4), (20, 8)])
def test_w8a16_split_k(m, split_k):
  n, k = 64, 256
  kx, kw, ks, kb = keys(4)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w, sw = rand_int8(kw, (n, k)), rand_scale(ks, (n,))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  cfg = KernelConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=2,
                     split_k=split_k)
  got = w8a16_matmul(x, w, sw, b, interpret=INTERPRET, config=cfg)
  want = w8a16_matmul_reference(x, w, sw, b)
  assert got.dtype == jnp.bfloat16 and got.shape == (m, n)
  assert rel_err(got, want) < 4e-3


def test_w8a16_default_config():
  kx, kw, ks = keys(3)
  x = jax.random.normal(kx, (3, 256), jnp.bfloat16)
  w, sw = rand_int8(kw, (128, 256)), rand_scale(ks, (128,))
  got = w8a16_matmul(x, w, sw, out_dtype=jnp.float32, interpret=INTERPRET)
  want = w8a16_matmul_reference(x, w, sw, out_dtype=jnp.float32)
  assert rel_err(got, want) < 1e-5


def test_errors():
  with pytest.raises(ValueError, match="N=40"):
    w8a16_matmul(jnp.ones((2, 32), jnp.bfloat16), jnp.ones((40, 32), jnp.int8), jnp.ones((40,)))
  with pytest.raises(ValueError, match="s_w.shape"):
    w8a16_matmul(jnp.ones((2, 32), jnp.bfloat16), jnp.ones((32, 32), jnp.int8), jnp.ones((16,)))


def test_w8a16_spread_config(monkeypatch):
  """The config a GPU with 132 SMs picks for an untuned narrow layer: split_k and block_k from
  configs.spread_split_k (here block_k 256 -> 128, split 1 -> 4), exact as any config."""
  from mixq_jax.pallas_kernels import configs, tuned_table  # noqa: PLC0415

  monkeypatch.setattr(configs, "sm_count", lambda: 132)
  monkeypatch.setattr(tuned_table, "TABLE", {})
  cfg = configs.select_config("w8a16", 5, 64, 1536)
  assert (cfg.block_k, cfg.split_k) == (128, 4)
  jax.clear_caches()  # the wrapper selects its config while tracing
  kx, kw, ks = keys(3)
  x = jax.random.normal(kx, (5, 1536), jnp.bfloat16)
  w, sw = rand_int8(kw, (64, 1536)), rand_scale(ks, (64,))
  got = w8a16_matmul(x, w, sw, out_dtype=jnp.float32, interpret=INTERPRET)
  jax.clear_caches()
  assert rel_err(got, w8a16_matmul_reference(x, w, sw, out_dtype=jnp.float32)) < 1e-5
