"""Argument checks and block-size helpers shared by the kernel wrappers."""

import jax.numpy as jnp


def next_pow2(n: int) -> int:
  return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pow2_divisor(n: int, cap: int) -> int:
  """Largest power of two that divides `n` and is <= `cap` (Triton tiles must be powers of 2)."""
  b = 1
  while b * 2 <= cap and n % (b * 2) == 0:
    b *= 2
  return b


def check_2d(name: str, a, dtypes) -> None:
  if a.ndim != 2:
    raise ValueError(f"{name} must be 2-D, got {name}.shape={a.shape}")
  if a.shape[0] == 0:  # a grid of zero programs would not run, and the error would not say why
    raise ValueError(f"{name}.shape={a.shape}: no rows (M = 0 tokens); call with at least one")
  if jnp.dtype(a.dtype) not in [jnp.dtype(d) for d in dtypes]:
    raise ValueError(f"{name}.dtype={a.dtype} not in {[str(jnp.dtype(d)) for d in dtypes]}")


def check_mult16(**dims: int) -> None:
  for k, v in dims.items():
    if v % 16 != 0 or v <= 0:
      raise ValueError(f"{k}={v} must be a positive multiple of 16")


def check_vec(name: str, a, n: int, dtype=None) -> None:
  if a.shape != (n,):
    raise ValueError(f"{name}.shape={a.shape}, expected ({n},)")
  if dtype is not None and jnp.dtype(a.dtype) != jnp.dtype(dtype):
    raise ValueError(f"{name}.dtype={a.dtype}, expected {jnp.dtype(dtype)}")
