"""`migrate build --encrypt-for`: encrypted checkpoint images in ocicrypt's format.

Checked against independent implementations: Debian's skopeo (containers/image
with ocicrypt 1.0.3) decrypts what the native builder pushed, and the
decrypted layer equals the archive byte for byte; buildah pulls it with the
key, and fails without it or with another one. The hostile-input tests need
neither: every bad key is refused before any work.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from jwcrypto import jwe, jwk

from e2e.nodes.images import RegistryConfig, parse_image
from e2e.nodes.registry_pull import Puller, PullError
from migrate.adapters.ocicrypt import KEYS_JWE, PUBOPTS, LayerEncryption, parse_recipients
from migrate.adapters.registry.layer import LayerStream
from migrate.pipeline.refusals import pull_refused
from migrate.validation import validate
from tests.conftest import Result
from tests.real import require
from tests.registries import RegistryUnderTest
from tests.test_build import archive_files, manifest

Cli = Callable[..., Result]
LAYER = "application/vnd.oci.image.layer.v1.tar"
SUFFIX = {"none": "", "gzip": "+gzip", "zstd": "+zstd"}
KEY_HINT = ("hint: give the recipient's public key as PEM or DER (SubjectPublicKeyInfo) or a "
            "JWK: RSA of 2048 bits or more, or EC P-256, P-384 or P-521")


@dataclass(frozen=True)
class KeyPair:
    private: Path  # PKCS#8 PEM, what skopeo/buildah/CRI-O are given
    public: Path  # SubjectPublicKeyInfo PEM, what --encrypt-for is given


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _pair(d: Path, name: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> KeyPair:
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(_write(d / f"{name}.key", priv), _write(d / f"{name}.pub", pub))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """rsa and ec: the recipients; other: a key nobody encrypted for."""
    d = tmp_path_factory.mktemp("keys")
    return {"rsa": _pair(d, "rsa", rsa.generate_private_key(65537, 2048)),
            "ec": _pair(d, "ec", ec.generate_private_key(ec.SECP256R1())),
            "other": _pair(d, "other", rsa.generate_private_key(65537, 2048))}


@pytest.fixture
def skopeo() -> str:
    path = shutil.which("skopeo")
    require(None if path else "skopeo is not installed (scripts/setup installs it)")
    assert path
    return path


def _skopeo_copy(src: str, dest: Path, key: Path | None) -> subprocess.CompletedProcess[str]:
    args = ["--decryption-key", str(key)] if key else []
    return subprocess.run(["skopeo", "copy", "--src-tls-verify=false", *args, src, f"oci:{dest}"],
                          capture_output=True, text=True)


def _oci_layer(layout: Path) -> tuple[dict[str, Any], bytes]:
    """The one layer of the one image in an OCI layout: descriptor and blob."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    doc = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    (desc,) = doc["layers"]
    return desc, (blobs / desc["digest"][7:]).read_bytes()


def _uncompress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _private_opts(desc: dict[str, Any], key: Path) -> dict[str, Any]:
    """Open the layer's JWE with a private key (jwcrypto): the private options."""
    token = jwe.JWE()
    token.deserialize(base64.b64decode(desc["annotations"][KEYS_JWE]).decode(),
                      key=jwk.JWK.from_pem(key.read_bytes()))
    opts: dict[str, Any] = json.loads(token.payload)
    return opts


@pytest.mark.parametrize(("compression", "key"), [("none", "rsa"), ("gzip", "ec"),
                                                  ("zstd", "rsa")])
