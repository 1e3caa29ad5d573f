import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import int4_pack as ip
from kernel_testutil import keys


@pytest.mark.parametrize("signed", [True, False])
def test_pack_round_trip(signed):
  (k,) = keys(1)
  lo, hi = (-8, 8) if signed else (0, 16)
  q = jax.random.randint(k, (5, 384), lo, hi)
  p = ip.pack_int4(q, signed=signed)
  assert p.shape == (5, 192) and p.dtype == (jnp.int8 if signed else jnp.uint8)
  np.testing.assert_array_equal(np.asarray(ip.unpack_int4(p)), np.asarray(q))


def test_layout_pairs():
  """Byte j of pack block b holds k = 128 b + j (low nibble) and k = 128 b + 64 + j (high)."""
  q = (jnp.arange(256) % 16)[None, :]
  p = np.asarray(ip.pack_int4(q, signed=False))[0].astype(int)
  for b in range(2):
    for j in (0, 5, 63):
      assert p[64 * b + j] & 15 == (128 * b + j) % 16
      assert p[64 * b + j] >> 4 == (128 * b + 64 + j) % 16


def test_pack_refuses_unpadded():
  with pytest.raises(ValueError, match="K=100"):
    ip.pack_int4(jnp.zeros((2, 100), jnp.int32), signed=True)


@pytest.mark.parametrize("k", [256, 576])  # 576 = SmolLM2-135M: last group partial
def test_quantize_w4_asym(k):
  (kw,) = keys(1)
  w = jax.random.normal(kw, (32, k))
  w_q, s, z = ip.quantize_w4_asym(w)
  g = -(-k // 128)
  assert w_q.shape == (32, 64 * g) and s.shape == (g, 32) and z.shape == (g, 32)
  deq = ip.dequantize_w4_asym(w_q, s, z, k)
  err = jnp.abs(deq - w) / s.astype(jnp.float32).T.repeat(128, axis=1)[:, :k]
  # RTN: half a step inside the range; the integer zero point shifts the range by up to half a
  # step, so values at its ends may clip by up to one step.
  assert float(jnp.max(err)) <= 1.0 + 1e-3
  assert float(jnp.mean(err)) < 0.3


def test_quantize_w4_sym_and_qqq():
  (kw,) = keys(1)
  w = jax.random.normal(kw, (16, 200))
  w_q, s = ip.quantize_w4_sym(w)
  deq = ip.unpack_int4(w_q)[:, :200] * s[:, None]
  assert float(jnp.max(jnp.abs(deq - w) / s[:, None])) <= 0.5 + 1e-4
  w_q, s_g, s_ch = ip.quantize_w4_qqq_g128(w)
  q8 = ip.unpack_int4(w_q).reshape(16, 2, 128) * s_g[:, :, None]
  assert s_g.shape == (16, 2)  # [N, G], as w4a8_matmul takes it
  q8i = q8.astype(jnp.int32)
  assert int(jnp.min(q8i)) >= -120 and int(jnp.max(q8i)) <= 105  # exact int8 after the group scale
  assert int(jnp.min(s_g)) >= 1 and int(jnp.max(s_g)) <= 15
  deq = (q8.reshape(16, 256)[:, :200] * s_ch[:, None])
  assert float(jnp.linalg.norm(deq - w) / jnp.linalg.norm(w)) < 0.15


@pytest.mark.parametrize("asym", [False, True])
def test_quantize_act4(asym):
  (kx,) = keys(1)
  x = jax.random.normal(kx, (6, 200), jnp.bfloat16)
  x_q, s, m_x = ip.quantize_act4(x, asym=asym)
  q = ip.unpack_int4(x_q).astype(jnp.float32)
  assert x_q.shape == (6, 128) and (x_q.dtype == jnp.uint8) == asym
  deq = q[:, :200] * s[:, None] + (m_x[:, None] if asym else 0)
  assert float(jnp.max(jnp.abs(deq - x.astype(jnp.float32)) / s[:, None])) <= 0.5 + 1e-3
  np.testing.assert_array_equal(np.asarray(q[:, 200:]), 0)  # padding is q = 0


def test_unpack_int4_words_matches_unpack_int4():
  """The 32-bit-word unpack equals the byte-wise one on every byte value, signed and unsigned, and
  with every QQQ group scale (q * s exact in int8)."""
  from mixq_jax.pallas_kernels.int4_pack import unpack_int4, unpack_int4_words  # noqa: PLC0415

  every = jnp.arange(256, dtype=jnp.int32).astype(jnp.uint8).reshape(2, 128)  # 2 pack blocks per row
  for packed in (every, every.view(jnp.int8)):
    np.testing.assert_array_equal(np.asarray(unpack_int4_words(packed)), np.asarray(unpack_int4(packed)))
  signed = jnp.concatenate([every.view(jnp.int8)] * 15, axis=0)  # [30, 128]: rows for every scale
  s_g = jnp.repeat(jnp.arange(1, 16, dtype=jnp.int8), 2)[:, None] * jnp.ones((1, 2), jnp.int8)  # [30, G=2]
  want = (unpack_int4(signed).reshape(30, 2, 128) * s_g[:, :, None]).reshape(30, 256)
  np.testing.assert_array_equal(np.asarray(unpack_int4_words(signed, s_g)), np.asarray(want))
