"""`python -m rlpost_operator` — run the operator.

python -m rlpost_operator --namespace team-a [--namespace team-b] [--metrics-port 8080]
python -m rlpost_operator --all-namespaces [--kubeconfig ~/.kube/config]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf
import orjson

from rlpost.logs import setup_logging

from . import metrics
from .controller import Controller
from .kube import Kube, load_config
from .watches import filter_watches, register

log = logging.getLogger("rlpost.operator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rlpost_operator", description=__doc__)
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--namespace", "-n", action="append", dest="namespaces", help="watch this namespace"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch cluster-wide")
    p.add_argument("--metrics-port", type=int, default=8080, help="0 disables /metrics")
    p.add_argument("--kubeconfig", default=None, help="default: in-cluster, then $KUBECONFIG")
    p.add_argument("--workers", type=int, default=8, help="jobs reconciled concurrently")
    return p.parse_args(argv)


def connection_info(cfg) -> kopf.ConnectionInfo:
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    scheme, token = None, None
    if auth:
        scheme, _, token = auth.partition(" ")
        if not token:
            scheme, token = "Bearer", auth
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


class NoDiffBase(kopf.DiffBaseStorage):
    """The operator registers raw event handlers only, which never read a diff-base: kopf
    would otherwise deep-copy every object on every event to build one (a tenth of the
    operator's CPU at scale, measured with py-spy)."""

    def build(self, *, body, extra_fields=None):  # noqa: ARG002
        return {}

    def fetch(self, *, body):  # noqa: ARG002
        return None

    def store(self, *, body, patch, essence):  # noqa: ARG002
        return None


def decode_watch_events_with_orjson() -> bool:
    """kopf decodes every watch event with the standard library's json: a quarter of the
    operator's CPU with 1000 jobs (py-spy, docs/benchmarks-operator.md). orjson decodes the
    same lines to the same objects in a fraction of it. kopf has no setting for its decoder:
    its watch module's `json` is replaced (kopf is pinned in operator/requirements.txt;
    tests/operator/test_op_watch_decoding.py fails if a kopf upgrade moves it). False, and
    the standard library stays, if it has moved."""
    try:
        from kopf._cogs.clients import api as kopf_api
    except ImportError:
        return False
    if not hasattr(kopf_api, "json"):
        return False
    kopf_api.json = _OrjsonDecoding
    return True


class _OrjsonDecoding:
    """What kopf's watch module uses of `json`: loads."""

    loads = staticmethod(orjson.loads)


def _fatal_if_failed(task: asyncio.Task) -> None:
    """The controller's loop never ends on its own: if it does (e.g. the startup LIST
    failed), say why and exit, so the Deployment restarts the operator instead of it idling."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.critical(
            "controller stopped", extra={"error": f"{type(exc).__name__}: {exc}"}, exc_info=exc
        )
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("operator")
    for noisy in ("kopf", "kubernetes", "urllib3", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = load_config(args.kubeconfig or os.environ.get("RLPOST_KUBECONFIG"))
    if not decode_watch_events_with_orjson():
        log.warning("kopf's watch decoder not found: watch events are decoded by json")
    kube = Kube(cfg)
    ctl = Controller(kube, None if args.all_namespaces else args.namespaces, args.workers)
    registry = kopf.OperatorRegistry()
    register(registry, ctl)

    @kopf.on.login(registry=registry)
    def login(**_):
        return connection_info(cfg)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_):
        # kopf must not write on its own: no posted events, no peering objects; raw event
        # handlers need neither progress annotations nor finalizers.
        settings.posting.enabled = False
        settings.peering.standalone = True
        settings.persistence.diffbase_storage = NoDiffBase()
        # With explicit namespaces there is nothing to discover: a tenant's operator may not
        # list cluster namespaces (least privilege), and kopf's scan would retry on 403s.
        settings.scanning.disabled = not args.all_namespaces
        settings.watching.server_timeout = 600
        settings.watching.client_timeout = 660
        filter_watches(settings)  # only the jobs' children travel
        task = asyncio.get_running_loop().create_task(ctl.run())
        task.add_done_callback(_fatal_if_failed)
        ctl.tasks.append(task)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_):
        ctl.shutdown()

    metrics.serve(args.metrics_port, ctl.cache.phases)
    log.info(
        "starting",
        extra={
            "namespaces": args.namespaces or "*",
            "metrics_port": args.metrics_port,
            "server": cfg.host,
        },
    )
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=bool(args.all_namespaces),
        namespaces=args.namespaces or (),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
