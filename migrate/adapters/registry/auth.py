"""Registry credentials: the same files and order buildah and podman use.

Order: --creds, then the first of --authfile, REGISTRY_AUTH_FILE,
$XDG_RUNTIME_DIR/containers/auth.json, $HOME/.config/containers/auth.json,
$DOCKER_CONFIG/config.json or $HOME/.docker/config.json that has an entry for
the registry. Within a file the most specific key wins (``host/ns/repo`` over
``host``). Credential helpers (credHelpers, credsStore) are not run.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from migrate.errors import InputError, NotFoundError, UsageError
from migrate.settings import RegistrySettings, Secret

log = logging.getLogger(__name__)

Credentials = tuple[str, Secret]


def parse_creds(value: str) -> Credentials:
    """``USER:PASSWORD`` from --creds."""
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise UsageError("--creds must be USER:PASSWORD", hint="quote it if the password has "
                         "shell characters, or use --authfile")
    return user, Secret(password)


def auth_files(settings: RegistrySettings) -> Iterator[Path]:
    """Candidate credential files, most authoritative first."""
    env = dict(settings.env)
    if settings.authfile is not None:
        yield settings.authfile
        return  # an explicit file is the only one consulted, as with buildah
    if env.get("REGISTRY_AUTH_FILE"):
        yield Path(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        yield Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    home = env.get("HOME")
    if home:
        yield Path(home) / ".config" / "containers" / "auth.json"
    if env.get("DOCKER_CONFIG"):
        yield Path(env["DOCKER_CONFIG"]) / "config.json"
    elif home:
        yield Path(home) / ".docker" / "config.json"


_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")


def _normalize_key(key: str) -> str:
    # docker's legacy keys are URLs ("https://index.docker.io/v1/",
    # "https://reg.example:5000/v1/"): a URL key names just its host.
    if re.match(r"^https?://", key):
        key = re.sub(r"^https?://", "", key).split("/", 1)[0]
    key = key.rstrip("/")
    host, sep, rest = key.partition("/")
    return ("docker.io" if host in _HUB_ALIASES else host) + sep + rest


def _decode_entry(entry: Mapping[str, object], path: Path, key: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        # binascii.Error and UnicodeDecodeError are ValueErrors, and b64decode raises a
        # plain one for a value with non-ASCII characters.
        except ValueError as e:
            raise InputError(f"{path}: the entry for {key} has an invalid 'auth' value",
                             hint="it must be base64 of USER:PASSWORD") from e
        if sep:
            return user, Secret(password)
    name, word = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(word, str):
        return name, Secret(word)
    if entry.get("identitytoken"):
        # What `docker login` keeps for registries that hand out OAuth refresh tokens;
        # said, because the anonymous requests that follow fail with a 401 alone.
        log.warning("%s: the entry for %s holds an identitytoken, which migrate does not "
                    "use: give USER:PASSWORD (--creds, or an 'auth' entry)", path, key)
    return None


def _read(path: Path) -> Mapping[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        # Never echo the file's content: it holds passwords.
        raise InputError(f"{path}: cannot read the credentials file ({type(e).__name__})",
                         hint="it must be JSON like {\"auths\": {\"HOST\": {\"auth\": ...}}}"
                         ) from e
    auths = data.get("auths") if isinstance(data, dict) else None
    return auths if isinstance(auths, dict) else {}


def lookup(registry: str, repository: str, settings: RegistrySettings) -> Credentials | None:
    """Credentials for ``registry/repository``, or None to go anonymous."""
    if settings.creds is not None:
        return settings.creds
    wanted = [f"{registry}/{repository}"]
    parts = repository.split("/")
    wanted += [f"{registry}/{'/'.join(parts[:i])}" for i in range(len(parts) - 1, 0, -1)]
    wanted.append(registry)
    env = dict(settings.env)
    for path in auth_files(settings):
        named = path == settings.authfile or str(path) == env.get("REGISTRY_AUTH_FILE")
        if named and not path.is_file():
            # A typo in a named file must not turn into an anonymous push.
            raise NotFoundError(f"{path}: no such credentials file",
                                hint="check --authfile (or REGISTRY_AUTH_FILE)")
        auths = _read(path)
        if not auths:
            continue
        entries = {_normalize_key(k): v for k, v in auths.items() if isinstance(v, dict)}
        for key in wanted:
            if key in entries:
                creds = _decode_entry(entries[key], path, key)
                if creds is not None:
                    log.debug("using credentials for %s from %s", key, path)
                    return creds
    return None


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str  # "basic" or "bearer", lower-cased
    params: dict[str, str]


_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def _unescape(quoted: str) -> str:
    """RFC 9110 quoted-string: a backslash quotes the next character."""
    return re.sub(r"\\(.)", r"\1", quoted)


def parse_challenge(header: str) -> Challenge:
    """Parse ``Bearer realm="...",service="...",scope="..."`` or ``Basic realm="..."``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): _unescape(m.group(2)) if m.group(2) is not None
              else m.group(3) for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def user_password(creds: Credentials) -> str:
    """``USER:PASSWORD``, as --creds takes it (and crictl's CRICTL_CREDS): the password
    revealed, so the result goes only where the password may."""
    return f"{creds[0]}:{creds[1].reveal()}"


def auth_token(creds: Credentials) -> str:
    """base64 of ``USER:PASSWORD``: an auth.json entry's ``auth``, and Basic auth's value."""
    return base64.b64encode(user_password(creds).encode()).decode()


def basic_header(creds: Credentials) -> str:
    """The ``Authorization`` value for Basic auth."""
    return "Basic " + auth_token(creds)
