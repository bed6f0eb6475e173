"""`python -m rlpost_rollout.router --port P`: the real sglang-router in front of the engines.

In a cluster (KUBERNETES_SERVICE_HOST set) it discovers the job's engine pods by label: the
rollout pods, or in mode colocated the worker pods (an engine container next to the trainer);
locally it routes to the comma-separated RLPOST_ENGINE_URLS. Policy from
spec.rollout.router.policy (`manual` = sticky sessions by the X-SMG-Routing-Key header).
The router keeps the process: this launcher execs it, so signals reach it directly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rlpost.logs import setup_logging
from rlpost_rollout import config

log = logging.getLogger("rlpost_rollout.router")

ENGINE_PORT = 30000  # the engines' SGLang port (service discovery needs it)


def engine_role(job) -> str:
    """The rlpost.dev/role of the pods that serve the engine port: `worker` in mode
    colocated (the operator puts an engine container in each worker pod), else `rollout`."""
    return "worker" if str(job.spec.mode) == "colocated" else "rollout"


def router_argv(
    job,
    port: int,
    *,
    in_cluster: bool,
    engine_urls: list[str],
    namespace: str | None = None,
    host: str = "0.0.0.0",
    engine_port: int = ENGINE_PORT,
    prometheus_port: int | None = None,
) -> list[str]:
    """The sglang_router.launch_router command line for this job (pure; unit-tested)."""
    argv = [
        sys.executable, "-m", "sglang_router.launch_router",
        "--host", host,
        "--port", str(port),
        "--policy", str(job.spec.rollout.router.policy),
        "--log-level", "warn",
    ]  # fmt: skip
    if in_cluster:
        name = job.metadata.name
        argv += [
            "--service-discovery",
            "--selector", f"app.kubernetes.io/instance={name}",
            f"rlpost.dev/role={engine_role(job)}",
            "--service-discovery-port", str(engine_port),
        ]  # fmt: skip
        if namespace:
            argv += ["--service-discovery-namespace", namespace]
    else:
        if not engine_urls:
            raise ValueError("no engines: set RLPOST_ENGINE_URLS (comma-separated base URLs)")
        argv += ["--worker-urls", *engine_urls]
    if prometheus_port:
        argv += ["--prometheus-port", str(prometheus_port)]
    return argv


def _namespace() -> str | None:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--config", default=None)
    parser.add_argument("--prometheus-port", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging("router")
    job = config.load_job(args.config)
    urls = [u.strip() for u in os.environ.get("RLPOST_ENGINE_URLS", "").split(",") if u.strip()]
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not urls
    try:
        cmd = router_argv(
            job,
            args.port,
            in_cluster=in_cluster,
            engine_urls=urls,
            namespace=_namespace(),
            host=args.host,
            prometheus_port=args.prometheus_port,
        )
    except ValueError as exc:
        sys.exit(f"router cannot start: {exc}")
    log.info("starting sglang-router", extra={"argv": cmd[1:]})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
