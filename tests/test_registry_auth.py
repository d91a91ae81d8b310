"""Registry credentials: lookup order, key matching, file parsing, secrecy, challenges.

Every credentials file is built in tmp_path and the environment is handed in
through ``RegistrySettings(env=...)``, so nothing here reads the real $HOME.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
from pathlib import Path

import pytest

from migrate.adapters.registry.auth import (
    auth_files,
    basic_header,
    lookup,
    parse_challenge,
    parse_creds,
)
from migrate.errors import ExitCode, InputError, MigrateError, NotFoundError, UsageError
from migrate.settings import RegistrySettings, Secret, Settings

REG = "reg.example:5000"


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def entry(user: str, password: str | None = None) -> dict[str, str]:
    """An ``auth`` entry; the password defaults to ``pw-<user>``."""
    return {"auth": b64(user, password if password is not None else f"pw-{user}")}


def write_auth(path: Path, auths: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths}))
    return path


def settings(env: dict[str, str | Path] | None = None, **kw: object) -> RegistrySettings:
    pairs = tuple((k, str(v)) for k, v in (env or {}).items())
    return RegistrySettings(env=pairs, **kw)  # type: ignore[arg-type]


def user_of(registry: str, repository: str, s: RegistrySettings) -> str | None:
    creds = lookup(registry, repository, s)
    return None if creds is None else creds[0]


# -- the candidate files and their order ----------------------------------------------


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """Every place credentials can live, as paths under tmp_path (not yet written)."""
    return {
        "registry_auth_file": tmp_path / "explicit-env" / "auth.json",
        "xdg": tmp_path / "run" / "containers" / "auth.json",
        "home_containers": tmp_path / "home" / ".config" / "containers" / "auth.json",
        "docker_config": tmp_path / "dockercfg" / "config.json",
        "home_docker": tmp_path / "home" / ".docker" / "config.json",
    }


def full_env(tmp_path: Path, places: dict[str, Path]) -> dict[str, str | Path]:
    # A named REGISTRY_AUTH_FILE must exist (as buildah demands); an empty one has no entries.
    named = places["registry_auth_file"]
    if not named.exists():
        named.parent.mkdir(parents=True, exist_ok=True)
        named.write_text('{"auths": {}}')
    return {
        "REGISTRY_AUTH_FILE": places["registry_auth_file"],
        "XDG_RUNTIME_DIR": tmp_path / "run",
        "HOME": tmp_path / "home",
        "DOCKER_CONFIG": tmp_path / "dockercfg",
    }


def test_auth_files_order_with_every_variable(tmp_path: Path, places: dict[str, Path]) -> None:
    got = list(auth_files(settings(full_env(tmp_path, places))))
    assert got == [places["registry_auth_file"], places["xdg"], places["home_containers"],
                   places["docker_config"]]


def test_auth_files_home_docker_when_no_docker_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    got = list(auth_files(settings({"HOME": home})))
    assert got == [home / ".config" / "containers" / "auth.json",
                   home / ".docker" / "config.json"]


def test_auth_files_docker_config_alone(tmp_path: Path) -> None:
    got = list(auth_files(settings({"DOCKER_CONFIG": tmp_path / "d"})))
    assert got == [tmp_path / "d" / "config.json"]


def test_auth_files_nothing_without_environment() -> None:
    assert list(auth_files(settings())) == []


def test_auth_files_empty_values_are_ignored(tmp_path: Path) -> None:
    env = {"REGISTRY_AUTH_FILE": "", "XDG_RUNTIME_DIR": "", "HOME": tmp_path, "DOCKER_CONFIG": ""}
    got = list(auth_files(settings(env)))
    assert got == [tmp_path / ".config" / "containers" / "auth.json",
                   tmp_path / ".docker" / "config.json"]


def test_auth_files_authfile_is_the_only_candidate(tmp_path: Path,
                                                   places: dict[str, Path]) -> None:
    explicit = tmp_path / "given.json"
    got = list(auth_files(settings(full_env(tmp_path, places), authfile=explicit)))
    assert got == [explicit]


ORDER = ["registry_auth_file", "xdg", "home_containers", "docker_config"]


@pytest.mark.parametrize("first", range(len(ORDER)), ids=ORDER)
def test_lookup_takes_the_first_file_in_order(tmp_path: Path, places: dict[str, Path],
                                              first: int) -> None:
    # Every file from `first` on has an entry for REG, each with its own user.
    for name in ORDER[first:]:
        write_auth(places[name], {REG: entry(name)})
    # Higher-priority files exist but only know other registries.
    for name in ORDER[:first]:
        write_auth(places[name], {"other.example": entry("wrong-" + name)})
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places))) == ORDER[first]


def test_lookup_home_docker_config_is_last(tmp_path: Path, places: dict[str, Path]) -> None:
    env = {"HOME": tmp_path / "home"}
    write_auth(places["home_docker"], {REG: entry("docker")})
    assert user_of(REG, "ns/app", settings(env)) == "docker"
    write_auth(places["home_containers"], {REG: entry("containers")})
    assert user_of(REG, "ns/app", settings(env)) == "containers"


def test_docker_config_replaces_home_docker(tmp_path: Path, places: dict[str, Path]) -> None:
    # Only $HOME/.docker/config.json knows REG, but DOCKER_CONFIG points elsewhere.
    write_auth(places["home_docker"], {REG: entry("home-docker")})
    env = {"HOME": tmp_path / "home", "DOCKER_CONFIG": tmp_path / "dockercfg"}
    assert lookup(REG, "ns/app", settings(env)) is None
    write_auth(places["docker_config"], {REG: entry("docker-config")})
    assert user_of(REG, "ns/app", settings(env)) == "docker-config"


def test_file_order_beats_key_specificity(tmp_path: Path, places: dict[str, Path]) -> None:
    # The first file with any matching entry wins, even if a later file is more specific.
    write_auth(places["xdg"], {REG: entry("host-only")})
    write_auth(places["home_containers"], {f"{REG}/ns/app": entry("repo-specific")})
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places))) == "host-only"


def test_entries_without_credentials_fall_through(tmp_path: Path,
                                                  places: dict[str, Path]) -> None:
    # docker writes {"auths": {HOST: {}}} when a credential helper holds the secret.
    write_auth(places["xdg"], {REG: {}})
    write_auth(places["home_containers"], {REG: entry("real")})
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places))) == "real"


def test_an_identitytoken_entry_is_said_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 places: dict[str, Path]) -> None:
    """`docker login` to a registry handing out OAuth refresh tokens keeps one instead of a
    password; the requests went anonymous, and their 401 said nothing of why."""
    authfile = write_auth(tmp_path / "given.json", {REG: {"identitytoken": "REFRESH-SECRET"}})
    with caplog.at_level(logging.WARNING):
        assert lookup(REG, "ns/app", settings(authfile=authfile)) is None
    assert caplog.messages == [f"{authfile}: the entry for {REG} holds an identitytoken, which "
                               "migrate does not use: give USER:PASSWORD (--creds, or an "
                               "'auth' entry)"]
    assert "REFRESH-SECRET" not in caplog.text


def test_creds_win_over_every_file(tmp_path: Path, places: dict[str, Path]) -> None:
    for name in ORDER:
        write_auth(places[name], {REG: entry(name), f"{REG}/ns/app": entry(name)})
    given = ("cli-user", Secret("cli-pass"))
    authfile = write_auth(tmp_path / "given.json", {REG: entry("authfile")})
    s = settings(full_env(tmp_path, places), creds=given, authfile=authfile)
    assert lookup(REG, "ns/app", s) == given


def test_creds_are_returned_even_without_any_file() -> None:
    given = ("u", Secret("p"))
    assert lookup(REG, "ns/app", settings(creds=given)) == given


# -- --authfile is exclusive ------------------------------------------------------------


def test_authfile_is_used(tmp_path: Path, places: dict[str, Path]) -> None:
    for name in ORDER:
        write_auth(places[name], {REG: entry(name)})
    authfile = write_auth(tmp_path / "given.json", {REG: entry("authfile", "af-pass")})
    creds = lookup(REG, "ns/app", settings(full_env(tmp_path, places), authfile=authfile))
    assert creds == ("authfile", Secret("af-pass"))


def test_authfile_is_exclusive(tmp_path: Path, places: dict[str, Path]) -> None:
    # Every usual place has an entry for REG; the explicit file does not: no credentials.
    for name in [*ORDER, "home_docker"]:
        write_auth(places[name], {REG: entry(name)})
    authfile = write_auth(tmp_path / "given.json", {"other.example": entry("other")})
    s = settings(full_env(tmp_path, places), authfile=authfile)
    assert lookup(REG, "ns/app", s) is None
    # The same environment without --authfile does find one (the test is not vacuous).
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places))) == "registry_auth_file"


def test_authfile_exclusive_also_ignores_malformed_usual_files(tmp_path: Path,
                                                               places: dict[str, Path]) -> None:
    places["registry_auth_file"].parent.mkdir(parents=True)
    places["registry_auth_file"].write_text("{not json")
    authfile = write_auth(tmp_path / "given.json", {REG: entry("authfile")})
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places), authfile=authfile)) == "authfile"


def test_missing_authfile_is_an_error(tmp_path: Path, places: dict[str, Path]) -> None:
    write_auth(places["xdg"], {REG: entry("xdg")})
    missing = tmp_path / "typo.json"
    with pytest.raises(MigrateError) as e:
        lookup(REG, "ns/app", settings(full_env(tmp_path, places), authfile=missing))
    assert str(missing) in str(e.value)


# -- missing and unreadable files -----------------------------------------------------------


def test_missing_files_are_skipped(tmp_path: Path, places: dict[str, Path]) -> None:
    # Only the last candidate exists; every earlier path points at nothing.
    write_auth(places["docker_config"], {REG: entry("last")})
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places))) == "last"


def test_no_file_at_all_means_anonymous(tmp_path: Path, places: dict[str, Path]) -> None:
    assert lookup(REG, "ns/app", settings(full_env(tmp_path, places))) is None


def test_no_entry_anywhere_means_anonymous(tmp_path: Path, places: dict[str, Path]) -> None:
    for name in ORDER:
        write_auth(places[name], {"other.example": entry(name), f"{REG}x": entry(name)})
    assert lookup(REG, "ns/app", settings(full_env(tmp_path, places))) is None


@pytest.mark.parametrize("content", ["[]", "{}", '{"auths": []}', '{"auths": {"reg.example:5000": "x"}}', "null"])
def test_json_without_usable_auths_is_no_entry(tmp_path: Path, places: dict[str, Path],
                                               content: str) -> None:
    places["xdg"].parent.mkdir(parents=True)
    places["xdg"].write_text(content)
    write_auth(places["home_containers"], {REG: entry("next")})
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places))) == "next"


MALFORMED_PASSWORD = "hunter2-TOP-SECRET"


@pytest.mark.parametrize("content", [
    '{"auths": {"reg.example:5000": {"username": "bob", "password": "%s"',  # truncated
    '{"auths": {"reg.example:5000": {"password": "%s",}}}',  # trailing comma
    "password=%s\n",  # not JSON at all
])
def test_malformed_json_names_the_file_not_its_content(tmp_path: Path, places: dict[str, Path],
                                                       content: str) -> None:
    path = places["xdg"]
    path.parent.mkdir(parents=True)
    path.write_text(content % MALFORMED_PASSWORD)
    with pytest.raises(InputError) as e:
        lookup(REG, "ns/app", settings(full_env(tmp_path, places)))
    err = e.value
    assert str(path) in str(err)
    assert err.exit_code == ExitCode.INVALID_INPUT
    for text in (str(err), repr(err), err.message, err.hint or ""):
        assert MALFORMED_PASSWORD not in text


def test_non_utf8_file_is_input_error(tmp_path: Path, places: dict[str, Path]) -> None:
    path = places["xdg"]
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"auths": {"\xff\xfe": {}}}')
    with pytest.raises(InputError) as e:
        lookup(REG, "ns/app", settings(full_env(tmp_path, places)))
    assert str(path) in str(e.value)


def test_malformed_lower_priority_file_is_not_read_once_found(tmp_path: Path,
                                                              places: dict[str, Path]) -> None:
    write_auth(places["xdg"], {REG: entry("xdg")})
    places["home_containers"].parent.mkdir(parents=True)
    places["home_containers"].write_text("{broken")
    assert user_of(REG, "ns/app", settings(full_env(tmp_path, places))) == "xdg"
    # ...but it is read (and refused) when the earlier files have nothing for REG.
    write_auth(places["xdg"], {"other.example": entry("xdg")})
    with pytest.raises(InputError):
        lookup(REG, "ns/app", settings(full_env(tmp_path, places)))


# -- entries -------------------------------------------------------------------------------


def test_auth_entry_is_decoded(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {"auth": b64("alice", "s3cret")}})
    assert lookup(REG, "ns/app", settings(authfile=authfile)) == ("alice", Secret("s3cret"))


def test_auth_password_may_contain_colons(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {"auth": b64("alice", "a:b::c")}})
    assert lookup(REG, "ns/app", settings(authfile=authfile)) == ("alice", Secret("a:b::c"))


def test_username_password_entry(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {"username": "bob", "password": "pw:1"}})
    assert lookup(REG, "ns/app", settings(authfile=authfile)) == ("bob", Secret("pw:1"))


def test_auth_wins_over_username_password(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {
        "auth": b64("from-auth", "p1"), "username": "from-fields", "password": "p2"}})
    assert lookup(REG, "ns/app", settings(authfile=authfile)) == ("from-auth", Secret("p1"))


def test_empty_auth_falls_back_to_username_password(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {
        "auth": "", "username": "bob", "password": "p"}})
    assert lookup(REG, "ns/app", settings(authfile=authfile)) == ("bob", Secret("p"))


def test_auth_without_colon_is_not_credentials(tmp_path: Path) -> None:
    no_colon = base64.b64encode(b"just-a-token").decode()
    authfile = write_auth(tmp_path / "a.json", {REG: {"auth": no_colon}})
    assert lookup(REG, "ns/app", settings(authfile=authfile)) is None


def test_username_without_password_is_not_credentials(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {"username": "bob"}})
    assert lookup(REG, "ns/app", settings(authfile=authfile)) is None


BAD_AUTH = "!!not*base64-SECRETISH!!"


@pytest.mark.parametrize("value", [BAD_AUTH, "YWxpY2U6cHc",  # missing padding
                                   "YWxp*Y2U6cHc=",  # a stray character in valid base64
                                   base64.b64encode(b"\xff\xfe:pw").decode()])  # not UTF-8
def test_bad_base64_auth_is_input_error(tmp_path: Path, value: str) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {"auth": value}})
    with pytest.raises(InputError) as e:
        lookup(REG, "ns/app", settings(authfile=authfile))
    err = e.value
    assert str(authfile) in str(err)
    assert REG in str(err)
    assert err.exit_code == ExitCode.INVALID_INPUT
    assert value not in str(err)
    assert value not in (err.hint or "")


# -- which key matches -------------------------------------------------------------------------


SPECIFIC = {
    # written least specific first, so dict order cannot explain the result
    REG: entry("host"),
    f"{REG}/ns": entry("ns"),
    f"{REG}/ns/app": entry("repo"),
    f"{REG}/a/b": entry("a-b"),
    f"{REG}/a": entry("a"),
}


@pytest.mark.parametrize(("repository", "user"), [
    ("ns/app", "repo"),
    ("ns/other", "ns"),
    ("ns/app/sub", "repo"),  # host/ns/app is a prefix by components
    ("ns", "ns"),
    ("other/app", "host"),
    ("app", "host"),
    ("a/b/c", "a-b"),
    ("a/c/d", "a"),
    ("ns/application", "ns"),  # not a component prefix of host/ns/app
    ("nsx/app", "host"),  # not a component prefix of host/ns
])
def test_most_specific_key_wins(tmp_path: Path, repository: str, user: str) -> None:
    authfile = write_auth(tmp_path / "a.json", SPECIFIC)
    assert user_of(REG, repository, settings(authfile=authfile)) == user


def test_most_specific_key_wins_in_any_order(tmp_path: Path) -> None:
    reversed_entries = dict(reversed(list(SPECIFIC.items())))
    authfile = write_auth(tmp_path / "a.json", reversed_entries)
    assert user_of(REG, "ns/app", settings(authfile=authfile)) == "repo"
    assert user_of(REG, "ns/x", settings(authfile=authfile)) == "ns"


def test_more_specific_key_for_another_repository_does_not_match(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {f"{REG}/ns/app": entry("repo")})
    assert lookup(REG, "ns/other", settings(authfile=authfile)) is None


@pytest.mark.parametrize("registry", ["reg.example", "reg.example:5001", "other.example:5000"])
def test_host_and_port_must_match_exactly(tmp_path: Path, registry: str) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: entry("host")})
    assert lookup(registry, "ns/app", settings(authfile=authfile)) is None


@pytest.mark.parametrize(("key", "registry", "repository"), [
    ("https://index.docker.io/v1/", "docker.io", "library/alpine"),
    ("http://index.docker.io/v1/", "docker.io", "someone/app"),
    ("index.docker.io", "docker.io", "library/alpine"),
    ("https://index.docker.io/v1", "docker.io", "library/alpine"),
    ("https://reg.example:5000", REG, "ns/app"),
    ("http://reg.example:5000/", REG, "ns/app"),
    ("reg.example:5000/", REG, "ns/app"),
    ("https://reg.example:5000/ns", REG, "ns/app"),
])
def test_legacy_docker_keys_are_normalized(tmp_path: Path, key: str, registry: str,
                                           repository: str) -> None:
    authfile = write_auth(tmp_path / "config.json", {key: entry("legacy", "lp")})
    assert lookup(registry, repository, settings(authfile=authfile)) == ("legacy", Secret("lp"))


def test_legacy_docker_hub_key_does_not_match_other_registries(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "config.json", {"https://index.docker.io/v1/": entry("hub")})
    assert lookup(REG, "library/alpine", settings(authfile=authfile)) is None
    assert lookup("index.docker.io.example", "x/y", settings(authfile=authfile)) is None


def test_legacy_key_found_in_docker_config_in_the_usual_place(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_auth(home / ".docker" / "config.json",
               {"https://index.docker.io/v1/": {"auth": b64("hubuser", "hubpw")}})
    creds = lookup("docker.io", "library/alpine", settings({"HOME": home}))
    assert creds == ("hubuser", Secret("hubpw"))


def test_legacy_versioned_url_key_for_other_registry(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "config.json",
                          {"https://reg.example:5000/v1/": entry("legacy")})
    assert user_of(REG, "ns/app", settings(authfile=authfile)) == "legacy"


# -- Secret never shows itself -------------------------------------------------------------------

SECRET_VALUE = "pa55-w0rd-XYZ"


def test_secret_repr_and_str_are_redacted() -> None:
    s = Secret(SECRET_VALUE)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", format(s), repr([s]), repr((s,)),
                 repr({"k": s})):
        assert SECRET_VALUE not in text
        assert "***" in text


def test_secret_in_log_records_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("migrate.test").debug("creds %s %r", Secret(SECRET_VALUE),
                                                ("alice", Secret(SECRET_VALUE)))
    assert "alice" in caplog.text
    assert SECRET_VALUE not in caplog.text


def test_secret_reveal_equality_and_hash() -> None:
    s = Secret(SECRET_VALUE)
    assert s.reveal() == SECRET_VALUE
    assert s == Secret(SECRET_VALUE)
    assert s != Secret("other")
    assert s != SECRET_VALUE  # never equal to the bare string
    assert hash(s) == hash(Secret(SECRET_VALUE))


def test_secret_has_no_instance_dict() -> None:
    s = Secret(SECRET_VALUE)
    assert not hasattr(s, "__dict__")  # vars(secret) cannot dump it


def test_registry_settings_repr_hides_the_password(tmp_path: Path) -> None:
    rs = RegistrySettings(creds=("alice", Secret(SECRET_VALUE)), authfile=tmp_path / "a.json",
                          env=(("HOME", str(tmp_path)),))
    for text in (repr(rs), str(rs), repr(Settings(registry=rs))):
        assert SECRET_VALUE not in text
        assert "alice" in text  # the repr is real, not empty
        assert "Secret('***')" in text


def test_parsed_creds_repr_hides_the_password() -> None:
    creds = parse_creds(f"alice:{SECRET_VALUE}")
    assert SECRET_VALUE not in repr(creds)
    assert SECRET_VALUE not in repr(RegistrySettings(creds=creds))


def test_looked_up_creds_repr_hides_the_password(tmp_path: Path) -> None:
    authfile = write_auth(tmp_path / "a.json", {REG: {"auth": b64("alice", SECRET_VALUE)}})
    creds = lookup(REG, "ns/app", settings(authfile=authfile))
    assert creds is not None
    assert creds[1].reveal() == SECRET_VALUE
    assert SECRET_VALUE not in repr(creds)


# -- parse_creds --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "user", "password"), [
    ("alice:s3cret", "alice", "s3cret"),
    ("alice:a:b:c", "alice", "a:b:c"),
    ("alice:", "alice", ""),
    ("ali ce:p w", "ali ce", "p w"),
])
def test_parse_creds(value: str, user: str, password: str) -> None:
    assert parse_creds(value) == (user, Secret(password))


@pytest.mark.parametrize("value", ["alice", "", ":s3cretpw", ":"])
def test_parse_creds_errors(value: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_creds(value)
    err = e.value
    assert err.exit_code == ExitCode.USAGE
    assert "USER:PASSWORD" in str(err)
    assert err.hint
    if value.startswith(":") and len(value) > 1:
        assert value[1:] not in str(err)
        assert value[1:] not in err.hint


# -- parse_challenge ----------------------------------------------------------------------------


def test_parse_bearer_challenge_with_commas_in_quotes() -> None:
    c = parse_challenge('Bearer realm="https://auth.example/token?a=1,b=2",'
                        'service="registry.example",'
                        'scope="repository:ns/app:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token?a=1,b=2",
                        "service": "registry.example",
                        "scope": "repository:ns/app:pull,push"}


def test_parse_bearer_challenge_with_spaces_between_params() -> None:
    c = parse_challenge('  Bearer realm="https://a.example/t", service="s",  scope="x:y:pull"  ')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://a.example/t", "service": "s", "scope": "x:y:pull"}


def test_escaped_quote_does_not_end_a_quoted_value() -> None:
    c = parse_challenge(r'Bearer realm="https://a.example/t",error="say \"hi\", then go",'
                        r'service="after"')
    assert c.params["realm"] == "https://a.example/t"
    assert c.params["service"] == "after"
    assert c.params["error"].startswith("say ")
    assert c.params["error"].endswith(", then go")
    assert "then" not in c.params  # nothing inside the quotes parsed as a parameter


def test_escaped_quotes_are_unescaped() -> None:
    c = parse_challenge(r'Bearer realm="r",error="say \"hi\", then go",service="s"')
    assert c.params["error"] == 'say "hi", then go'
    c = parse_challenge(r'Bearer realm="C:\\tokens"')
    assert c.params["realm"] == "C:\\tokens"


def test_parse_basic_challenge() -> None:
    c = parse_challenge('Basic realm="Registry Realm"')
    assert c.scheme == "basic"
    assert c.params == {"realm": "Registry Realm"}


def test_parse_challenge_scheme_and_names_are_case_insensitive() -> None:
    c = parse_challenge('BEARER Realm="https://a.example/t",SERVICE="Svc"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://a.example/t", "service": "Svc"}  # values keep case


def test_parse_challenge_unquoted_values() -> None:
    c = parse_challenge("Bearer realm=https://a.example/t?x=1,service=reg,scope=repo:a:pull")
    assert c.params == {"realm": "https://a.example/t?x=1", "service": "reg",
                        "scope": "repo:a:pull"}


def test_parse_challenge_empty_values_and_no_params() -> None:
    assert parse_challenge('Bearer realm="",service=""').params == {"realm": "", "service": ""}
    c = parse_challenge("Basic")
    assert (c.scheme, c.params) == ("basic", {})
    assert parse_challenge("").scheme == ""


# -- basic_header ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "password"), [
    ("alice", "s3cret"),
    ("alice", "a:b:c"),
    ("bob", ""),
    ("jürgen", "pässwörd ✓"),
])
def test_basic_header_round_trips(user: str, password: str) -> None:
    header = basic_header((user, Secret(password)))
    scheme, _, token = header.partition(" ")
    assert scheme == "Basic"
    decoded = base64.b64decode(token, validate=True).decode("utf-8")
    got_user, _, got_password = decoded.partition(":")
    assert (got_user, got_password) == (user, password)


def test_basic_header_matches_an_auth_file_entry(tmp_path: Path) -> None:
    # What `podman login` stores is exactly the Basic token we send.
    authfile = write_auth(tmp_path / "a.json", {REG: {"auth": b64("alice", "pw")}})
    creds = lookup(REG, "ns/app", settings(authfile=authfile))
    assert creds is not None
    assert basic_header(creds) == "Basic " + b64("alice", "pw")


def test_missing_registry_auth_file_is_an_error(tmp_path: Path) -> None:
    """Like buildah: a REGISTRY_AUTH_FILE that does not exist is a mistake, not "no creds"."""
    missing = tmp_path / "typo" / "auth.json"
    with pytest.raises(NotFoundError) as err:
        lookup("reg.example:5000", "ns/app", settings({"REGISTRY_AUTH_FILE": missing}))
    assert err.value.message == f"{missing}: no such credentials file"
    assert err.value.exit_code == 4


# -- TLS contexts --------------------------------------------------------------------


def _context(s: RegistrySettings, host: str = REG) -> ssl.SSLContext:
    from migrate.adapters.registry.client import RegistryClient
    from migrate.adapters.registry.reference import parse_reference

    pool = RegistryClient(parse_reference(f"{host}/team/app:v1"), s)._pool
    ctx = pool.connection_pool_kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    return ctx


def test_clients_share_one_context_per_trust_setting(tmp_path: Path) -> None:
    # Loading the system CAs costs tens of milliseconds: a drain makes two clients per pod.
    verified, again = _context(settings()), _context(settings())
    insecure = _context(settings(tls_verify=False))
    assert verified is again
    assert insecure is not verified
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


def test_a_cert_dir_ca_is_trusted_and_a_changed_one_reloaded(tmp_path: Path) -> None:
    from e2e.services.pki import make_ca

    cert_dir = tmp_path / "certs.d"
    cert_dir.mkdir()
    bare = _context(settings(cert_dir=tmp_path / "empty"))
    first_ca = make_ca(tmp_path / "ca1", "first-test-ca")
    (cert_dir / "ca.crt").write_bytes(first_ca.cert.read_bytes())
    first = _context(settings(cert_dir=cert_dir))
    assert first.cert_store_stats()["x509_ca"] == bare.cert_store_stats()["x509_ca"] + 1
    assert _context(settings(cert_dir=cert_dir)) is first
    # Rewritten (a rotated CA): the cache key holds the file's mtime, so it is read again.
    second_ca = make_ca(tmp_path / "ca2", "second-test-ca")
    (cert_dir / "ca.crt").write_bytes(second_ca.cert.read_bytes())
    os.utime(cert_dir / "ca.crt", ns=(1, 1))
    second = _context(settings(cert_dir=cert_dir))
    assert second is not first
    subjects = str([c["subject"] for c in second.get_ca_certs()])
    assert "second-test-ca" in subjects and "first-test-ca" not in subjects
