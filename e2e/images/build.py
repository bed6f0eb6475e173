"""Build the three production images (operator, trainer, rollout) from their unchanged
Dockerfiles with buildah (daemonless, no registry), cache them by content and export each as
an OCI archive that a real node imports (`ctr -n k8s.io images import`).

The base image (a local stand-in for python:3.11-slim-bookworm) comes from base.sh.
Everything lives under cache_dir()/images: one archive per image, manifest.json, build logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.paths import REPO, cache_dir

HERE = Path(__file__).resolve().parent
BASE_SCRIPT = HERE / "base.sh"
BASE_TAGS = ("docker.io/library/python:3.11-slim-bookworm", "docker.io/library/python:3.11-slim")
KEY_LABEL = "rlpost.images.key"
# Files base.sh copies from the host: a change to them must rebuild the base image.
BASE_HOST_INPUTS = ("/etc/apt/sources.list.d/debian.sources", "/usr/local/share/ca-certificates")
# Layer compression of the exported archives (measured on 2 cores: see README "Images").
COMPRESSION = os.environ.get("RLPOST_IMAGE_COMPRESSION", "zstd")
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}

Progress = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Image:
    name: str  # operator | trainer | rollout
    dockerfile: str  # relative to the repository root (the build context)
    tag: str

    @property
    def path(self) -> Path:
        return REPO / self.dockerfile


def _chart_app_version() -> str:
    text = (REPO / "charts" / "rlpost" / "Chart.yaml").read_text()
    m = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', text, re.M)
    assert m, "charts/rlpost/Chart.yaml has no appVersion"
    return m.group(1)


def _api_default(model: str, field: str) -> str:
    from rlpost import api

    return getattr(api, model).model_fields[field].default


def images() -> dict[str, Image]:
    """The images under the names the chart (operator) and the job API (roles) default to."""
    rollout = _api_default("RolloutSpec", "image")
    assert rollout == _api_default("RouterSpec", "image"), "router and engines share one image"
    return {
        "operator": Image(
            "operator", "operator/Dockerfile", f"ghcr.io/rlpost/operator:{_chart_app_version()}"
        ),
        "trainer": Image(
            "trainer", "trainer_image/Dockerfile", _api_default("TrainerSpec", "image")
        ),
        "rollout": Image("rollout", "rollout_image/Dockerfile", rollout),
    }


# ---- content keys --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for p in sorted(path.rglob("*")):
        if p.is_file() and not SKIP_PARTS & set(p.parts) and p.suffix != ".pyc":
            yield p


def _tree_hash(paths: list[Path], base: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    for top in paths:
        assert top.exists(), f"missing build input {top}"
        for f in _files(top):
            rel = f.relative_to(base) if f.is_relative_to(base) else f
            h.update(f"{rel}\0{os.access(f, os.X_OK):d}\0{sha256_file(f)}\n".encode())
    return h


def copy_sources(dockerfile: Path) -> list[str]:
    """COPY/ADD sources from the build context (not --from=stage), in order."""
    out = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in re.findall(r"^\s*(?:COPY|ADD)\s+(.+)$", text, re.M | re.I):
        words = [w for w in line.split() if not w.startswith("--")]
        if any(w.startswith("--from") for w in line.split()):
            continue
        out += words[:-1]
    return out


def base_key() -> str:
    return _tree_hash([BASE_SCRIPT, *map(Path, BASE_HOST_INPUTS)], REPO).hexdigest()


def image_key(image: Image) -> str:
    """Over the Dockerfile, every file it COPYs and the base image's key."""
    inputs = [image.path, *(REPO / s for s in copy_sources(image.path))]
    if (REPO / ".dockerignore").exists():  # what the COPYs leave out
        inputs.append(REPO / ".dockerignore")
    h = _tree_hash(inputs, REPO)
    h.update(f"base={base_key()}\n".encode())
    return h.hexdigest()


# ---- buildah -------------------------------------------------------------------------------


def images_dir() -> Path:
    return cache_dir() / "images"


