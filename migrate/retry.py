"""Named retry policies: transient failures only, limits from settings.

Only errors marked transient (connection failures, timeouts, HTTP 5xx and
429) are retried; any other error, a 401 or 404 say, fails at once. A
``Retry-After`` given by the server is honoured over the backoff.
"""

from __future__ import annotations

import logging

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from migrate.errors import Transient, TransientClusterError, TransientRegistryError
from migrate.settings import RetrySettings

log = logging.getLogger(__name__)


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent or an HTTP date (then we back off)."""
    return float(value) if value and value.isdigit() else None


def backoff(settings: RetrySettings, attempt: int) -> float:
    """Seconds to wait after try ``attempt`` (1-based) failed: ``initial_wait`` doubling,
    at most ``max_wait``; what the named policies wait when no Retry-After is given."""
    return float(min(settings.initial_wait * 2 ** (attempt - 1), settings.max_wait))


class _RetryAfterOrBackoff(wait_base):
    def __init__(self, settings: RetrySettings) -> None:
        self.settings = settings
        self.max_wait = settings.max_wait

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        return backoff(self.settings, retry_state.attempt_number)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("retrying after attempt %d failed: %s", state.attempt_number, exc)


def _policy(transient: type[Exception], settings: RetrySettings) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(transient),
        stop=stop_after_attempt(settings.attempts),
        wait=_RetryAfterOrBackoff(settings),
        before_sleep=_log_retry,
        reraise=True,
    )


def registry_policy(settings: RetrySettings) -> Retrying:
    """Retry a registry request (or a whole blob upload) on transient failures."""
    return _policy(TransientRegistryError, settings)


def cluster_policy(settings: RetrySettings) -> Retrying:
    """Retry a Kubernetes API call on transient failures (reads and idempotent writes)."""
    return _policy(TransientClusterError, settings)
