"""The production images built locally with buildah (see build.py and `python -m e2e.images`)."""

from .build import (
    archive_digest,
    ensure_base,
    ensure_images,
    images,
    read_manifest,
    status,
    tags,
)

__all__ = [
    "archive_digest",
    "ensure_base",
    "ensure_images",
    "images",
    "read_manifest",
    "status",
    "tags",
]
