import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from mixq_jax.pallas_kernels import mx
from kernel_testutil import keys

DTYPES = {"fp4": ml_dtypes.float4_e2m1fn, "fp6": ml_dtypes.float6_e3m2fn,
          "fp8": ml_dtypes.float8_e4m3fn}


@pytest.mark.parametrize("fmt", ["fp4", "fp6", "fp8"])
def test_elements_bit_exact_vs_ml_dtypes(fmt):
  """RNE rounding, subnormals and codes match ml_dtypes' casts (in range; clamp tested below)."""
  f = mx.FORMATS[fmt]
  rng = np.random.default_rng(0)
  v = np.concatenate([rng.standard_normal(20000) * f.elem_max / 3,
                      rng.standard_normal(5000) * 2.0**(f.emin - 1),  # subnormal range
                      np.arange(-f.elem_max, f.elem_max, 2.0**(f.emin - f.mbits - 1))])
  v = np.clip(v, -f.elem_max, f.elem_max).astype(np.float32)
  r = np.asarray(mx.round_to_format(jnp.asarray(v), fmt))
  want = v.astype(DTYPES[fmt])
  np.testing.assert_array_equal(r, want.astype(np.float32))
  codes = np.asarray(mx.values_to_codes(jnp.asarray(r), fmt))
  bits = 1 + f.ebits + f.mbits
  np.testing.assert_array_equal(codes, want.view(np.uint8) & ((1 << bits) - 1))
  np.testing.assert_array_equal(np.asarray(mx.codes_to_values(jnp.asarray(codes), fmt)), r)


@pytest.mark.parametrize("fmt", ["fp4", "fp6", "fp8"])
def test_clamp(fmt):
  f = mx.FORMATS[fmt]
  r = mx.round_to_format(jnp.array([1e9, -1e9, f.elem_max * 1.1]), fmt)
  np.testing.assert_array_equal(np.asarray(r), [f.elem_max, -f.elem_max, f.elem_max])


@pytest.mark.parametrize("fmt", ["fp4", "fp6", "fp8"])
@pytest.mark.parametrize("rule", ["ceil", "ocp"])
def test_scale_rule(fmt, rule):
  (k,) = keys(1)
  f = mx.FORMATS[fmt]
  x = jax.random.normal(k, (64, 96)) * jnp.exp(3 * jax.random.normal(k, (64, 1)))
  x = x.at[0, :32].set(0.0).at[1, :32].set(f.elem_max).at[2, :32].set(f.elem_max * 4)
  codes, s = mx.mx_encode(x, fmt, rule)
  assert codes.shape == (64, 96) and s.shape == (64, 3) and s.dtype == jnp.uint8
  amax = np.abs(np.asarray(x, np.float64)).reshape(64, 3, 32).max(-1)
  e = np.asarray(s, np.int64) - 127
  pos = amax > 0
  if rule == "ceil":  # the smallest e with amax <= elem_max 2^e
    assert np.all(amax[pos] <= f.elem_max * 2.0**e[pos])
    assert np.all(amax[pos] > f.elem_max * 2.0**(e[pos] - 1))
    assert e[1, 0] == 0 and e[2, 0] == 2
  else:
    np.testing.assert_array_equal(e[pos], np.floor(np.log2(amax[pos])) - f.emax_elem)
  assert e[0, 0] == -127
  # Decoding gives the scaled, rounded elements.
  dec = np.asarray(mx.mx_decode(codes, s, fmt))
  want = np.asarray(mx.round_to_format(jnp.asarray(np.asarray(x) / 2.0**np.repeat(e, 32, 1)),
                                       fmt)) * 2.0**np.repeat(e, 32, 1)
  np.testing.assert_array_equal(dec, want.astype(np.float32))


def test_padding_and_layout():
  (k,) = keys(1)
  w = jax.random.normal(k, (16, 576))
  wq = mx.mx_quantize_weight(w, k6=64)  # K4 = 512, K6 = 64
  assert wq.w4.shape == (16, 256) and wq.s4.shape == (16, 16)
  assert wq.w6.shape == (16, 64) and wq.w6.dtype == jnp.float8_e4m3fn and wq.s6.shape == (16, 2)
  deq = mx.dequantize_weight(wq)
  fq4, fq6 = mx.fake_quantize(w[:, :512], "fp4"), mx.fake_quantize(w[:, 512:], "fp6")
  np.testing.assert_array_equal(np.asarray(deq[:, :512]), np.asarray(fq4))
  np.testing.assert_array_equal(np.asarray(deq[:, 512:]), np.asarray(fq6))
  x_e, x_s = mx.mx_quantize_act(jnp.ones((3, 200)), k6=40)  # K4 = 160 -> 256, K6 = 40 -> 64
  assert x_e.shape == (3, 320) and x_s.shape == (3, 10)


@pytest.mark.parametrize("fmt", ["fp4", "fp6", "fp8"])
def test_nan_and_inf_blocks_decode_to_nan(fmt):
  (kx,) = keys(1)
  x = jax.random.normal(kx, (3, 96))
  x = x.at[0, 5].set(jnp.nan).at[1, 40].set(jnp.inf).at[2, 70].set(-jnp.inf)
  codes, s = mx.mx_encode(x, fmt)
  assert s[0, 0] == 255 and s[1, 1] == 255 and s[2, 2] == 255
  bad = np.zeros((3, 3), bool)
  bad[0, 0] = bad[1, 1] = bad[2, 2] = True
  assert np.all(np.asarray(s)[~bad] < 255)  # the other blocks keep finite scales
  y = np.asarray(mx.mx_decode(codes, s, fmt)).reshape(3, 3, 32)
  assert np.all(np.isnan(y[bad])) and np.all(np.isfinite(y[~bad]))


def test_mixed_channel_order():
  """The k6 largest channels go last (the MXFP6 part); the product is unchanged by the order and
  more accurate than with the outlier channels left in the MXFP4 part."""
  from mixq_jax.pallas_kernels import mx_matmul_reference

  kx, kw, ki = keys(3)
  m, n, k, k6 = 8, 32, 256, 64
  hot = jax.random.permutation(ki, k)[:k6]
  x = jax.random.normal(kx, (m, k)).at[:, hot].multiply(30.0)
  w = jax.random.normal(kw, (n, k))
  amax = jnp.max(jnp.abs(x), axis=0)
  perm = mx.mixed_channel_order(amax, k6)
  assert sorted(np.asarray(perm).tolist()) == list(range(k))
  assert set(np.asarray(perm[-k6:]).tolist()) == set(np.asarray(hot).tolist())
  assert np.all(np.diff(np.asarray(perm[:-k6])) > 0)  # the rest keep their order
  exact = x @ w.T

  def err(order):
    wq = mx.mx_quantize_weight(w[:, order], k6)
    x_e, x_s = mx.mx_quantize_act(x[:, order], k6)
    y = mx_matmul_reference(x_e, x_s, wq, out_dtype=jnp.float32)
    return float(jnp.linalg.norm(y - exact) / jnp.linalg.norm(exact))

  assert err(perm) < 0.9 * err(jnp.arange(k))
  with pytest.raises(ValueError, match="k6"):
    mx.mixed_channel_order(amax, k + 1)
