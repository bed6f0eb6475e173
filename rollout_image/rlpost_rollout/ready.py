"""`python -m rlpost_rollout.ready --port P`: readiness of an SGLang engine in a cluster.

SGLang's /health cannot wait for weights, so the operator gives SGLang engine pods this
exec readiness probe: ready (exit 0) once `GET /model_info` reports a weight version other
than UNSYNCED_VERSION, the one launch_sglang starts the engine at (RLPOST_WAIT_FOR_WEIGHTS=1):
only a push from the trainer changes it. The reference engine gates its own /health.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

UNSYNCED_VERSION = "-1"


def ready(model_info: dict) -> tuple[bool, str]:
    version = model_info.get("weight_version")
    if version is None:
        return False, "/model_info has no weight_version"
    if str(version) == UNSYNCED_VERSION:
        return False, "waiting for the first weights from the trainer"
    return True, f"weight version {version}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--timeout", type=float, default=4.0)
    args = p.parse_args(argv)
    try:
        url = f"http://127.0.0.1:{args.port}/model_info"
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            ok, why = ready(json.loads(r.read()))
    except (OSError, ValueError) as exc:
        ok, why = False, f"engine not answering: {exc}"
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
