"""Data buffer + rollout driver: the bridge between the engines and the trainer."""
