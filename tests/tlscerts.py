"""Test-only PKI made at test time with the ``openssl`` CLI: two CAs, a server and client certificates.

Nothing here is committed: every key lives in a pytest temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    """Paths of PEM files: ``ca``/``other_ca`` certs, server and client cert/key pairs."""

    ca: Path
    server_cert: Path
    server_key: Path
    #: Client of ``ca`` with CN = "n1".
    client_cert: Path
    client_key: Path
    #: Client of ``ca`` with CN = "n2".
    client2_cert: Path
    client2_key: Path
    other_ca: Path
    #: Client of ``other_ca`` with CN = "n1".
    foreign_cert: Path
    foreign_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}-key.pem", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return cert, key


def _leaf(folder: Path, name: str, cn: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}-key.pem", folder / f"{name}.csr", folder / f"{name}.pem"
    extfile = folder / f"{name}.ext"
    extfile.write_text(ext)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=folder)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile), cwd=folder)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Generate the whole PKI into ``folder`` (about 0.2 s)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    client_ext = "extendedKeyUsage=clientAuth\n"
    server = _leaf(folder, "server", "collector", ca, server_ext)
    client = _leaf(folder, "client", "n1", ca, client_ext)
    client2 = _leaf(folder, "client2", "n2", ca, client_ext)
    foreign = _leaf(folder, "foreign", "n1", other, client_ext)
    return Pki(ca[0], server[0], server[1], client[0], client[1], client2[0], client2[1],
               other[0], foreign[0], foreign[1])
