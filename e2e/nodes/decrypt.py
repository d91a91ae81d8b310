"""A node's decryption of encrypted image layers, as CRI-O does it (containers/ocicrypt).

CRI-O decrypts with the private keys in its `decryption_keys_path` (crio.conf
`[crio.runtime]`, default `/etc/crio/keys`; a simulated node reads its
directory at each pull), handing them to containers/image, which, for a
layer whose media type ends in `+encrypted`:

1. opens the JWE in the descriptor's `org.opencontainers.image.enc.keys.jwe`
   annotation (comma-separated base64 JWEs; each tried with each key) to get
   the private options: `symkey`, `cipheroptions.nonce` and `digest`;
2. reads `org.opencontainers.image.enc.pubopts`: the cipher (only
   AES_256_CTR_HMAC_SHA256) and the HMAC;
3. streams the blob through AES-256-CTR, checking the HMAC-SHA256 of the
   ciphertext at the end, and checks the plain blob against `digest`.

Failures are worded as containers/image words them ("decrypting layer
sha256:...: missing private key needed for decryption", "... no suitable key
unwrapper found or none of the private keys could be used for decryption").
The cipher and the JWE come from `cryptography` and `jwcrypto`; the tool's own
encryption code is never used here (the test world does not import migrate).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as std_hmac
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from jwcrypto import jwe, jwk
from jwcrypto.common import JWException

__all__ = ["DEFAULT_KEYS_PATH", "ENCRYPTED", "DecryptError", "LayerDecryptor", "load_keys"]

#: CRI-O's default decryption_keys_path.
DEFAULT_KEYS_PATH = Path("/etc/crio/keys")
ENCRYPTED = "+encrypted"
KEYS_JWE = "org.opencontainers.image.enc.keys.jwe"
PUBOPTS = "org.opencontainers.image.enc.pubopts"
_MAX_KEY_FILE = 1024 * 1024


class DecryptError(Exception):
    """Why a layer could not be decrypted (containers/image's words)."""


def load_keys(directory: Path | None) -> list[jwk.JWK]:
    """The private keys in ``directory`` (PEM or DER PKCS#8/PKCS#1/SEC1, or a JWK); files
    that hold no private key are skipped, as a missing directory gives none."""
    if directory is None or not directory.is_dir():
        return []
    keys = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.stat().st_size > _MAX_KEY_FILE:
            continue
        key = _private_key(path.read_bytes())
        if key is not None:
            keys.append(key)
    return keys


def _private_key(data: bytes) -> jwk.JWK | None:
    if data.lstrip().startswith(b"{"):
        try:
            key = jwk.JWK.from_json(data)
        except (JWException, ValueError, TypeError):
            return None
        return key if key.has_private else None
    for load in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            return jwk.JWK.from_pyca(load(data, None))
        except (ValueError, TypeError):
            continue
    return None


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise DecryptError("could not base64 decode the annotation") from None


class LayerDecryptor:
    """One pass of decryption over an encrypted layer's blob."""

    def __init__(self, digest: str, annotations: dict[str, Any], keys: list[jwk.JWK]) -> None:
        where = f"decrypting layer {digest}"
        if not keys:
            raise DecryptError(f"{where}: missing private key needed for decryption")
        private = self._unwrap(str(annotations.get(KEYS_JWE) or ""), keys)
        if private is None:
            raise DecryptError(f"{where}: no suitable key unwrapper found or none of the "
                               "private keys could be used for decryption")
        public = json.loads(_b64(annotations.get(PUBOPTS) or "e30="))
        if public.get("cipher") != "AES_256_CTR_HMAC_SHA256":
            raise DecryptError(f"{where}: unsupported cipher type: {public.get('cipher')}")
        key = _b64(private["symkey"])
        nonce = _b64((private.get("cipheroptions") or {})["nonce"])
        if len(key) != 32:
            raise DecryptError(f"{where}: invalid key length of {len(key)} bytes; need 32 bytes")
        self.plain_digest = str(private.get("digest") or "")
        self._expected_mac = _b64(public.get("hmac") or "")
        self._ctr = Cipher(algorithms.AES(key), modes.CTR(nonce)).decryptor()
        self._mac = hmac.HMAC(key, hashes.SHA256())
        self._plain = hashlib.sha256()

    @staticmethod
    def _unwrap(annotation: str, keys: list[jwk.JWK]) -> dict[str, Any] | None:
        for part in filter(None, annotation.split(",")):
            token = _b64(part).decode("utf-8", "replace")
            for key in keys:
                try:
                    opened = jwe.JWE()
                    opened.deserialize(token, key=key)
                except (JWException, ValueError, TypeError, KeyError):
                    continue
                data: dict[str, Any] = json.loads(opened.payload)
                return data
        return None

    def update(self, chunk: bytes) -> bytes:
        """Decrypt a block of the blob."""
        self._mac.update(chunk)
        plain = self._ctr.update(chunk)
        self._plain.update(plain)
        return plain

    def finish(self) -> None:
        """Check the HMAC over the ciphertext and the plain blob's digest."""
        got = self._mac.finalize()
        if not std_hmac.compare_digest(got, self._expected_mac):
            raise DecryptError(f"could not properly decrypt byte stream; exp hmac: "
                               f"'{self._expected_mac.hex()}', actual hmac: '{got.hex()}'")
        plain = "sha256:" + self._plain.hexdigest()
        if self.plain_digest and plain != self.plain_digest:
            raise DecryptError(f"Digest did not match, expected {self.plain_digest}, got "
                               f"{plain}")
