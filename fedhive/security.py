"""TLS certificates and SuperNode keys for a local cluster, made with the ``cryptography`` package.

``fedhive up`` (and :class:`fedhive.localcluster.LocalCluster` with ``secure=True``) runs the SuperLink with TLS and
Flower's node authentication: :func:`make_tls` writes a CA and a server certificate for the SuperLink (its SAN covers
the addresses nodes use; the model store serves the same certificate), :func:`make_node_key` an ECDSA P-384 key pair
per node in OpenSSH form, as ``ssh-keygen -t ecdsa -b 384`` writes it and as ``flwr supernode register`` and
``flower-supernode --auth-supernode-private-key`` read it. Private keys are written mode 600 and the CA's private key
is kept out of the files a node needs (``ca.key`` is not written at all: the CA signs the one server certificate and
is thrown away, so nothing can be signed with it later).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["TlsFiles", "make_tls", "make_node_key"]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  #: the CA certificate: what nodes, ``flwr`` and the store's clients verify with
    cert: Path  #: the SuperLink's (and model store's) certificate
    key: Path  #: its private key (mode 600)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)
    return path


def _san(hosts: Iterable[str]):
    from cryptography import x509

    names: list = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        h = h.strip("[]")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_tls(directory: str | Path, hosts: Iterable[str] = (), days: int = 30) -> TlsFiles:
    """Write ``ca.crt``, ``server.pem`` and ``server.key`` to ``directory``; the server certificate is valid for
    ``localhost``, ``127.0.0.1`` and ``hosts`` (host names or IP addresses) for ``days`` days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedhive local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    return TlsFiles(
        ca=_write(d / "ca.crt", ca.public_bytes(pem)),
        cert=_write(d / "server.pem", cert.public_bytes(pem)),
        key=_write(d / "server.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()), private=True))


def make_node_key(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME`` (private, mode 600) and ``NAME.pub`` (OpenSSH ECDSA P-384) to ``directory``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = Path(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _write(d / name, private, private=True), _write(d / f"{name}.pub", public + b"\n")
