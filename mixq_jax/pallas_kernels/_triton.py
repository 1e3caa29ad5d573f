"""The one module that imports the (deprecated) Pallas Triton backend.

Kernels import `plgpu` and `compiler_params` from here, so a change of the backend's API between
jax releases (the params class is `CompilerParams` in jax 0.10/0.11, `TritonCompilerParams` in
some releases) is handled in one place.
"""

from jax.experimental.pallas import triton as plgpu

_PARAMS_CLS = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")


def compiler_params(*, num_warps: int, num_stages: int):
  """Explicit Triton compiler params; every pallas_call in this package passes them."""
  return _PARAMS_CLS(num_warps=num_warps, num_stages=num_stages)


__all__ = ["plgpu", "compiler_params"]
