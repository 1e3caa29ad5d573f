import pytest

from mixq_jax.pallas_kernels import KernelConfig, select_config
from mixq_jax.pallas_kernels import _w4_common, configs, tuned_table


def test_m_bucket():
  assert [configs.m_bucket(m) for m in (1, 16, 17, 300, 4096, 9000)] == [16, 16, 32, 512, 4096, 4096]


def test_table_entries_are_valid():
  for key, entry in tuned_table.TABLE.items():
    kernel, _, mb, _, _ = key.split("|")
    assert kernel in configs.KERNELS + _w4_common.KERNELS4 and int(mb) >= 16
    KernelConfig(**entry)


# Bytes per activation element the 4-bit kernels stream through shared memory (mx: fp16 after its pass).
_X_BYTES = {"w4a16": 2, "mx": 2, "w4a8": 1, "w4a8g": 1, "w4a4o16": 0.5}


@pytest.mark.parametrize("kernel", _w4_common.KERNELS4)
def test_w4_configs_fit_hopper_shared_memory(kernel):
  """The pipelined x and packed-weight tiles of every 4-bit default and table entry fit the 227 KB an
  H100 / H200 block may use (w4a16's M = 64 default once asked 233472 B and failed to launch)."""
  cfgs = [(mb, _w4_common.default_config(kernel, mb)) for mb in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)]
  cfgs += [(int(key.split("|")[2]), KernelConfig(**e)) for key, e in tuned_table.TABLE.items()
           if key.split("|")[0] == kernel and key.split("|")[1] in ("h100", "h200")]
  for mb, c in cfgs:
    bm = min(c.block_m, mb)
    per_stage = bm * c.block_k * _X_BYTES[kernel] + c.block_n * c.block_k // 2
    assert c.num_stages * per_stage <= 232448, (mb, c)


def test_w4_select_takes_the_tuned_entry_then_the_bucket_default(monkeypatch):
  tuned = {"block_m": 16, "block_n": 64, "block_k": 256, "num_warps": 4, "num_stages": 4, "split_k": 8}
  bucket = {"block_m": 16, "block_n": 32, "block_k": 512, "num_warps": 4, "num_stages": 4, "split_k": 2}
  gpu = configs.gpu_name()
  monkeypatch.setattr(tuned_table, "TABLE", {f"w4a16|{gpu}|16|4096|4096": tuned, f"w4a16|{gpu}|16|*|*": bucket})
  monkeypatch.setattr(configs, "sm_count", lambda: None)  # as in interpret mode: no spreading (tested below)
  assert _w4_common.select_config("w4a16", 1, 4096, 4096) == KernelConfig(**tuned)
  assert _w4_common.select_config("w4a16", 16, 8192, 8192) == KernelConfig(**bucket)
  assert _w4_common.select_config("w4a8", 16, 4096, 4096) == _w4_common.default_config("w4a8", 16)


def test_select_falls_back_to_default():
  assert select_config("w8a8", 4096, 4096, 4096, gpu="nogpu") == configs.default_config("w8a8", 4096)
  with pytest.raises(ValueError, match="kernel="):
    select_config("w4a4", 1, 16, 16)
  with pytest.raises(ValueError, match="block_n=48"):
    KernelConfig(block_n=48)


