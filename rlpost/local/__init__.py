"""`rlpost run`: one RLPostTrainJob on one machine, every role a local process."""
