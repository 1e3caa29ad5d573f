"""Shared fixtures: locations of the real assets in ../shared and GPU detection."""

import os
import pathlib

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MIXQ_SHARED_DIR", ROOT.parent / "shared"))
# In CI a missing real asset is a failure, not a skip.
REQUIRE_ASSETS = os.environ.get("MIXQ_REQUIRE_ASSETS", os.environ.get("CI", "")) not in ("", "0", "false")

HAS_GPU = any(d.platform == "gpu" for d in jax.devices())


def asset(rel: str) -> pathlib.Path:
  """Path of a ../shared asset; skips (or fails in CI) when it is absent."""
  p = SHARED / rel
  if not p.exists():
    msg = f"missing shared asset {p}"
    if REQUIRE_ASSETS:
      pytest.fail(msg)
    pytest.skip(msg)
  return p


def pytest_collection_modifyitems(config, items):
  skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
  for item in items:
    if "gpu" in item.keywords and not HAS_GPU:
      item.add_marker(skip_gpu)


@pytest.fixture
def kernel_flag(monkeypatch):
  """set(module, name, value): sets a kernel module's A/B flag for one test. The jitted wrappers read
  the flags at trace time, so the jit caches are cleared too: a cached trace of the same shapes would
  silently keep the old value."""
  def set_flag(module, name, value):
    monkeypatch.setattr(module, name, value)
    jax.clear_caches()
  yield set_flag
  jax.clear_caches()  # before monkeypatch restores the flags
