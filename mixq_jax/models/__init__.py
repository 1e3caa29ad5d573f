"""Flax decoders for Llama / Mistral / Qwen2 / Falcon and the HF weight mapping."""

from mixq_jax.models.common import init_cache
from mixq_jax.models.transformer import (Transformer, check_hf_tensors, expected_hf_tensors, init_params, init_variables,
                                         layer_paths,
                                         params_from_hf)

__all__ = ["Transformer", "init_cache", "init_params", "init_variables", "layer_paths", "params_from_hf", "expected_hf_tensors", "check_hf_tensors"]
