"""Round-to-nearest symmetric int8 per output channel."""

from __future__ import annotations

import numpy as np


def quantize_int8_per_channel(w: np.ndarray, ignore_cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """W [N, K] float -> (w_q int8 [N, K], s_w float32 [N]) with s_w = max_k |W[n, k]| / 127.

  ignore_cols [K] bool: columns kept elsewhere in 16-bit (MixQ calibration outliers); they do not
  set the scale and are stored as 0.
  """
  w = np.asarray(w, np.float32)
  wa = np.abs(w) if ignore_cols is None else np.where(ignore_cols[None, :], 0.0, np.abs(w))
  s = np.maximum(wa.max(axis=1), 1e-8) / 127.0
  q = np.clip(np.rint(w / s[:, None]), -127, 127).astype(np.int8)
  if ignore_cols is not None:
    q[:, ignore_cols] = 0
  return q, s.astype(np.float32)
