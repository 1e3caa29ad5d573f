"""Offline quantization algorithms (numpy): round-to-nearest int8, SmoothQuant, MixQ outlier sets,
calibration statistics, and `quantize_variables`, which applies a plan to float parameters."""