def test_skopeo_decrypts_the_layer_to_the_archive(
        cli: Cli, counters_archive: Path, plain_registry: RegistryUnderTest, unique_repo: str,
        keys: dict[str, KeyPair], skopeo: str, tmp_path: Path, compression: str,
        key: str) -> None:
    image = f"{plain_registry.host}/{unique_repo}:v1"
    r = cli("build", counters_archive, "--image", image, "--compression", compression,
            "--encrypt-for", f"jwe:{keys['rsa'].public}", "--encrypt-for",
            f"jwe:{keys['ec'].public}", "--no-tls-verify", "-v", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "build.schema.json", "build -o json")
    assert report["encrypted_for"] == [f"jwe:{keys['rsa'].public}", f"jwe:{keys['ec'].public}"]
    # What a restore pod names: the tag (CRI-O does not decrypt a pull by digest).
    assert (report["reference"], report["pod_image"]) == (f"{image}@{report['digest']}", image)
    doc = manifest(plain_registry, unique_repo, report["digest"])
    (desc,) = doc["layers"]
    assert desc["mediaType"] == f"{LAYER}{SUFFIX[compression]}+encrypted"
    assert desc["size"] == report["layer_size"]
    assert set(desc["annotations"]) == {KEYS_JWE, PUBOPTS}
    public = json.loads(base64.b64decode(desc["annotations"][PUBOPTS]))
    assert public["cipher"] == "AES_256_CTR_HMAC_SHA256"
    # The registry holds ciphertext: no member of the archive shows through.
    blob = plain_registry.http().request(
        "GET", f"{plain_registry.url}/v2/{unique_repo}/blobs/{desc['digest']}").data
    assert b"spec.dump" not in _uncompress_or_raw(blob, compression)
    # The symmetric key never reaches the output or the logs.
    symkey = _private_opts(desc, keys["rsa"].private)["symkey"]
    assert symkey not in r.out + r.err

    out = tmp_path / "decrypted"
    done = _skopeo_copy(f"docker://{image}", out, keys[key].private)
    assert done.returncode == 0, done.stderr
    plain_desc, plain = _oci_layer(out)
    assert plain_desc["mediaType"] == f"{LAYER}{SUFFIX[compression]}"
    assert "annotations" not in plain_desc or not any(
        k.startswith("org.opencontainers.image.enc.") for k in plain_desc["annotations"])
    assert _uncompress(plain, compression) == counters_archive.read_bytes()

    wrong = _skopeo_copy(f"docker://{image}", tmp_path / "wrong", keys["other"].private)
    assert wrong.returncode == 1
    assert "no suitable key unwrapper found or none of the private keys could be used" \
        in wrong.stderr


def _uncompress_or_raw(blob: bytes, compression: str) -> bytes:
    """What a reader without the key gets: the blob does not even decompress."""
    try:
        return _uncompress(blob, compression)
    except (OSError, zstandard.ZstdError, EOFError):
        return blob


def test_buildah_pulls_with_the_key_only(cli: Cli, counters_archive: Path,
                                         plain_registry: RegistryUnderTest, unique_repo: str,
                                         keys: dict[str, KeyPair]) -> None:
    image = f"{plain_registry.host}/{unique_repo}:v1"
    r = cli("build", counters_archive, "--image", image, "--encrypt-for",
            f"jwe:{keys['ec'].public}", "--no-tls-verify")
    assert r.code == 0, r.err
    for key, said in ((None, "missing private key needed for decryption"),
                      (keys["other"].private, "no suitable key unwrapper found")):
        failed = _buildah_from(image, key)
        assert failed.returncode == 125, failed.stdout
        assert said in failed.stderr
    for root in _pulled_root(image, keys["ec"].private):
        for name, data in archive_files(counters_archive).items():
            assert (root / name).read_bytes() == data, name


def _buildah_from(image: str, key: Path | None) -> subprocess.CompletedProcess[str]:
    args = ["--decryption-key", str(key)] if key else []
    return subprocess.run(["buildah", "from", "-q", "--pull-always", "--tls-verify=false",
                           *args, image], capture_output=True, text=True)


def _pulled_root(image: str, key: Path) -> Iterator[Path]:
    made = _buildah_from(image, key)
    assert made.returncode == 0, made.stderr
    ctr = made.stdout.strip()
    try:
        yield Path(subprocess.run(["buildah", "mount", ctr], check=True, capture_output=True,
                                  text=True).stdout.strip())
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        subprocess.run(["buildah", "rmi", "-f", image], capture_output=True)


def test_buildah_builder_encrypts_with_its_own_ocicrypt(
        cli: Cli, counters_archive: Path, plain_registry: RegistryUnderTest, unique_repo: str,
        keys: dict[str, KeyPair], skopeo: str, tmp_path: Path) -> None:
    image = f"{plain_registry.host}/{unique_repo}:v1"
    r = cli("build", counters_archive, "--image", image, "--builder", "buildah",
            "--encrypt-for", f"jwe:{keys['rsa'].public}", "--no-tls-verify", "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["encrypted_for"] == [f"jwe:{keys['rsa'].public}"]
    (desc,) = manifest(plain_registry, unique_repo, "v1")["layers"]
    assert desc["mediaType"] == f"{LAYER}+gzip+encrypted"
    done = _skopeo_copy(f"docker://{image}", tmp_path / "d", keys["rsa"].private)
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_oci_layer(tmp_path / "d")[1]))) as tf:
        files = {m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tf.getmembers() if m.isreg()}
    assert files == archive_files(counters_archive)


