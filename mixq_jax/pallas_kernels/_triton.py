"""The one module that imports the (deprecated) Pallas Triton backend.

Kernels import `plgpu` and `compiler_params` from here, so a change of the backend's API between
jax releases (the params class is `CompilerParams` in jax 0.10/0.11, `TritonCompilerParams` in
some releases) is handled in one place.

It also lets FP8 dots reach Hopper's FP8 tensor cores (`allow_fp8_wgmma`, applied at import).
JAX's Triton lowering emits every `tt.dot` with `maxNumImpreciseAcc` unset (0), and Triton uses
the Hopper wgmma instruction for an FP8 x FP8 -> f32 dot only when that attribute is >= 32. Below
that it converts the operands and uses Ampere-style mma.sync: `bench/inspect_kernels.py` shows
HMMA and a 2-5 KB register spill for mx_matmul's FP8 path as lowered by JAX, and QGMMA (FP8
wgmma) with no spill once the attribute is set. The setting here is the dot's own K, so the tensor
core accumulates at most one dot (mx_matmul: one 32-wide scale block) before the result is added
to the kernel's float32 accumulator, the promotion scheme of DeepGEMM-style FP8 GEMMs. Only dots
whose operands are both float8 are touched.
"""

from jax.experimental.pallas import triton as plgpu

_PARAMS_CLS = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")
_FP8_TYPES = ("f8E4M3FN", "f8E5M2")


def compiler_params(*, num_warps: int, num_stages: int):
  """Explicit Triton compiler params; every pallas_call in this package passes them."""
  return _PARAMS_CLS(num_warps=num_warps, num_stages=num_stages)


def allow_fp8_wgmma() -> bool:
  """Sets maxNumImpreciseAcc = K on the FP8 x FP8 dots that JAX's Triton lowering emits (see the
  module docstring). Returns False, changing nothing, where this jax's private lowering module
  does not look as expected; FP8 dots then keep the mma.sync path."""
  try:
    from jax._src.pallas.triton import lowering  # noqa: PLC0415 -- private, checked below
    from jax._src.lib.mlir import ir  # noqa: PLC0415

    dialect = lowering.tt_dialect
    original = dialect.dot
  except (ImportError, AttributeError):
    return False
  if getattr(original, "_mixq_fp8_wgmma", False):
    return True

  def dot(a, b, c, *args, max_num_imprecise_acc=None, **kwargs):
    if max_num_imprecise_acc is None:
      ta, tb = ir.RankedTensorType(a.type), ir.RankedTensorType(b.type)
      if str(ta.element_type) in _FP8_TYPES and str(tb.element_type) in _FP8_TYPES:
        max_num_imprecise_acc = max(32, ta.shape[-1])  # one dot's K; 32 is Triton's minimum for wgmma
    return original(a, b, c, *args, max_num_imprecise_acc=max_num_imprecise_acc, **kwargs)

  dot._mixq_fp8_wgmma = True
  dialect.dot = dot
  return True


FP8_WGMMA = allow_fp8_wgmma()

__all__ = ["plgpu", "compiler_params", "FP8_WGMMA"]
