"""The migration journal: one JSON file per run, written after every step.

It is what makes a run resumable and undoable after a crash, a Ctrl-C or a
lost connection: the request, each stage's state and results, every object
the run created in the cluster (so rollback removes exactly those), and a log
of the actions taken (the "what was done" of a failure report). Writes are
atomic (a temporary file renamed over the old one) and private (0600): a
journal names images and nodes, and a run may record registry locations.

A run holds an exclusive lock on its journal (``ID.lock``, flock: released
by the kernel if the process dies), so two `migrate resume ID` cannot race,
and a journal still saying ``running`` whose lock is free was left by a
process that is gone (killed): it reads as interrupted.

``registry`` keeps how the run reached the registry (TLS verification, the
certificate directory, the credentials file, whether --creds gave
credentials: never the credentials themselves), so that a resume can reach
it the same way (trust.py).

The file's form is schemas/journal.schema.json, checked on every load, and
versioned (``schema``). Version 2 keeps each migration stage's result whole
(pipeline/migration/results.py: every key, null where there is nothing);
version 1 files, which left some out, are read by filling them in, so that a
run interrupted before an upgrade resumes after it. A file from a newer
version is refused: this one cannot know what it means.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrate.errors import InputError, MigrateError, NotFoundError, UsageError
from migrate.validation import validate

SCHEMA_VERSION = 2
_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,120}$")

PENDING, RUNNING, DONE, FAILED, UNDONE = "pending", "running", "done", "failed", "undone"


def utc_now() -> str:
    """Now, as RFC 3339 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Stage:
    """One stage's state and what it produced."""

    name: str
    status: str = PENDING
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "status": self.status, "started": self.started,
                "ended": self.ended, "seconds": self.seconds, "data": self.data,
                "error": self.error}


