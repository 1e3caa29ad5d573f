"""mixq_jax.layers: how an activation site picks its quantizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax import layers
from mixq_jax.schemes import LayerQuant


def _site_jaxpr(scheme: str, m: int) -> str:
  lq = LayerQuant(scheme=scheme, capacity=8) if scheme == "mix8" else LayerQuant(scheme=scheme)
  site = layers.ActQuant(lq=lq, impl="pallas")
  x = jax.random.normal(jax.random.key(m), (1, m, 64), jnp.bfloat16)
  valid = jnp.ones((1, m), bool)
  variables = site.init(jax.random.key(0), x[:, :1], valid[:, :1])  # init runs the site: keep it on the jnp path
  return str(jax.make_jaxpr(lambda v, a: site.apply(v, a, valid))(variables, x))


@pytest.mark.parametrize("scheme", ["w8a8", "mix8"])
def test_decode_sized_sites_quantize_in_xla(scheme):
  """Up to FUSED_QUANT_MAX_M tokens the Pallas impl quantizes with plain jnp (XLA fuses it into the
  ops that produce x); above it, with the quantize_act kernel."""
  small, large = layers.FUSED_QUANT_MAX_M, layers.FUSED_QUANT_MAX_M + 16
  assert "pallas_call" not in _site_jaxpr(scheme, small)
  assert "pallas_call" in _site_jaxpr(scheme, large)


def test_fused_quantization_matches_the_kernel():
  """The two quantizers behind one site agree (up to 1 LSB of x_q on rounding ties)."""
  m = layers.FUSED_QUANT_MAX_M
  x = (3 * jax.random.normal(jax.random.key(1), (1, m, 80))).astype(jnp.bfloat16)
  valid = jnp.ones((1, m), bool)
  got = {}
  for impl in ("pallas", "interpret"):  # pallas takes the jnp path at this M; interpret runs the kernel
    site = layers.ActQuant(lq=LayerQuant(scheme="w8a8"), impl=impl)
    got[impl] = site.apply(site.init(jax.random.key(0), x, valid), x, valid)
  diff = np.abs(np.asarray(got["pallas"].x_q, np.int32) - np.asarray(got["interpret"].x_q, np.int32))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-2
  np.testing.assert_allclose(np.asarray(got["pallas"].s_x), np.asarray(got["interpret"].s_x), rtol=1e-5)


class _Site(nn.Module):
  lq: LayerQuant
  impl: str

  @nn.compact
  def __call__(self, x):  # x [M, K]
    qa = layers.ActQuant(self.lq, self.impl, name="site")(x[None], jnp.ones((1, x.shape[0]), bool))
    return layers.QuantDense(x.shape[1], 32, False, jnp.bfloat16, self.impl, self.lq, name="dense")(qa)


@pytest.mark.parametrize("scheme", ["w8a16", "w8a8", "llm_int8", "mix8"])
def test_single_token_layers_run_the_xla_program(scheme):
  """At M <= XLA_MATMUL_MAX_M a Pallas-impl layer is the XLA-impl program exactly (the batch-1
  decode measured with --impl xla); above FUSED_QUANT_MAX_M it calls the Pallas kernels."""
  lq = LayerQuant(scheme=scheme, capacity=8) if scheme in ("llm_int8", "mix8") else LayerQuant(scheme=scheme)

  def program(impl, m):
    x = jax.random.normal(jax.random.key(2), (m, 64), jnp.bfloat16)
    site = _Site(lq, impl)
    variables = site.init(jax.random.key(0), x[:1])  # init at M = 1 stays off the Pallas kernels
    return str(jax.make_jaxpr(site.apply)(variables, x))

  m = layers.XLA_MATMUL_MAX_M
  assert program("pallas", m) == program("xla", m)
  assert "pallas_call" in program("pallas", layers.FUSED_QUANT_MAX_M + 1)
