"""`python -m e2e.images build|base|status|keys` (what `make images` runs)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .build import base_key, ensure_base, ensure_images, images_dir, status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.images", description=__doc__)
    p.add_argument("command", choices=["build", "base", "status", "keys"])
    p.add_argument("--only", action="append", choices=["operator", "trainer", "rollout"])
    p.add_argument("--force", action="store_true", help="rebuild even when the key matches")
    a = p.parse_args(argv)
    if a.command == "build":
        t0 = time.monotonic()
        archives = ensure_images(only=a.only, force=a.force)
        for name, path in archives.items():
            print(f"{name}: {path}")
        print(f"[images] done in {time.monotonic() - t0:.0f} s ({images_dir()})")
    elif a.command == "base":
        images_dir().joinpath("logs").mkdir(parents=True, exist_ok=True)
        ensure_base(force=a.force)
    elif a.command == "keys":
        print(json.dumps({"base": base_key()} | {n: s["key"] for n, s in status().items()}))
    else:
        print(json.dumps(status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