def manifest_path() -> Path:
    return images_dir() / "manifest.json"


def read_manifest() -> dict:
    try:
        return json.loads(manifest_path().read_text())
    except FileNotFoundError:
        return {"images": {}}


def _write_manifest(m: dict) -> None:
    tmp = manifest_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    tmp.replace(manifest_path())


def _run(cmd: list[str], log: Path | None = None, progress: Progress | None = None) -> str:
    """Run a command; with a log, stream its output there and STEP lines to progress."""
    if log is None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return proc.stdout
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if progress and re.match(r"^(STEP \d+/\d+|\[base )", line):
                progress("  " + line.rstrip()[:150])
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({rc}); log {log}:\n{tail}")
    return ""


def image_config(ref: str) -> dict | None:
    """The OCI config (Entrypoint, Cmd, User, Env, WorkingDir, Labels) of an image in
    buildah's storage, or None when there is no such image."""
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)["OCIv1"].get("config") or {}


def image_label(ref: str, label: str) -> str | None:
    return ((image_config(ref) or {}).get("Labels") or {}).get(label)


def check_tools() -> list[str]:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (buildah storage, debootstrap)")
    return missing


def ensure_base(progress: Progress = _log, force: bool = False) -> dict:
    """The base image in buildah's storage, rebuilt when base.sh (or the host CAs) changed."""
    key = base_key()
    m = read_manifest()
    if not force and all(image_label(t, KEY_LABEL) == key for t in BASE_TAGS):
        progress(f"base: cached ({BASE_TAGS[0]}, key {key[:12]})")
        return m.get("base", {"key": key})
    progress(f"base: building {', '.join(BASE_TAGS)} (debootstrap bookworm, key {key[:12]})")
    log = images_dir() / "logs" / "base.log"
    log.write_text("")
    t0 = time.monotonic()
    work = Path(os.environ.get("RLPOST_BASE_WORK", "/var/tmp/rlpost-base"))
    _run(["bash", str(BASE_SCRIPT), str(work), key, *BASE_TAGS], log=log, progress=progress)
    secs = round(time.monotonic() - t0, 1)
    progress(f"base: built in {secs:.0f} s")
    m = read_manifest()
    m["base"] = {"key": key, "tags": list(BASE_TAGS), "build_seconds": secs}
    _write_manifest(m)
    return m["base"]


def _archive_ok(entry: dict | None, key: str) -> bool:
    if not entry or entry.get("key") != key:
        return False
    p = Path(entry["archive"])
    return p.is_file() and p.stat().st_size == entry.get("size")


