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


def rel_err(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  assert np.all(np.isfinite(a)), "non-finite output"
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
