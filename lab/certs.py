"""The lab's certificates: one CA, and per host a server and a client certificate.

They serve two TLS users on every host:
- libvirt remote connections between hosts (``qemu+tls://``), server side via
  key_file/cert_file/ca_file in libvirtd.conf, client side via ``?pkipath=``
  (files cacert.pem, clientcert.pem, clientkey.pem);
- QEMU's migration stream (VIR_MIGRATE_TLS), from migrate_tls_x509_cert_dir
  (files ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
  client-key.pem).
The peer checks the server certificate's subjectAltName against the address it
dialled, so each host's certificates name its IP address and its host name.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferry.lab.layout import HostLayout, LabLayout

VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    cert_pem: bytes


def _new_key() -> rsa.RSAPrivateKey:
    # RSA: libvirt's GnuTLS checks ask for keyEncipherment, which fits RSA keys.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ferry lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(now: datetime.datetime) -> Issued:
    key = _new_key()
    name = _name("Ferry lab CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def issue(ca: Issued, name: str, address: str, role: str, now: datetime.datetime) -> Issued:
    """A leaf certificate for a host of this name and IP address; ``role`` is "server",
    "client", or "peer" (both: a nats-server's route certificate, presented when it
    accepts a route and when it dials one)."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = _new_key()
    usage = {
        "server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "peer": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    }[role]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address(address)), x509.DNSName(name)]
            ),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(layout: LabLayout, now: datetime.datetime | None = None) -> None:
    """Create the lab CA once, and each host's certificates when missing or stale.

    Stale means: issued by another CA or for another address (the lab folder
    was reused with a different address base).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca = _ensure_ca(layout.ca_dir, now)
    for host in layout.hosts:
        if not _host_pki_current(host, ca):
            _write_host_pki(host, ca, now)


def _ensure_ca(ca_dir: Path, now: datetime.datetime) -> Issued:
    key_file, cert_file = ca_dir / "ca-key.pem", ca_dir / "ca-cert.pem"
    if key_file.exists() and cert_file.exists():
        return Issued(key_file.read_bytes(), cert_file.read_bytes())
    ca = make_ca(now)
    ca_dir.mkdir(parents=True, exist_ok=True)
    _write(key_file, ca.key_pem, secret=True)
    _write(cert_file, ca.cert_pem)
    return ca


def _host_pki_current(host: HostLayout, ca: Issued) -> bool:
    try:
        cacert = (host.pki_dir / "cacert.pem").read_bytes()
        server = x509.load_pem_x509_certificate((host.pki_dir / "servercert.pem").read_bytes())
        needed = [host.qemu_tls_dir / n for n in ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")]
        needed += [host.pki_dir / n for n in ("serverkey.pem", "clientcert.pem", "clientkey.pem")]
    except (OSError, ValueError):
        return False
    if cacert != ca.cert_pem or not all(p.exists() for p in needed):
        return False
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ipaddress.IPv4Address(host.address) in sans.get_values_for_type(x509.IPAddress)


def _write_host_pki(host: HostLayout, ca: Issued, now: datetime.datetime) -> None:
    server = issue(ca, host.name, host.address, "server", now)
    client = issue(ca, host.name, host.address, "client", now)
    libvirt_files = {
        "cacert.pem": ca.cert_pem,
        "servercert.pem": server.cert_pem,
        "serverkey.pem": server.key_pem,
        "clientcert.pem": client.cert_pem,
        "clientkey.pem": client.key_pem,
    }
    qemu_files = {
        "ca-cert.pem": ca.cert_pem,
        "server-cert.pem": server.cert_pem,
        "server-key.pem": server.key_pem,
        "client-cert.pem": client.cert_pem,
        "client-key.pem": client.key_pem,
    }
    for folder, files in ((host.pki_dir, libvirt_files), (host.qemu_tls_dir, qemu_files)):
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            _write(folder / name, data, secret=name.endswith("key.pem"))


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600 if secret else 0o644)
    os.replace(tmp, path)
