"""`python -m rlpost_trainer`: the trainer role (same in the image and in `rlpost run`)."""

from __future__ import annotations

import logging
import os
import signal
import sys

from rlpost.logs import setup_logging


def main() -> int:
    setup_logging("trainer")
    from rlpost_trainer.ranks import Gang, needs_launch

    if needs_launch():
        # This pod's gang has more than one rank: start them (launch.py) and wait.
        from rlpost_trainer.launch import launch

        return launch(Gang.from_env())
    import torch

    torch.set_num_threads(int(os.environ.get("RLPOST_TORCH_THREADS", "1")))
    # SIGTERM (pod deletion, `rlpost run` stopping) ends the loop through the normal
    # exception path, so the weight-sync group is torn down and logs are flushed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from rlpost.models import ModelError, model_problems
    from rlpost.refuse import refuse_spec
    from rlpost_trainer.loop import Trainer, load_job

    log = logging.getLogger("rlpost_trainer")
    job = load_job()
    # spec.model cannot work (missing directory, unknown architecture, a family the backend
    # cannot convert): exit 78 with the reason, which the operator makes InvalidSpec.
    problems = model_problems(job.spec.model, device=None)  # master weights are fp32
    if problems:
        refuse_spec("trainer", "; ".join(problems))
    try:
        trainer = Trainer(job)
    except ModelError as exc:
        refuse_spec("trainer", str(exc))
    try:
        trainer.run()
    except Exception:
        log.exception("trainer failed")
        return 1
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
