"""OCI image encryption (ocicrypt's format) for the checkpoint layer: recipients and cipher.

The format is the one containers/ocicrypt writes and CRI-O, containerd's
imgcrypt, Podman, buildah and skopeo read (docs/encryption.md has the sources):

- the blob (the layer as it would be pushed, compressed or not) is encrypted
  with AES-256-CTR under a fresh random 32-byte key and 16-byte nonce, and an
  HMAC-SHA256 (same key) is taken over the ciphertext;
- the key, the nonce and the plain blob's digest ("private options") are
  sealed in one JWE (A256GCM content encryption; the content key wrapped for
  each recipient with RSA-OAEP, or ECDH-ES+A256KW for an EC key), in the layer
  descriptor's ``org.opencontainers.image.enc.keys.jwe`` annotation;
- the cipher's name and the HMAC ("public options") are in
  ``org.opencontainers.image.enc.pubopts``;
- the media type gets ``+encrypted``.

Key files are read into memory once and never copied, logged or echoed:
errors name the file and what is wrong with it, never its content. The JWE
comes from ``jwcrypto`` and the cipher from ``cryptography`` (OpenSSL).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from jwcrypto import jwe, jwk

from migrate.errors import InputError, NotFoundError, UsageError

ENCRYPTED_SUFFIX = "+encrypted"
KEYS_JWE = "org.opencontainers.image.enc.keys.jwe"
PUBOPTS = "org.opencontainers.image.enc.pubopts"
CIPHER = "AES_256_CTR_HMAC_SHA256"  # ocicrypt's only layer cipher
CONTENT_ENCRYPTION = "A256GCM"  # what ocicrypt's JWE key wrapper uses
SCHEMES = ("jwe",)
MAX_KEY_FILE_BYTES = 1024 * 1024  # a PEM key is a few KiB; anything bigger is not one
MIN_RSA_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)  # what go-jose's ECDH-ES accepts
KEY_HINT = ("give the recipient's public key as PEM or DER (SubjectPublicKeyInfo) or a "
            "JWK: RSA of 2048 bits or more, or EC P-256, P-384 or P-521")
JWK_USE_HINT = ('give the recipient\'s encryption key: a JWK with "use": "enc" (or no "use") '
                'and, if it has "key_ops", "wrapKey" among them')
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


@dataclass(frozen=True)
class Recipient:
    """One ``--encrypt-for jwe:FILE``: a public key the layer key is wrapped for."""

    spec: str  # as given, e.g. "jwe:/etc/migrate/node-b.pub"
    path: Path
    algorithm: str  # the JWE key management algorithm: RSA-OAEP or ECDH-ES+A256KW
    key: jwk.JWK = field(repr=False, compare=False)


def parse_recipient(spec: str) -> Recipient:
    """``SCHEME:FILE`` -> the recipient; the file is read here, once.

    Raises UsageError (no scheme, or one other than jwe), NotFoundError (no
    such file) or InputError (a file that is not a usable public key).
    """
    scheme, sep, name = spec.partition(":")
    if not sep or not name:
        raise UsageError(f"--encrypt-for {spec!r}: expected SCHEME:FILE",
                         hint="use --encrypt-for jwe:PUBLIC_KEY_FILE")
    if scheme not in SCHEMES:
        raise UsageError(f"--encrypt-for: unknown encryption scheme {scheme!r}",
                         hint="only jwe:PUBLIC_KEY_FILE is supported (not pgp or pkcs7)")
    path = Path(name)
    algorithm, key = _public_jwk(path, _read_key_file(path))
    return Recipient(spec, path, algorithm, key)


def parse_recipients(specs: Iterable[str]) -> tuple[Recipient, ...]:
    """Every ``--encrypt-for``, in order; the first bad one raises."""
    return tuple(parse_recipient(s) for s in specs)


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as e:
        raise NotFoundError(f"{path}: no such key file",
                            hint="give the recipient's public key file: --encrypt-for "
                            "jwe:PUBLIC_KEY_FILE") from e
    except OSError as e:
        what = "a directory, not a key file" if e.errno == errno.EISDIR else e.strerror
        raise InputError(f"{path}: cannot read the key file: {what}", hint=KEY_HINT) from e
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InputError(f"{path}: too big for a key file (over {MAX_KEY_FILE_BYTES} bytes)",
                         hint=KEY_HINT)
    return data


def _public_jwk(path: Path, data: bytes) -> tuple[str, jwk.JWK]:
    """The key as a JWK with its JWE algorithm; refuses private keys and other key types."""
    if data.lstrip().startswith(b"{"):
        return _from_jwk(path, data)
    label = _PEM_LABEL.search(data)
    if label is not None and b"PRIVATE KEY" in label.group(1):
        raise InputError(f"{path}: is a private key; --encrypt-for takes the recipient's "
                         "public key",
                         hint="keep the private key on the node; give its public half: "
                         f"openssl pkey -in {path} -pubout -out {path.with_suffix('.pub')}")
    if label is not None and label.group(1) == b"CERTIFICATE":
        raise InputError(f"{path}: is a certificate; --encrypt-for jwe: takes a public key",
                         hint=f"extract it: openssl x509 -in {path} -pubkey -noout "
                         f"> {path.with_suffix('.pub')}")
    try:
        loaded = (serialization.load_pem_public_key(data) if label is not None
                  else serialization.load_der_public_key(data))
    except (ValueError, UnsupportedAlgorithm) as e:
        raise InputError(f"{path}: not a PEM or DER public key", hint=KEY_HINT) from e
    if isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return _algorithm(path, loaded), jwk.JWK.from_pyca(loaded)
    raise InputError(f"{path}: {_kind(loaded)} keys cannot be JWE recipients (ocicrypt "
                     "wraps layer keys with RSA-OAEP or ECDH-ES+A256KW)", hint=KEY_HINT)


def _from_jwk(path: Path, data: bytes) -> tuple[str, jwk.JWK]:
    try:
        key = jwk.JWK.from_json(data)
    except Exception as e:  # jwcrypto raises several types, all meaning "not a JWK"
        raise InputError(f"{path}: not a JSON Web Key", hint=KEY_HINT) from e
    if key.has_private:
        raise InputError(f"{path}: is a private JWK; --encrypt-for takes the recipient's "
                         "public key", hint="export the public half (drop d, p, q, dp, dq, qi)")
    if key.get("kty") not in ("RSA", "EC"):
        raise InputError(f"{path}: a JWK of type {key.get('kty')} cannot be a JWE recipient "
                         "(ocicrypt wraps layer keys with RSA-OAEP or ECDH-ES+A256KW)",
                         hint=KEY_HINT)
    try:  # what jwcrypto checks again when it wraps the layer key for this recipient
        pub = key.get_op_key("wrapKey")
    except jwk.InvalidJWKUsage as e:
        raise InputError(f'{path}: the JWK\'s "use" is not "enc": not an encryption key',
                         hint=JWK_USE_HINT) from e
    except jwk.InvalidJWKOperation as e:
        raise InputError(f'{path}: the JWK\'s "key_ops" lack "wrapKey": it may not wrap '
                         "a layer key", hint=JWK_USE_HINT) from e
    assert isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return _algorithm(path, pub), key


def _algorithm(path: Path, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """ocicrypt's choice: RSA-OAEP for RSA, ECDH-ES+A256KW for EC (keywrapper_jwe.go)."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InputError(f"{path}: an RSA key of {key.key_size} bits is too weak",
                             hint=f"use an RSA key of {MIN_RSA_BITS} bits or more, or EC P-256")
        return "RSA-OAEP"
    if not isinstance(key.curve, EC_CURVES):
        raise InputError(f"{path}: EC curve {key.curve.name} cannot be a JWE recipient",
                         hint="use EC P-256, P-384 or P-521, or RSA")
    return "ECDH-ES+A256KW"


