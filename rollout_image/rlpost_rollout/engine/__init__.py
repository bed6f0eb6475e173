"""Reference rollout engine: SGLang's HTTP contract served by a torch model on CPU or GPU.

`python -m rlpost_rollout.engine --port P` (__main__.py) reads the job spec ($RLPOST_CONFIG),
builds the model and tokenizer with rlpost.models and generates with its *current* weights
(batched, KV cache). core.py holds the model and its state, routes.py the HTTP routes.
"""

from rlpost_rollout.engine.core import Engine
from rlpost_rollout.engine.routes import RLPOST_EXTENSIONS, create_app

__all__ = ["RLPOST_EXTENSIONS", "Engine", "create_app"]
