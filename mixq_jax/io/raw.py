"""RawModel: what every importer returns before the model code maps it to Flax params."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RawModel:
  """A checkpoint as HF would hold it.

  hf_config: the contents of a HF config.json (model_type, hidden_size, ...).
  tensors: HF tensor names ("model.layers.0.self_attn.q_proj.weight") to arrays in HF layout
    ([out, in] for linear weights). A tied lm_head is absent, as in HF checkpoints.
  source: the resolved file or directory it came from.
  """

  hf_config: dict
  tensors: dict[str, np.ndarray]
  source: str

  def __repr__(self) -> str:
    n = sum(t.size for t in self.tensors.values())
    return (
      f"RawModel(model_type={self.hf_config.get('model_type')!r}, "
      f"tensors={len(self.tensors)}, params={n:,}, source={self.source!r})"
    )
