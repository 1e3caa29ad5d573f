"""W8A16 matmul (EETQ-style): int8 weights, 16-bit activations, dequantized in registers.

Shape letters: M tokens, N output features, K input features.

    y = (x @ w_q.T) * s_w[None, :] (+ bias)

int8 -> bf16/fp16 is exact, so the MMA runs on the 16-bit tensor cores with float32 accumulation
and the per-channel scale is applied once in the epilogue. Tuned for decode (M <= 16), where the
time is the weight bytes: half of bf16's, and narrow N tiles keep every SM streaming.
"""

import functools

import jax
import jax.numpy as jnp

from mixq_jax.pallas_kernels import _shapes
from mixq_jax.pallas_kernels.configs import KernelConfig
from mixq_jax.pallas_kernels.w8a8_matmul import _NT, fused_matmul


def _check(x, w_q, s_w, bias):
  _shapes.check_2d("x", x, (jnp.bfloat16, jnp.float16))
  _shapes.check_2d("w_q", w_q, (jnp.int8,))
  m, k = x.shape
  n, kw = w_q.shape
  if kw != k:
    raise ValueError(f"x.shape={x.shape} and w_q.shape={w_q.shape} disagree on K ({k} != {kw})")
  _shapes.check_mult16(N=n, K=k)
  _shapes.check_vec("s_w", s_w, n, jnp.float32)
  if bias is not None:
    _shapes.check_vec("bias", bias, n)
  return m, n, k


@functools.partial(jax.jit, static_argnames=("out_dtype", "interpret", "config"))
def w8a16_matmul(
    x: jax.Array,    # [M, K] bf16 / fp16
    w_q: jax.Array,  # [N, K] int8
    s_w: jax.Array,  # [N] float32
    bias: jax.Array | None = None,  # [N]
    *,
    out_dtype=None,  # default: x.dtype
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> jax.Array:  # [M, N]
  """Pallas int8-weight x 16-bit-activation GEMM. Any M; N, K multiples of 16."""
  _check(x, w_q, s_w, bias)
  return fused_matmul(x, None, w_q, s_w, bias, None, None, None, kernel="w8a16",
                      out_dtype=out_dtype or x.dtype, interpret=interpret, config=config)


@functools.partial(jax.jit, static_argnames=("out_dtype", "interpret", "config"))
def w8a16_matmul_reference(x, w_q, s_w, bias=None, *, out_dtype=None, interpret=False, config=None):
  """Plain-jnp w8a16_matmul (float32 math)."""
  del interpret, config
  _check(x, w_q, s_w, bias)
  y = jax.lax.dot_general(x.astype(jnp.float32), w_q.astype(jnp.float32), _NT,
                          precision=jax.lax.Precision.HIGHEST)
  y = y * s_w[None, :]
  if bias is not None:
    y = y + bias.astype(jnp.float32)[None, :]
  return y.astype(out_dtype or x.dtype)
