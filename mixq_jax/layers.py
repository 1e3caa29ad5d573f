"""QuantDense: the one linear layer every model projection goes through.

Weights are stored in the HF layout W [N, K] (N outputs, K inputs), which is also the K-major layout
the int8 tensor-core kernels want, so quantized schemes keep the same orientation. Today the layer
holds a dense weight (bf16 or fp32); quantized schemes give it other parameter sets and route the
product through `qmatmul`, the single dispatch point with an XLA fallback.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def qmatmul(x: Array, params: dict[str, Array], *, impl: str = "xla") -> Array:
  """y = x Wᵀ (+ b) for the parameter set of one layer.

  x: [..., K]; params["weight"]: [N, K]; optional params["bias"]: [N]. Returns [..., N] in x.dtype.
  `impl` selects the backend for quantized parameter sets (xla | pallas | interpret); the dense
  path is always XLA.
  """
  del impl  # Dense weights have a single (XLA) implementation.
  w = params["weight"]
  y = jnp.einsum("...k,nk->...n", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
  if "bias" in params:
    y = y + params["bias"].astype(jnp.float32)
  return y.astype(x.dtype)


class QuantDense(nn.Module):
  """Linear layer y = x Wᵀ + b with W [N, K] (HF layout)."""

  features: int  # N
  use_bias: bool = False
  param_dtype: jnp.dtype = jnp.bfloat16
  impl: str = "xla"

  @nn.compact
  def __call__(self, x: Array) -> Array:  # [..., K] -> [..., N]
    k = x.shape[-1]
    params = {"weight": self.param("weight", nn.initializers.normal(0.02), (self.features, k), self.param_dtype)}
    if self.use_bias:
      params["bias"] = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return qmatmul(x, params, impl=self.impl)
