"""The one error tree of the tool.

Every failure a user can meet is a `MigrateError` carrying a one-line message,
an optional hint saying what to try next, and an exit code chosen by its class.
Adapters translate third-party exceptions into these (``raise ... from e``) so
that nothing else ever leaks to the CLI boundary, which prints
``error: <message>`` and ``hint: <hint>`` and exits with ``exit_code``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes. Stable: scripts depend on them (README, "Exit codes")."""

    OK = 0
    ERROR = 1  # unexpected failure (a bug); rerun with --debug
    USAGE = 2  # bad command line (also what click uses for its own usage errors)
    INVALID_INPUT = 3  # an archive, image or file is malformed, unsafe or unsupported
    NOT_FOUND = 4  # a named file, archive member, process or object does not exist
    DEPENDENCY = 5  # an external tool is missing or failed
    CLUSTER = 6  # the Kubernetes API refused or failed a request, or could not be reached
    REGISTRY = 7  # the image registry refused or failed a request
    AUTH = 8  # credentials missing, wrong, or not allowed to do this
    CHECKS_FAILED = 9  # preflight checks ran and at least one FAILed (migrate doctor)
    PARTIAL = 10  # the command did part of its work; the report says which part
    NO_MATCH = 11  # a search ran and found nothing (grep's 1; 1 is taken by "bug" here)
    INTERRUPTED = 130  # Ctrl-C


class MigrateError(Exception):
    """Base of every error the tool reports to a user."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MigrateError):
    """The command line asks for something contradictory or impossible."""

    exit_code = ExitCode.USAGE


class InputError(MigrateError):
    """Input data (a file the user gave us) is malformed or unsupported."""

    exit_code = ExitCode.INVALID_INPUT


class ArchiveError(InputError):
    """A checkpoint archive, or one of its members, cannot be read.

    ``member`` names the archive member at fault so that the message can point
    at it; it is part of the message already.
    """

    def __init__(
        self, archive: str, message: str, hint: str | None = None, member: str | None = None
    ) -> None:
        where = f"{archive}: {member}" if member else archive
        super().__init__(f"{where}: {message}", hint)
        self.archive = archive
        self.member = member


class UnsafeArchiveError(ArchiveError):
    """An archive entry would escape the extraction directory (.., absolute, link out)."""


class NotFoundError(MigrateError):
    """A named thing (file, member, process) does not exist."""

    exit_code = ExitCode.NOT_FOUND


class MissingMemberError(ArchiveError):
    """A member the operation needs is absent from the archive (a malformed archive)."""


class DependencyError(MigrateError):
    """An external program the tool drives is missing or failed."""

    exit_code = ExitCode.DEPENDENCY


class Transient(MigrateError):
    """Mixed into errors worth retrying; ``retry_after`` is the server's Retry-After (s).

    It sets no exit code: the error it is mixed with (cluster, registry) decides.
    """

    def __init__(self, message: str, hint: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


class ClusterError(MigrateError):
    """The Kubernetes API answered with an error, or could not be reached."""

    exit_code = ExitCode.CLUSTER


class ConflictError(ClusterError):
    """409 Conflict: someone else changed the object since it was read (a
    resourceVersion precondition failed); read it again and decide again."""


class AlreadyExistsError(ClusterError):
    """409 AlreadyExists: an object of that name is there already."""


class InvalidError(ClusterError):
    """400 BadRequest or 422 Invalid: the API server refused the request itself (a
    selector it cannot parse, an object its validation rejects)."""


class WatchTimeout(ClusterError):
    """What a watch waited for did not happen in time."""


class TransientClusterError(Transient, ClusterError):
    """A Kubernetes failure worth retrying: connection error, 5xx, 429."""


class RegistryError(MigrateError):
    """The registry answered with an error, or could not be reached."""

    exit_code = ExitCode.REGISTRY


class TransientRegistryError(Transient, RegistryError):
    """A registry failure worth retrying: connection error, 5xx, 429."""


class AuthError(MigrateError):
    """Credentials are missing or wrong (401), or not allowed this action (403)."""

    exit_code = ExitCode.AUTH


class ChecksFailed(MigrateError):
    """Preflight checks ran to the end and some failed; the report lists them."""

    exit_code = ExitCode.CHECKS_FAILED


class PartialFailure(MigrateError):
    """Some of the work was done; ``MigrateError.message`` says how much."""

    exit_code = ExitCode.PARTIAL


class RenderError(MigrateError):
    """A document the tool rendered (a manifest, a crictl config) fails its schema.

    That is a bug in the tool, or a source the target version cannot express:
    the document is never printed or written, and the message names the JSON
    path at fault.
    """

    exit_code = ExitCode.ERROR
