"""Mosaic GPU interpret mode (CPU) with wgmma operands given through `plgpu.transpose_ref`.

jax's GPU interpreter reads wgmma operands as plain index ranges and multiplies them as stored;
it fails on a transposed reference (int8 wgmma needs both operands K-major, so the int8 kernels
pass their [N, K] weight tile transposed). `patch()` replaces its wgmma callback with the same
steps (read A, B and the accumulator, add A @ B, store) where a trailing TransposeTransform is
taken off the operand's transforms and applied to the values read, and where an operand comes from
registers (its value, not an allocation key; jax's callback reads every operand from memory). Tests only.
"""

import jax
import numpy as np
from jax._src.pallas.mosaic.interpret import utils as interpret_utils
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as gc
from jax._src.state.types import TransposeTransform


def _split(transforms):
  transforms = tuple(transforms)
  if transforms and isinstance(transforms[-1], TransposeTransform):
    return transforms[:-1], transforms[-1].permutation
  return transforms, None


def _wgmma(*, token, device_id, grid_point_coords, thread_id, acc_allocation_key_as_array, acc_transforms,
           acc_dtype, a_allocation_key_as_array, a_transforms, b_allocation_key_as_array, b_transforms,
           source_info=None):
  device_id = int(device_id)
  thread_id = int(thread_id)
  coords = tuple(int(x) for x in grid_point_coords)
  mem = gc._get_shared_memory()
  gtid = mem.get_global_thread_id(device_id, thread_id)
  log = interpret_utils.GPULoggingInfo(device_id=device_id, grid_point_coords=coords, thread_id=thread_id,
                                       source_info=source_info)

  def read(key_arr, transforms):
    if np.ndim(key_arr) == 2:  # an operand from registers (w4a16_matmul_hopper's A) is passed as its value
      return np.asarray(key_arr)
    tr, perm = _split(gc._remove_noop_transforms(transforms))
    val, _, _ = mem.get_buffer_content(gc.HostAllocationKey.from_array(key_arr),
                                       interpret_utils.to_range(jax.tree.map(int, tr)), gtid, logging_info=log)
    return np.transpose(val, perm) if perm is not None else val

  a = read(a_allocation_key_as_array, a_transforms)
  b = read(b_allocation_key_as_array, b_transforms)
  acc_key = gc.HostAllocationKey.from_array(acc_allocation_key_as_array)
  acc_range = interpret_utils.to_range(jax.tree.map(int, gc._remove_noop_transforms(acc_transforms)))
  acc, _, _ = mem.get_buffer_content(acc_key, acc_range, gtid, logging_info=log)
  mem.store_buffer_content(acc_key, acc_range, acc + np.matmul(a, b, dtype=acc_dtype), gtid, logging_info=log)
  return token


def patch():
  gc.wgmma = _wgmma
