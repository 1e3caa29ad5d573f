"""Model import (HF safetensors directories, llama GGUF files, aliases) into HF-named numpy tensors."""

from mixq_jax.io.gguf import gguf_to_hf_name, llama_tensor_shapes, load_gguf, permute_qk, unpermute_qk
from mixq_jax.io.hf import load_hf_dir, read_hf_config
from mixq_jax.io.raw import RawModel
from mixq_jax.io.sources import ALIASES, load_source, load_tokenizer, resolve_source

__all__ = [
    "ALIASES",
    "RawModel",
    "gguf_to_hf_name",
    "llama_tensor_shapes",
    "load_gguf",
    "load_hf_dir",
    "load_source",
    "load_tokenizer",
    "permute_qk",
    "read_hf_config",
    "resolve_source",
    "unpermute_qk",
]
