"""Certificates for a loopback control plane, made with the openssl CLI.

One CA signs one serving certificate (SANs: 127.0.0.1, localhost, the in-cluster names,
10.89.0.1 where pods of the real node reach the API server) used by kube-apiserver, Kueue's
webhooks and kwok, and client certificates (the API server's, for the kubelet); a separate
RSA key pair signs service-account tokens.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SERVING_SANS = (
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
    "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1,IP:10.89.0.1"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-nodes", "-key", "ca.key", "-subj", "/CN=rlpost-local-ca",
        "-days", "3650", "-out", "ca.crt", cwd=d,
    )  # fmt: skip
    _openssl("genrsa", "-out", "serving.key", "2048", cwd=d)
    _openssl(
        "req", "-new", "-key", "serving.key", "-subj", "/CN=kube-apiserver", "-out",
        "serving.csr", cwd=d,
    )  # fmt: skip
    (d / "serving.ext").write_text(
        f"subjectAltName={SERVING_SANS}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "serving.crt", "-days", "3650", "-extfile", "serving.ext",
        cwd=d,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    # Kueue's certwatcher and webhook server want tls.crt / tls.key names.
    webhook = d / "webhook"
    webhook.mkdir(exist_ok=True)
    (webhook / "tls.crt").write_bytes((d / "serving.crt").read_bytes())
    (webhook / "tls.key").write_bytes((d / "serving.key").read_bytes())
    return {
        "ca": d / "ca.crt",
        "cert": d / "serving.crt",
        "key": d / "serving.key",
        "sa_key": d / "sa.key",
        "sa_pub": d / "sa.pub",
        "webhook_dir": webhook,
    }


def client_cert(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    """`<name>.crt`/`.key` in `d` for user `cn`, signed by the CA made by make_certs."""
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=d)
    _openssl(
        "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=d
    )
    (d / f"{name}.ext").write_text(
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip
    return d / f"{name}.crt", d / f"{name}.key"
