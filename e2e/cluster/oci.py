"""Tiny OCI image archives built without a registry or an image builder.

The real node needs a sandbox ("pause") image and the node tests need a shell image, and
no registry is reachable here. Both are a single uncompressed layer written with
`tarfile`, packed as an OCI image layout tarball that `ctr images import` accepts:
- pause: a static binary compiled from the C below (sleeps until SIGTERM/SIGINT, reaps
  children like the upstream pause does);
- busybox: Debian's busybox-static binary plus one symlink per applet.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PAUSE_IMAGE = "rlpost.local/pause:1"
BUSYBOX_IMAGE = "rlpost.local/busybox:1"

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
"""

BUSYBOX = Path("/bin/busybox")


def _layer(files: dict[str, tuple[bytes, int]], symlinks: dict[str, str], dirs: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        for name, target in sorted(symlinks.items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def write_oci_archive(
    dest: Path,
    ref: str,
    layer: bytes,
    entrypoint: list[str],
    cmd: list[str] | None = None,
) -> Path:
    """An OCI image layout tarball (one layer) named `ref` for `ctr images import`."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_desc = blob(layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": cmd,
            "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w") as tar:
        entries = {
            "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
            "index.json": json.dumps(index).encode(),
            **{f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()},
        }
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest


def pause_archive(dest: Path) -> Path:
    """Compile the pause binary (static, stripped) and pack it as PAUSE_IMAGE."""
    if not shutil.which("gcc"):
        raise RuntimeError("gcc is needed to build the pause image (apt-get install gcc)")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "pause.c", Path(tmp) / "pause"
        src.write_text(PAUSE_C)
        subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-o", str(out), str(src)],
            check=True,
            capture_output=True,
        )
        layer = _layer({"pause": (out.read_bytes(), 0o755)}, {}, [])
    return write_oci_archive(dest, PAUSE_IMAGE, layer, ["/pause"])


def busybox_archive(dest: Path) -> Path:
    """Debian's busybox-static as BUSYBOX_IMAGE (`sh`, `wget`, `httpd`, `nslookup`, ...)."""
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} missing: apt-get install busybox-static")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    links = {f"bin/{a}": "busybox" for a in applets if a != "busybox"}
    layer = _layer(
        {"bin/busybox": (BUSYBOX.read_bytes(), 0o755)}, links, ["bin", "tmp", "etc", "www"]
    )
    return write_oci_archive(dest, BUSYBOX_IMAGE, layer, [], ["/bin/sh"])
