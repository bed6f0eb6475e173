"""rlpost trainer role: pulls batches from the buffer, trains GRPO, pushes weights."""
