"""mixq_jax: mixed-precision LLM quantization in JAX with Pallas kernels."""

__version__ = "0.1.0"
