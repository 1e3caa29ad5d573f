import pytest

from mixq_jax.pallas_kernels import KernelConfig, select_config
from mixq_jax.pallas_kernels import configs, tuned_table


def test_m_bucket():
  assert [configs.m_bucket(m) for m in (1, 16, 17, 300, 4096, 9000)] == [16, 16, 32, 512, 4096, 4096]


def test_table_entries_are_valid():
  for key, entry in tuned_table.TABLE.items():
    kernel, _, mb, _, _ = key.split("|")
    assert kernel in configs.KERNELS and int(mb) >= 16
    KernelConfig(**entry)


def test_select_falls_back_to_default():
  assert select_config("w8a8", 4096, 4096, 4096, gpu="nogpu") == configs.default_config("w8a8", 4096)
  with pytest.raises(ValueError, match="kernel="):
    select_config("w4a4", 1, 16, 16)
  with pytest.raises(ValueError, match="block_n=48"):
    KernelConfig(block_n=48)
