"""A throwaway PKI for tests: one CA, server and client certificates, PEM files.

Everything is generated with the `cryptography` package, lives in a directory the
caller owns (usually a pytest tmp dir) and expires after a day. Keys *and*
certificates are written with mode 0600: nothing here should be readable by
other users of the machine, even for the short life of a test session.

    ca = make_ca(tmp)
    server = issue(ca, tmp, "registry", dns=["localhost"], ips=["127.0.0.1"])
    client = issue(ca, tmp, "node-a", client=True, cn="system:node:a", org="system:nodes")

Keys are EC P-256 (Go's TLS stack, distribution's JWT verifier and OpenSSL all
accept them, and they are fast to generate); a CA may have an RSA key instead
(`make_ca(rsa_bits=2048)`, as kubeadm issues its cluster CA).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPair", "PrivateKey", "issue", "make_ca", "write_private"]

#: Private key types this module generates (and that CertPair.load_key returns).
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: How far back not_before is set, so a peer with a slightly slow clock still
#: accepts a certificate made a moment ago.
_BACKDATE = dt.timedelta(minutes=5)
_VALIDITY = dt.timedelta(days=1)


@dataclass(frozen=True)
class CertPair:
    """Paths to a PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert: Path
    key: Path

    def load_cert(self) -> x509.Certificate:
        """Parse the certificate."""
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def load_key(self) -> PrivateKey:
        """Parse the private key (EC, or RSA for an RSA CA, as this module makes them)."""
        key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TypeError(f"{self.key}: expected an EC or RSA private key, "
                            f"got {type(key).__name__}")
        return key

    def cert_der(self) -> bytes:
        """The certificate, DER-encoded (as JWS `x5c` headers carry it, base64'd)."""
        return self.load_cert().public_bytes(serialization.Encoding.DER)


def write_private(path: Path, data: bytes) -> Path:
    """Write `data` to `path` with mode 0600, creating or truncating it.

    The file is created 0600 (no window where it is world-readable) and, if it
    already existed with another mode, chmod'ed back to 0600.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)
    return path


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_pair(
    directory: Path, name: str, cert: x509.Certificate, key: PrivateKey
) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = write_private(
        directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)
    )
    key_path = write_private(
        directory / f"{name}.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return CertPair(cert=cert_path, key=key_path)


def _validity() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - _BACKDATE, now + _VALIDITY


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures for every certificate; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def make_ca(directory: Path, name: str = "migrate-test-ca", *,
            rsa_bits: int | None = None) -> CertPair:
    """Create a self-signed CA; write `<name>.crt` and `<name>.key` into `directory`.

    The CA may only sign end-entity certificates (path length 0). ``rsa_bits``: an
    RSA key of that size instead of EC P-256.
    """
    key: PrivateKey = (_new_key() if rsa_bits is None else
                       rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "migrate tests"),
        ]
    )
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(directory, name, cert, key)


def issue(
    ca: CertPair,
    directory: Path,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    client: bool = False,
    server: bool | None = None,
    cn: str | None = None,
    org: str | None = None,
) -> CertPair:
    """Issue an end-entity certificate signed by `ca`; write `<name>.crt/.key` into `directory`.

    dns, ips: subject alternative names. A certificate with any SAN is a server
        certificate (extended key usage serverAuth) unless `server=False`.
    client: add extended key usage clientAuth (for mTLS clients, e.g. a kubelet
        or API-server client certificate); `cn` and `org` then typically carry the
        user name and group(s).
    server: force serverAuth on (True) or off (False); default: on iff SANs given.
    cn: subject common name (default: `name`).
    org: subject organization, omitted when None.

    A certificate with neither serverAuth nor clientAuth has no extended key usage
    at all: fine for signing (e.g. the token server's JWT signing certificate).
    """
    if server is None:
        server = bool(dns or ips)
    if server and not (dns or ips):
        raise ValueError("a server certificate needs at least one DNS name or IP address")

    ca_cert = ca.load_cert()
    ca_key = ca.load_key()
    key = _new_key()

    common_name = cn if cn is not None else name
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))

    not_before, not_after = _validity()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)

    cert = builder.sign(ca_key, hashes.SHA256())
    return _write_pair(directory, name, cert, key)