def test_quantize_act_takes_the_nearest_tuned_bucket(monkeypatch):
  a = {"block_m": 1, "block_k": 2048, "num_warps": 8, "num_stages": 1, "passes": 2}
  b = {"block_m": 2, "block_k": 1024, "num_warps": 4, "num_stages": 1, "passes": 1}
  monkeypatch.setattr(tuned_table, "TABLE", {"quantize_act|gx|1024|0|11008": a,
                                             "quantize_act|gx|4096|0|11008": b,
                                             "w8a8|gx|1024|4096|11008": {"block_m": 128}})
  pick = lambda kernel, m, n=0: select_config(kernel, m, n, 11008, gpu="gx")
  assert pick("quantize_act", 1024) == KernelConfig(**a)
  assert pick("quantize_act", 2048) == KernelConfig(**b)  # tie between 1024 and 4096: the larger
  assert pick("quantize_act", 512) == KernelConfig(**a)
  assert pick("quantize_act", 9000) == KernelConfig(**b)
  assert pick("quantize_act", 1024 + 1, n=0) == KernelConfig(**b)  # bucket 2048 again
  assert select_config("quantize_act", 2048, 0, 4096, gpu="gx") == configs.default_config("quantize_act", 2048)
  # GEMM tiles depend on M: an untuned bucket keeps the hand default
  assert pick("w8a8", 2048, n=4096) == configs.default_config("w8a8", 2048)


def test_spread_split_k_fills_the_sms_on_narrow_layers():
  cfg = KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=4, split_k=2)
  spread = lambda n, k, sms=132, c=cfg, **kw: (lambda r: (r.block_k, r.split_k))(configs.spread_split_k(c, n, k, sms, **kw))
  assert spread(1024, 8192) == (256, 8)   # 32 tiles: 64 -> 256 programs (>= 1.8 x 132)
  assert spread(1024, 8192, sms=66) == (256, 4)
  assert spread(1024, 4096) == (256, 8)   # 16 steps: 8 slices of two steps
  assert spread(1024, 2048) == (256, 4)   # 8 steps: at most 4 slices of two steps each...
  assert spread(1024, 2048, min_block_k=128) == (128, 8)  # ...unless block_k may halve
  assert spread(512, 3584, min_block_k=128) == (128, 4)   # 14 steps: halve first; 28 = 4 x 7
  assert spread(576, 576, min_block_k=128) == (256, 2)    # 576 = 4.5 x 128: nothing to halve or split
  assert spread(4096, 4096) == (256, 2)   # 128 tiles x 2 already cover the SMs
  assert spread(1024, 8192, sms=None) == (256, 2)  # no GPU (interpret mode): unchanged
  wide = KernelConfig(block_m=64, block_n=32, block_k=256, split_k=1)
  assert configs.spread_split_k(wide, 1024, 8192, 132) == wide  # not a decode config


def test_select_spreads_only_configs_not_tuned_on_the_shape(monkeypatch):
  tuned = {"block_m": 16, "block_n": 64, "block_k": 256, "num_warps": 4, "num_stages": 4, "split_k": 4}
  bucket = {"block_m": 16, "block_n": 32, "block_k": 256, "num_warps": 4, "num_stages": 4, "split_k": 2}
  table = {f"{kern}|gx|16|{nk}": entry for kern in ("w8a16", "w4a8") for nk, entry in
           (("1024|8192", tuned), ("*|*", bucket))}
  table = {key.replace("1024|8192", "1024|16384"): v for key, v in table.items()}
  monkeypatch.setattr(tuned_table, "TABLE", table)
  monkeypatch.setattr(configs, "sm_count", lambda: 132)
  monkeypatch.setattr(_w4_common, "gpu_name", lambda: "gx")
  for select in (lambda *a: select_config(*a, gpu="gx"), _w4_common.select_config):
    kern = "w8a16" if select is not _w4_common.select_config else "w4a8"
    assert select(kern, 16, 1024, 16384) == KernelConfig(**tuned)  # tuned here: 64 programs kept
    assert select(kern, 1, 1024, 8192).split_k == 8  # bucket default, 32 tiles x 2 -> x 8
    assert select(kern, 16, 4096, 4096).split_k == 2
    monkeypatch.setattr(configs, "SPREAD_SPLIT_K", False)
    assert select(kern, 1, 1024, 8192).split_k == 2
    monkeypatch.setattr(configs, "SPREAD_SPLIT_K", True)
  assert select_config("w8a8", 16, 1024, 4096, gpu="gx") == configs.default_config("w8a8", 16)  # no split-K
