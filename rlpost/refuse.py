"""A role that finds the spec unusable at start says why and exits with EX_CONFIG (78).

The message goes to stderr (the log) and to the container's termination message file
(`/dev/termination-log`, Kubernetes' default `terminationMessagePath`), which the operator
reads from the pod status and turns into the job's InvalidSpec condition (the operator's
`validation.INVALID_SPEC_EXIT_CODE`). `rlpost run` shows the role's last log lines.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

INVALID_SPEC_EXIT_CODE = 78
TERMINATION_LOG = "/dev/termination-log"


def refuse_spec(role: str, message: str) -> NoReturn:
    text = f"{role} cannot start: {message}"
    print(text, file=sys.stderr, flush=True)
    path = os.environ.get("RLPOST_TERMINATION_LOG", TERMINATION_LOG)
    try:
        with open(path, "w") as f:
            f.write(text[:4000])  # Kubernetes keeps at most 4096 bytes
    except OSError:
        pass  # not in a container (rlpost run): stderr is enough
    sys.exit(INVALID_SPEC_EXIT_CODE)
