"""The three production images, built with buildah from the unchanged Dockerfiles
(`make images`), run their entrypoints as the non-root uid 10001 the pods use."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from e2e.images.build import (
    check_tools,
    ensure_images,
    image_config,
    image_key,
    images,
    read_manifest,
    sha256_file,
)

# A cold build of the three takes about an hour here (`make test` runs `make images` first).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]
STALE_OK = os.environ.get("RLPOST_IMAGES_STALE_OK") == "1"

UID = 10001  # operator/rlpost_operator/constants.py IMAGE_UID: the pods' runAsUser
# Per image: (arguments after its ENTRYPOINT, exit code, text the output must contain).
# The trainer takes no arguments (its job comes from RLPOST_CONFIG): without a job file it
# must get as far as reading the config (torch and every module imported) and refuse.
RUNS = {
    "operator": [(["--help"], 0, "usage")],
    "trainer": [([], 1, "job config /etc/rlpost/job.yaml not found")],
    "rollout": [
        (["rlpost_rollout.engine", "--help"], 0, "usage"),
        (["rlpost_rollout.router", "--help"], 0, "usage"),
    ],
}
# A directory the image's user must be able to write (the role's state dir; the operator's HOME).
WRITABLE = {"operator": "/tmp", "trainer": "/var/lib/rlpost", "rollout": "/var/lib/rlpost"}


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    missing = check_tools()
    if missing and not all(e.get("archive") for e in read_manifest()["images"].values()):
        pytest.skip(f"cannot build images here: missing {missing}")
    return ensure_images()


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def containers(archives):
    """A working container of each image (from buildah's storage, else from its archive)."""
    made = {}
    try:
        for name, image in images().items():
            ref = image.tag if image_config(image.tag) else f"oci-archive:{archives[name]}"
            made[name] = buildah("from", "--pull=never", ref).stdout.strip().splitlines()[-1]
        yield made
    finally:
        for c in made.values():
            buildah("rm", c, check=False)


def container_config(container: str) -> dict:
    out = buildah("inspect", "--type", "container", container).stdout
    return json.loads(out)["OCIv1"]["config"]


def run(container: str, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess:
    args = ["run", "--network", "none"]
    if user:
        args += ["--user", user]
    return buildah(*args, container, "--", *cmd, check=False)


def test_built_from_the_unchanged_dockerfiles(archives):
    entries = read_manifest()["images"]
    for name, image in images().items():
        e = entries[name]
        assert e["dockerfile"] == image.dockerfile
        assert e["dockerfile_sha256"] == sha256_file(image.path), f"{name}: Dockerfile changed"
        assert STALE_OK or e["key"] == image_key(image), f"{name}: stale archive"
        assert Path(e["archive"]) == archives[name] and archives[name].stat().st_size == e["size"]


def test_archives_are_oci_layouts_named_by_tag(archives):
    for name, image in images().items():
        with tarfile.open(archives[name]) as tar:
            index = json.load(tar.extractfile("index.json"))
            assert json.load(tar.extractfile("oci-layout"))["imageLayoutVersion"]
        (desc,) = index["manifests"]
        assert desc["annotations"]["org.opencontainers.image.ref.name"] == image.tag


@pytest.mark.parametrize("name", sorted(RUNS))
def test_entrypoint_runs_as_non_root_uid(containers, name):
    c = containers[name]
    config = container_config(c)  # the image's config: USER 10001 (operator: 10001:10001)
    assert config["User"].split(":")[0] == str(UID), config["User"]
    # The image's own USER, as a pod without runAsUser would run it.
    ids = run(c, "sh", "-c", "id -u; id -g")
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.split() == [str(UID), str(UID)], ids.stdout
    # What the operator's pods set (runAsUser/runAsGroup 10001): the entrypoint starts.
    entrypoint = config["Entrypoint"]
    for args, rc, text in RUNS[name]:
        proc = run(c, *entrypoint, *args, user=f"{UID}:{UID}")
        out = proc.stdout + proc.stderr
        assert proc.returncode == rc, f"{name} {args}: {out[-3000:]}"
        assert text in (out.lower() if text == "usage" else out), f"{name}: {out[-3000:]}"
    d = WRITABLE[name]
    probe = run(c, "sh", "-c", f"touch {d}/.probe && rm {d}/.probe && id -u", user=f"{UID}:{UID}")
    assert probe.returncode == 0 and probe.stdout.strip() == str(UID), probe.stderr


def test_images_never_ship_bytecode_or_the_other_roles(containers):
    """The build context's .dockerignore drops __pycache__; each image has only its role."""
    others = {
        "operator": "rlpost_trainer",
        "trainer": "rlpost_rollout",
        "rollout": "rlpost_trainer",
    }
    for name, c in containers.items():
        root = "/app" if name == "operator" else "/opt/rlpost"
        proc = run(c, "sh", "-c", f"find {root} -name __pycache__ -o -name '{others[name]}'")
        assert proc.returncode == 0 and proc.stdout.strip() == "", f"{name}: {proc.stdout[:500]}"
