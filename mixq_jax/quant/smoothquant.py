"""SmoothQuant: migrate activation outliers into the weights with per-channel factors.

s_j = max|X_j|^α / max|W_j|^(1-α) (max over the site's tokens and over every layer reading the site);
x' = x / s, W' = W * s, so x' W'ᵀ = x Wᵀ. α = 0 is taken to mean "no smoothing" (s = 1), the plain
per-token / per-channel W8A8 reference point.
"""

from __future__ import annotations

import numpy as np


def smoothing_factors(act_absmax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
  """act_absmax [K], weights: [N_i, K] each -> s [K] float32 (>0)."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"smooth alpha={alpha} must be in [0, 1]")
  k = act_absmax.shape[0]
  if alpha == 0.0:
    return np.ones(k, np.float32)
  w_absmax = np.max([np.abs(np.asarray(w, np.float32)).max(axis=0) for w in weights], axis=0)
  a = np.maximum(np.asarray(act_absmax, np.float64), 1e-5)
  s = a ** alpha / np.maximum(w_absmax, 1e-5) ** (1.0 - alpha)
  return np.clip(s, 1e-5, None).astype(np.float32)