def _kind(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PublicKey", "") or "this"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class LayerCipher:
    """AES-256-CTR and HMAC-SHA256 over one pass of the blob, under a fresh key.

    ``update`` returns the ciphertext in a buffer reused by the next call (the
    stream's consumer sends a block before asking for the next); ``finish``
    returns the descriptor annotations.
    """

    def __init__(self, recipients: Sequence[Recipient], chunk_bytes: int) -> None:
        self._recipients = recipients
        self._key, self._nonce = os.urandom(32), os.urandom(16)
        self._ctr = Cipher(algorithms.AES(self._key), modes.CTR(self._nonce)).encryptor()
        self._mac = hmac.HMAC(self._key, hashes.SHA256())
        self._buf = bytearray(chunk_bytes + 15)  # update_into wants room for a block more

    def update(self, data: bytes | memoryview) -> memoryview:
        """Encrypt one block; MACs the ciphertext (encrypt-then-MAC, as ocicrypt does)."""
        if len(self._buf) < len(data) + 15:
            self._buf = bytearray(len(data) + 15)
        n = self._ctr.update_into(data, self._buf)
        out = memoryview(self._buf)[:n]
        self._mac.update(out)
        return out

    def finish(self, plain_digest: str) -> dict[str, str]:
        """The layer descriptor's annotations; ``plain_digest``: of the blob before
        encryption, which a decrypting client checks what it decrypted against."""
        tail = self._ctr.finalize()  # CTR is a stream cipher: nothing is held back
        assert not tail
        private = json.dumps({"symkey": _b64(self._key), "digest": plain_digest,
                              "cipheroptions": {"nonce": _b64(self._nonce)}}).encode()
        public = json.dumps({"cipher": CIPHER, "hmac": _b64(self._mac.finalize()),
                             "cipheroptions": {}}).encode()
        return {KEYS_JWE: _b64(_seal(private, self._recipients).encode()),
                PUBOPTS: _b64(public)}


def _seal(plaintext: bytes, recipients: Sequence[Recipient]) -> str:
    """One JWE for all recipients (JSON serialization), as go-jose's multi-encrypter makes."""
    token = jwe.JWE(plaintext, protected=json.dumps({"enc": CONTENT_ENCRYPTION}))
    for r in recipients:
        token.add_recipient(r.key, header=json.dumps({"alg": r.algorithm}))
    out: str = token.serialize(compact=False)
    return out


@dataclass(frozen=True)
class LayerEncryption:
    """The recipients of a layer; ``start`` gives one pass its own key and nonce.

    A retried upload reads the archive again: it gets a new key, so no
    keystream is ever used for two different passes.
    """

    recipients: tuple[Recipient, ...]
    chunk_bytes: int = 1024 * 1024

    def start(self) -> LayerCipher:
        """A cipher for one pass over the blob."""
        if not self.recipients:
            raise UsageError("encryption needs at least one recipient",
                             hint="--encrypt-for jwe:PUBLIC_KEY_FILE")
        return LayerCipher(self.recipients, self.chunk_bytes)