def _new_id(kind: str, subject: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dt%H%M%S")
    # Short enough to be a label value (63 characters): pods created by a run carry it.
    tidy = re.sub(r"[^a-z0-9-]+", "-", subject.lower())[:30].strip("-") or kind
    return f"{kind}-{tidy}-{stamp}-{secrets.token_hex(2)}"


@dataclass
class Journal:
    """A run's persistent record. Mutate through the methods: each one saves."""

    path: Path
    id: str
    kind: str
    request: dict[str, Any]
    created: str
    outcome: str = RUNNING  # running | succeeded | failed | rolled-back | interrupted
    stages: list[Stage] = field(default_factory=list)
    objects: list[dict[str, str]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    registry: dict[str, Any] = field(default_factory=dict)
    _lock: int | None = None
    _clock: dict[str, float] = field(default_factory=dict)

    # -- files ----------------------------------------------------------------------

    @classmethod
    def create(cls, state_dir: Path | None, kind: str, subject: str,
               request: dict[str, Any], stages: list[str],
               registry: dict[str, Any] | None = None) -> Journal:
        """A new journal under ``state_dir``/journal, locked by this process."""
        directory = _directory(state_dir)
        journal_id = _new_id(kind, subject)
        j = cls(directory / f"{journal_id}.json", journal_id, kind, request, utc_now(),
                stages=[Stage(s) for s in stages], registry=dict(registry or {}))
        j.lock()
        j.save()
        return j

    @classmethod
    def load(cls, state_dir: Path | None, journal_id: str) -> Journal:
        """Read journal ``journal_id`` (not locked: call `lock` to change it)."""
        if not _ID.match(journal_id):
            raise UsageError(f"{journal_id!r} is not a journal id",
                             hint="`migrate history` lists them")
        path = _directory(state_dir) / f"{journal_id}.json"
        try:
            data = _current(json.loads(path.read_text()), path)
            return cls(path, data["id"], data["kind"], data["request"], data["created"],
                       data["outcome"], [Stage(**s) for s in data["stages"]],
                       data["objects"], data["actions"], dict(data["registry"]))
        except FileNotFoundError:
            raise NotFoundError(f"no migration journal {journal_id!r} in {path.parent}",
                                hint="`migrate history` lists them") from None
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"journal {path} is damaged: {e}",
                             hint="it can be removed; check the cluster by hand") from e

    @classmethod
    def of_subject(cls, state_dir: Path | None, kind: str, subject: str) -> list[Journal]:
        """The readable journals of ``kind`` whose id was made from ``subject`` (a pod's
        name), oldest first: only their files are read, not the whole history."""
        directory = _directory(state_dir)
        prefix = _new_id(kind, subject).rsplit("-", 2)[0]  # without the time and the nonce
        out = []
        for path in sorted(directory.glob(f"{prefix}-*.json")):
            try:
                out.append(cls.load(state_dir, path.stem))
            except MigrateError:
                continue
        return sorted(out, key=lambda j: j.created)

    @classmethod
    def history(cls, state_dir: Path | None) -> list[Journal]:
        """Every readable journal, oldest first."""
        out = []
        for path in sorted(_directory(state_dir).glob("*.json")):
            try:
                out.append(cls.load(state_dir, path.stem))
            except MigrateError:
                continue  # a damaged file must not hide the others
        return sorted(out, key=lambda j: j.created)

    def lock(self) -> None:
        """Take the run's exclusive lock; refuse if another process holds it."""
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"migration {self.id} is being run by another process",
                             hint="wait for it to finish, or stop it first") from None
        self._lock = fd

    def hold(self) -> None:
        """`lock`, unless this object holds the lock already."""
        if self._lock is None:
            self.lock()

    def unlock(self) -> None:
        """Release the lock (the kernel does it anyway when the process ends)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def lock_free(self) -> bool:
        """Whether no run holds this journal's lock (this object, another one in this
        process, or another process)."""
        if self._lock is not None:
            return False
        try:
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # releases the lock if this took it
        return True

    def current_outcome(self) -> str:
        """The outcome; ``running`` with the lock free means the process that ran it is
        gone (killed before it could say so): interrupted."""
        if self.outcome == RUNNING and self.lock_free():
            return "interrupted"
        return self.outcome

    def discard(self) -> None:
        """Remove the journal of a run that changed nothing after all (refused)."""
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        self.unlock()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the file holds)."""
        return {"schema": SCHEMA_VERSION, "id": self.id, "kind": self.kind,
                "created": self.created, "outcome": self.outcome, "request": self.request,
                "stages": [s.to_dict() for s in self.stages], "objects": self.objects,
                "actions": self.actions, "registry": self.registry}

    def save(self, *, durable: bool = True) -> None:
        """Write atomically, mode 0600; ``durable``: on the disk (fsync) before it returns.

        Compact JSON: an indented dump runs json's pure-Python encoder, and a
        drain rewrites its journal (every pod's plan and result) twice per pod
        under one lock; `jq . FILE` shows it indented. Without ``durable`` the
        rename still makes the write atomic for a process that dies; only a
        machine that loses power may come back with the previous content.
        """
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        text = json.dumps(self.to_dict(), separators=(",", ":")) + "\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- recording -----------------------------------------------------------------------

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def begin(self, name: str) -> Stage:
        """Mark a stage running."""
        s = self.stage(name)
        s.status, s.started, s.ended, s.error = RUNNING, utc_now(), None, None
        self._clock[name] = time.perf_counter()
        # Not synced: nothing reads a stage's start to decide anything (a resume
        # redoes every stage not done, begun or not; rollback asks the cluster where
        # it must), and a pod's migration begins seven (the drain benchmark measured
        # 5.7 ms a sync under load, two dozen a pod).
        self.save(durable=False)
        return s

    def finish(self, name: str, **data: Any) -> Stage:
        """Mark a stage done, keeping what it produced (resume reuses it)."""
        s = self.stage(name)
        s.status, s.ended = DONE, utc_now()
        s.seconds = round(time.perf_counter() - self._clock.pop(name, time.perf_counter()), 6)
        s.data.update(data)
        self.save()
        return s

    def fail(self, name: str, error: str) -> None:
        """Mark a stage failed."""
        s = self.stage(name)
        s.status, s.ended, s.error = FAILED, utc_now(), error
        if name in self._clock:
            s.seconds = round(time.perf_counter() - self._clock.pop(name), 6)
        self.save()

    def record(self, action: str, **detail: Any) -> None:
        """Log an action taken on the cluster or the disk."""
        self.actions.append({"at": utc_now(), "action": action, **detail})
        self.save()

    def creating(self, kind: str, namespace: str, name: str) -> None:
        """Remember, before asking for it, an object this run is about to create under a
        name of its own: if the answer is lost or the process stops, rollback and cleanup
        still delete it by that name (uid unknown: "")."""
        if not self._has(kind, namespace, name):
            self.objects.append({"kind": kind, "namespace": namespace, "name": name,
                                 "uid": ""})
            self.save()

    def created_object(self, kind: str, namespace: str, name: str, uid: str = "") -> None:
        """Remember an object this run created: rollback deletes exactly these."""
        found = self._has(kind, namespace, name)
        if found is not None:
            found["uid"] = uid  # announced by `creating`
        else:
            self.objects.append({"kind": kind, "namespace": namespace, "name": name,
                                 "uid": uid})
        self.record(f"created {kind}", namespace=namespace, name=name)

    def _has(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        return next((o for o in self.objects
                     if (o["kind"], o["namespace"], o["name"]) == (kind, namespace, name)),
                    None)

    def done(self, name: str) -> bool:
        """Whether stage ``name`` has completed."""
        return self.stage(name).status == DONE

    def set_outcome(self, outcome: str) -> None:
        """Record how the run ended."""
        self.outcome = outcome
        self.save()

    def interrupted(self) -> None:
        """Record an interruption (Ctrl-C, SIGTERM): the stages under way failed with
        "interrupted", and so did the run, resumably."""
        for s in self.stages:
            if s.status == RUNNING:
                self.fail(s.name, "interrupted")
        self.set_outcome("interrupted")


def _current(data: Any, path: Path) -> dict[str, Any]:
    """The file's content in the current version's form, checked against its schema."""
    version = data.get("schema", 1) if isinstance(data, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise InputError(f"journal {path} is of version {version}; this migrate reads "
                         f"versions 1 to {SCHEMA_VERSION}",
                         hint="resume or roll it back with the migrate that wrote it (or a "
                         "newer one)")
    if version == 1:
        data = _from_v1(data)
    try:
        validate(data, "journal.schema.json", str(path))
    except InputError as e:
        raise InputError(f"journal {path} is damaged: {e.message.removeprefix(f'{path}: ')}",
                         hint="it can be removed; check the cluster by hand") from e
    return dict(data)


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 file as version 2: the keys its stage results left out, as null."""
    data = {**data, "schema": SCHEMA_VERSION, "registry": data.get("registry") or {}}
    if data.get("kind") == "pod" and isinstance(data.get("stages"), list):
        for stage in data["stages"]:
            if isinstance(stage, dict) and stage.get("status") == DONE:
                _fill_v1(stage.get("name"), stage.get("data"))
    return data


def _fill_v1(stage: Any, result: Any) -> None:
    def fill(d: Any, *keys: str) -> None:
        for key in keys if isinstance(d, dict) else ():
            d.setdefault(key, None)

    if not isinstance(result, dict):
        return
    if stage == "preflight":  # journals from before these were planned
        fill(result.get("plan"), "destination_runtime", "build_on", "build_from")
    elif stage == "build":  # an image built on the node had no local archive
        images = result.get("images")
        for image in images.values() if isinstance(images, dict) else ():
            fill(image, "freezing_time_us", "frozen_time_us", "local_archive")
    elif stage == "create":
        fill(result, "resource_version", "held_label")


def _directory(state_dir: Path | None) -> Path:
    if state_dir is None:
        raise UsageError("no state directory for migration journals",
                         hint="set MIGRATE_STATE_DIR (or HOME / XDG_STATE_HOME)")
    directory = state_dir / "journal"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory



def drain_directory(state_dir: Path | None) -> Path:
    """Where drain journals live: beside, not among, the `migrate pod` journals."""
    if state_dir is None:
        raise UsageError("no state directory for drain journals",
                         hint="set MIGRATE_STATE_DIR (or HOME / XDG_STATE_HOME)")
    return state_dir / "drain"
