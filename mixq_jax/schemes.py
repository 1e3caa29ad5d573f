"""Quantization schemes as data: a registry of named schemes.

Each scheme says what its weights and activations are; `convert` looks the name up here and calls
the scheme's `quantize` on the float parameter tree. The 16-bit schemes store dense weights; the
quantized schemes (w8a16, w8a8, llm_int8, mix8, w4a16, qqq, mix4, quik4, mxq) register here as their
kernels and offline algorithms land (see ../shared/DESIGN.md for each definition).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantScheme:
  name: str
  description: str
  w_bits: int  # 16 = dense bf16/fp32 weights
  a_bits: int
  needs_calibration: bool = False
  # (float params tree, model config) -> stored params tree
  quantize: Callable[[Any, Any], Any] = dataclasses.field(repr=False, compare=False)

  def metadata(self) -> dict[str, Any]:
    """What the checkpoint records in quant.json."""
    return {"scheme": self.name, "w_bits": self.w_bits, "a_bits": self.a_bits}


def _cast(dtype):
  return lambda params, cfg: jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)


SCHEMES: dict[str, QuantScheme] = {
    "bf16": QuantScheme(name="bf16", description="bfloat16 weights and activations (the baseline)",
                        w_bits=16, a_bits=16, quantize=_cast(jnp.bfloat16)),
    "fp32": QuantScheme(name="fp32", description="float32 weights (reference / parity checks)",
                        w_bits=32, a_bits=32, quantize=_cast(jnp.float32)),
}


def get_scheme(name: str) -> QuantScheme:
  try:
    return SCHEMES[name]
  except KeyError:
    raise ValueError(f"unknown scheme {name!r}; available: {', '.join(sorted(SCHEMES))}") from None
