"""Megatron-core support for the trainer: HF <-> Megatron parameter layouts (convert.py,
pure torch, importable without megatron) and model building (model.py, needs megatron-core)."""
