"""Rollout role: reference engine, SGLang and sglang-router launchers, data buffer + driver."""