def test_oci_layout_decrypts_offline(cli: Cli, counters_archive: Path, keys: dict[str, KeyPair],
                                     skopeo: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    r = cli("build", counters_archive, "--image", "example.org/c:v1", "--no-push",
            "--oci-layout", layout, "--encrypt-for", f"jwe:{keys['ec'].public}")
    assert r.code == 0, r.err
    desc, blob = _oci_layer(layout)
    assert desc["mediaType"] == f"{LAYER}+encrypted"
    assert hashlib.sha256(blob).hexdigest() == desc["digest"][7:]
    done = subprocess.run(["skopeo", "copy", "--decryption-key", str(keys["ec"].private),
                           f"oci:{layout}:v1", f"oci:{tmp_path / 'plain'}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _oci_layer(tmp_path / "plain")[1] == counters_archive.read_bytes()


def test_every_pass_has_its_own_key_and_decrypts(counters_archive: Path,
                                                 keys: dict[str, KeyPair]) -> None:
    """A retried upload reads the archive again: a new key and nonce, never the same
    keystream twice. Each pass opens (jwcrypto, cryptography) to the archive, its HMAC
    and plain digest matching."""
    recipients = parse_recipients([f"jwe:{keys['rsa'].public}"])
    stream = LayerStream(counters_archive, "none", 4096, encryption=LayerEncryption(recipients))
    seen = []
    for _ in range(2):
        blob = b"".join(bytes(b) for b in stream)
        desc = {"annotations": stream.result.annotations}
        opts = _private_opts(desc, keys["rsa"].private)
        public = json.loads(base64.b64decode(stream.result.annotations[PUBOPTS]))  # type: ignore[index]
        key, nonce = base64.b64decode(opts["symkey"]), base64.b64decode(
            opts["cipheroptions"]["nonce"])
        mac = hmac.HMAC(key, hashes.SHA256())
        mac.update(blob)
        mac.verify(base64.b64decode(public["hmac"]))
        dec = Cipher(algorithms.AES(key), modes.CTR(nonce)).decryptor()
        plain = dec.update(blob) + dec.finalize()
        assert plain == counters_archive.read_bytes()
        assert opts["digest"] == "sha256:" + hashlib.sha256(plain).hexdigest()
        assert stream.result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert stream.result.diff_id == opts["digest"]
        seen.append((opts["symkey"], blob))
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]


def test_encrypted_builds_skip_the_digest_cache(cli: Cli, counters_archive: Path,
                                                plain_registry: RegistryUnderTest,
                                                unique_repo: str, keys: dict[str, KeyPair],
                                                _private_cache: Path) -> None:
    image = f"{plain_registry.host}/{unique_repo}:v1"
    args = ("build", counters_archive, "--image", image, "--encrypt-for",
            f"jwe:{keys['rsa'].public}", "--no-tls-verify", "-o", "json")
    first, second = cli(*args).json(), cli(*args).json()
    assert first["layer_uploaded"] and second["layer_uploaded"]
    assert first["digest"] != second["digest"]
    assert not (_private_cache / "layer-digests.json").exists()


# -- hostile and bad input: one line, a hint, an exit code; nothing built ------------------


@pytest.fixture
def bad_keys(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    d = tmp_path / "bad"
    d.mkdir()
    _write(d / "ed25519.pub", ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    _write(d / "x25519.pub", x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    _write(d / "k1.pub", ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    _write(d / "rsa1024.pub", rsa.generate_private_key(65537, 1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    _write(d / "garbage.pem", b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n"
           b"-----END PUBLIC KEY-----\n")
    _write(d / "notes.txt", b"hello\n")
    _write(d / "private.jwk", jwk.JWK.generate(kty="RSA", size=2048).export_private().encode())
    _write(d / "oct.jwk", jwk.JWK.generate(kty="oct", size=256).export().encode())
    priv = serialization.load_pem_private_key(keys["rsa"].private.read_bytes(), None)
    assert isinstance(priv, rsa.RSAPrivateKey)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "node-b")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(priv.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(priv, hashes.SHA256()))
    _write(d / "node.crt", cert.public_bytes(serialization.Encoding.PEM))
    return d


def _refused(cli: Cli, archive: Path, tmp_path: Path, spec: str) -> Result:
    layout = tmp_path / "never"
    r = cli("build", archive, "--no-push", "--oci-layout", layout, "--encrypt-for", spec)
    assert not layout.exists()  # refused before any work
    return r


@pytest.mark.parametrize(("spec", "code", "lines"), [
    ("jwe:{d}/missing.pub", 4, ["error: {d}/missing.pub: no such key file",
                                "hint: give the recipient's public key file: --encrypt-for "
                                "jwe:PUBLIC_KEY_FILE"]),
    ("jwe:{rsa_key}", 3, ["error: {rsa_key}: is a private key; --encrypt-for takes the "
                          "recipient's public key",
                          "hint: keep the private key on the node; give its public half: "
                          "openssl pkey -in {rsa_key} -pubout -out {rsa_pub}"]),
    ("jwe:{d}/private.jwk", 3, ["error: {d}/private.jwk: is a private JWK; --encrypt-for takes "
                                "the recipient's public key",
                                "hint: export the public half (drop d, p, q, dp, dq, qi)"]),
    ("jwe:{d}/ed25519.pub", 3, ["error: {d}/ed25519.pub: Ed25519 keys cannot be JWE "
                                "recipients (ocicrypt wraps layer keys with RSA-OAEP or "
                                "ECDH-ES+A256KW)", KEY_HINT]),
    ("jwe:{d}/x25519.pub", 3, ["error: {d}/x25519.pub: X25519 keys cannot be JWE "
                               "recipients (ocicrypt wraps layer keys with RSA-OAEP or "
                               "ECDH-ES+A256KW)", KEY_HINT]),
    ("jwe:{d}/oct.jwk", 3, ["error: {d}/oct.jwk: a JWK of type oct cannot be a JWE recipient "
                            "(ocicrypt wraps layer keys with RSA-OAEP or ECDH-ES+A256KW)",
                            KEY_HINT]),
    ("jwe:{d}/k1.pub", 3, ["error: {d}/k1.pub: EC curve secp256k1 cannot be a JWE recipient",
                           "hint: use EC P-256, P-384 or P-521, or RSA"]),
    ("jwe:{d}/rsa1024.pub", 3, ["error: {d}/rsa1024.pub: an RSA key of 1024 bits is too weak",
                                "hint: use an RSA key of 2048 bits or more, or EC P-256"]),
    ("jwe:{d}/garbage.pem", 3, ["error: {d}/garbage.pem: not a PEM or DER public key",
                                KEY_HINT]),
    ("jwe:{d}/notes.txt", 3, ["error: {d}/notes.txt: not a PEM or DER public key", KEY_HINT]),
    ("jwe:{d}", 3, ["error: {d}: cannot read the key file: a directory, not a key file",
                    KEY_HINT]),
    ("jwe:{d}/node.crt", 3, ["error: {d}/node.crt: is a certificate; --encrypt-for jwe: takes "
                             "a public key",
                             "hint: extract it: openssl x509 -in {d}/node.crt -pubkey -noout > "
                             "{d}/node.pub"]),
    ("pgp:{rsa_pub}", 2, ["error: --encrypt-for: unknown encryption scheme 'pgp'",
                          "hint: only jwe:PUBLIC_KEY_FILE is supported (not pgp or pkcs7)"]),
    ("{rsa_pub}", 2, ["error: --encrypt-for '{rsa_pub}': expected SCHEME:FILE",
                      "hint: use --encrypt-for jwe:PUBLIC_KEY_FILE"]),
])
def test_bad_keys_are_refused_with_a_hint(cli: Cli, counters_archive: Path, tmp_path: Path,
                                          bad_keys: Path, keys: dict[str, KeyPair], spec: str,
                                          code: int, lines: list[str]) -> None:
    fill = {"d": bad_keys, "rsa_key": keys["rsa"].private,
            "rsa_pub": keys["rsa"].private.with_suffix(".pub")}
    r = _refused(cli, counters_archive, tmp_path, spec.format(**fill))
    assert r.code == code
    assert r.err.splitlines() == [line.format(**fill) for line in lines]
    assert r.out == ""


def test_a_private_key_is_never_echoed(cli: Cli, counters_archive: Path, tmp_path: Path,
                                       keys: dict[str, KeyPair]) -> None:
    r = _refused(cli, counters_archive, tmp_path, f"jwe:{keys['rsa'].private}")
    body = keys["rsa"].private.read_text().splitlines()[1]
    assert r.code == 3 and body not in r.err
    debug = cli("--debug", "build", counters_archive, "--no-push", "--oci-layout",
                tmp_path / "never", "--encrypt-for", f"jwe:{keys['rsa'].private}")
    assert debug.code == 3 and body not in debug.err


def test_one_bad_recipient_among_good_ones_refuses_all(cli: Cli, counters_archive: Path,
                                                       tmp_path: Path,
                                                       keys: dict[str, KeyPair]) -> None:
    layout = tmp_path / "never"
    r = cli("build", counters_archive, "--no-push", "--oci-layout", layout, "--encrypt-for",
            f"jwe:{keys['rsa'].public}", "--encrypt-for", f"jwe:{tmp_path}/gone.pub")
    assert (r.code, r.err.splitlines()[0]) == (4, f"error: {tmp_path}/gone.pub: no such key file")
    assert not layout.exists()


def test_public_jwk_and_der_keys_are_accepted(counters_archive: Path, tmp_path: Path,
                                              keys: dict[str, KeyPair]) -> None:
    pub = serialization.load_pem_public_key(keys["ec"].public.read_bytes())
    der = _write(tmp_path / "ec.der", pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    jwk_file = _write(tmp_path / "ec.jwk", jwk.JWK.from_pem(
        keys["ec"].public.read_bytes()).export_public().encode())
    got = parse_recipients([f"jwe:{der}", f"jwe:{jwk_file}", f"jwe:{keys['rsa'].public}"])
    assert [r.algorithm for r in got] == ["ECDH-ES+A256KW", "ECDH-ES+A256KW", "RSA-OAEP"]
    assert "BEGIN" not in repr(got) and str(os.fspath(der)) in repr(got)


# -- a node agent holds no keys: it refuses an encrypted layer as CRI-O without keys does ----
# (CRI-O decrypting for real: tests/test_encrypted_migration.py.)


def test_a_node_agent_refuses_an_encrypted_layer_in_crio_s_words(
        cli: Cli, counters_archive: Path, plain_registry: RegistryUnderTest, unique_repo: str,
        keys: dict[str, KeyPair], tmp_path: Path) -> None:
    image = f"{plain_registry.host}/{unique_repo}:v1"
    assert cli("build", counters_archive, "--image", image, "--encrypt-for",
               f"jwe:{keys['ec'].public}", "--no-tls-verify").code == 0
    puller = Puller(tmp_path, RegistryConfig(insecure=(plain_registry.host,)),
                    threading.Event())
    try:
        with pytest.raises(PullError) as failed:
            puller.pull(image, parse_image(image), None)
    finally:
        puller.close()
    assert str(failed.value).startswith(f"initializing source docker://{image}: decrypting "
                                        "layer sha256:")
    assert str(failed.value).endswith(": missing private key needed for decryption")


# -- CRI-O v1.36.3's own words for encrypted pulls it cannot make (the real node's, in
# tests/test_encrypted_migration.py), as migrate's refusals read them -------------------

_CRIO = "unable to pull image or OCI artifact: pull image err: {}; artifact err: image " \
        "reference: reference is a container image, not an OCI artifact"
_LAYER = "sha256:68213ca034ef19426b584add763c18a9268021ffb1e30849d06c94bcddf2e977"


@pytest.mark.parametrize(("said", "what"), [
    (f"decrypting layer {_LAYER}: missing private key needed for decryption:\n",
     "the node has no private key for the encrypted image"),
    (f"decrypting layer {_LAYER}: no suitable key unwrapper found or none of the private keys "
     "could be used for decryption:\nno suitable key found for decrypting layer key:\n- JWE: "
     "No suitable private key found for decryption\n\n",
     "the node has no private key for the encrypted image"),
    (f"layer {_LAYER} should be decrypted, but we can\u2019t modify the manifest: Destination "
     "specifies a digest", "the node cannot decrypt an image named by its digest"),
])
def test_refusals_read_crio_s_own_words(said: str, what: str) -> None:
    message = _CRIO.format(said)
    error = pull_refused("counter", "node-b", "reg.example:5000/ckpt/c:v1", message)
    assert error is not None
    # Without CRI-O's retry as an artifact, which the journal's runtime message keeps.
    assert error.message == f"node-b cannot pull the checkpoint image of counter: {what}: " \
                            f"{said}"
    assert error.runtime_message == f"ErrImagePull: {message}"