def build_image(image: Image, key: str, progress: Progress = _log) -> dict:
    """buildah bud --layers (never pulls) + export to an OCI archive; returns the manifest entry."""
    logs = images_dir() / "logs"
    log = logs / f"{image.name}.log"
    log.write_text("")
    progress(f"{image.name}: building {image.tag} from {image.dockerfile} (key {key[:12]})")
    t0 = time.monotonic()
    _run(
        ["buildah", "bud", "--layers", "--pull=never", "--network", "host",
         "--isolation", "oci", "-f", image.dockerfile, "-t", image.tag, "."],
        log=log,
        progress=progress,
    )  # fmt: skip
    build_s = round(time.monotonic() - t0, 1)
    progress(f"{image.name}: built in {build_s:.0f} s; exporting ({COMPRESSION})")
    archive = images_dir() / f"{image.name}-{key[:16]}.oci.tar"
    tmp = archive.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    push = ["buildah", "push", "--quiet"]
    push += (
        ["--disable-compression"]
        if COMPRESSION == "none"
        else ["--compression-format", COMPRESSION]
    )
    t1 = time.monotonic()
    _run([*push, image.tag, f"oci-archive:{tmp}:{image.tag}"], log=log)
    export_s = round(time.monotonic() - t1, 1)
    tmp.replace(archive)
    for stale in images_dir().glob(f"{image.name}-*.oci.tar"):
        if stale != archive:
            stale.unlink()
    entry = {
        "tag": image.tag,
        "archive": str(archive),
        "key": key,
        "dockerfile": image.dockerfile,
        "dockerfile_sha256": sha256_file(image.path),
        "size": archive.stat().st_size,
        "build_seconds": build_s,
        "export_seconds": export_s,
        "compression": COMPRESSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    size_gb = entry["size"] / 1e9
    progress(f"{image.name}: exported {archive.name} ({size_gb:.2f} GB) in {export_s:.0f} s")
    return entry


def prune_stale_layers() -> int:
    """Drop build-cache images no tagged image descends from (an earlier build's pip layer
    after its requirements changed): `buildah rmi --prune` removes untagged images without
    children, so repeat until nothing is left. Runs under the lock, between builds only."""
    removed = 0
    for _ in range(32):
        proc = subprocess.run(["buildah", "rmi", "--prune"], capture_output=True, text=True)
        ids = proc.stdout.split()
        removed += len(ids)
        if proc.returncode != 0 or not ids:
            break
    return removed


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One builder at a time (the machine has few cores; buildah storage is shared)."""
    (images_dir() / "logs").mkdir(parents=True, exist_ok=True)
    with open(images_dir() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_images(
    only: list[str] | None = None,
    progress: Progress = _log,
    force: bool = False,
    stale_ok: bool | None = None,
) -> dict[str, Path]:
    """Image name (operator|trainer|rollout) -> OCI archive, building what is missing/stale.

    stale_ok (default: $RLPOST_IMAGES_STALE_OK=1): an existing archive whose inputs changed
    since is used as it is (while developing in a tree that others edit); missing ones are
    still built.

    The archive's index names the image by its tag (org.opencontainers.image.ref.name), so
    `ctr -n k8s.io images import --base-name <repo> <archive>` or `--index-name` recovers it;
    `tags()` gives each image's tag."""
    wanted = images()
    if only:
        unknown = set(only) - set(wanted)
        assert not unknown, f"unknown images {sorted(unknown)}; known: {sorted(wanted)}"
        wanted = {n: wanted[n] for n in only}
    if stale_ok is None:
        stale_ok = os.environ.get("RLPOST_IMAGES_STALE_OK") == "1"
    out: dict[str, Path] = {}
    with _lock():
        for name, image in wanted.items():
            key = image_key(image)
            entry = read_manifest()["images"].get(name)
            if not force and _archive_ok(entry, key):
                progress(f"{name}: cached {Path(entry['archive']).name}")
                out[name] = Path(entry["archive"])
                continue
            if stale_ok and not force and entry and _archive_ok(entry, entry["key"]):
                progress(f"{name}: STALE (inputs changed since), using {entry['archive']}")
                out[name] = Path(entry["archive"])
                continue
            missing = check_tools()
            if missing:
                raise RuntimeError(f"cannot build images: missing {', '.join(missing)}")
            ensure_base(progress)
            entry = build_image(image, key, progress)
            if pruned := prune_stale_layers():
                progress(f"{name}: pruned {pruned} stale build-cache images")
            m = read_manifest()
            m["images"][name] = entry
            _write_manifest(m)
            out[name] = Path(entry["archive"])
    return out


def archive_digest(archive: Path) -> str:
    """The image manifest digest an archive holds (`sha256:...`): what `ctr images ls` shows
    as DIGEST after an import, so a node can tell a stale import from the current archive."""
    import tarfile

    with tarfile.open(archive) as tar:
        f = tar.extractfile("index.json")
        assert f is not None, f"{archive}: no index.json"
        (desc,) = json.load(f)["manifests"]
    return desc["digest"]


def tags() -> dict[str, str]:
    return {n: i.tag for n, i in images().items()}


def status() -> dict[str, dict]:
    """Per image: tag, key now, whether the cached archive is current."""
    m = read_manifest()["images"]
    out = {}
    for name, image in images().items():
        key = image_key(image)
        entry = m.get(name)
        out[name] = {
            "tag": image.tag,
            "key": key,
            "current": _archive_ok(entry, key),
            **(entry or {}),
        }
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use python -m e2e.images")
