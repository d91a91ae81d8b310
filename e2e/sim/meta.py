"""Object metadata helpers: timestamps, names, labels, and their validation.

The rules are the API server's (k8s.io/apimachinery validation): DNS-1123
labels and subdomains for names, qualified names for label and annotation keys,
63-character label values. Errors come back as `FieldError`s so a resource's
validator can collect them all and answer one 422.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import string
from collections.abc import Mapping
from typing import Any

from e2e.nodes.api import now, rfc3339
from e2e.sim.errors import FieldError

__all__ = [
    "generate_name",
    "human_duration",
    "now",
    "parse_time",
    "rfc3339",
    "validate_dns_label",
    "validate_dns_subdomain",
    "validate_metadata",
]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# The API server's generateName suffix: 5 characters without vowels or
# look-alikes (k8s.io/apimachinery/pkg/util/rand), so names never spell words.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_GENERATED_PREFIX = 63 - 5


def parse_time(value: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp as the API server writes them."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def human_duration(seconds: float) -> str:
    """Age as kubectl prints it (apimachinery's duration.HumanDuration): 5s, 3m20s, 2d."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def generate_name(prefix: str) -> str:
    """`prefix` + 5 random characters, the prefix cut so the result fits a DNS label."""
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
    return prefix[:_MAX_GENERATED_PREFIX] + suffix


def validate_dns_label(value: str, path: str) -> list[FieldError]:
    """RFC 1123 label: at most 63 lower-case alphanumerics or '-', alphanumeric at both ends."""
    if len(value) > 63:
        return [FieldError("Invalid", path, "must be no more than 63 characters", value)]
    if not _DNS_LABEL.match(value):
        return [FieldError(
            "Invalid", path,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
            "or '-', and must start and end with an alphanumeric character", value)]
    return []


def validate_dns_subdomain(value: str, path: str) -> list[FieldError]:
    """RFC 1123 subdomain: at most 253 characters, dot-separated labels."""
    if len(value) > 253:
        return [FieldError("Invalid", path, "must be no more than 253 characters", value)]
    if not _DNS_SUBDOMAIN.match(value):
        return [FieldError(
            "Invalid", path,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character",
            value)]
    return []


def _validate_qualified_name(key: str, path: str) -> list[FieldError]:
    prefix, slash, name = key.rpartition("/")
    errors: list[FieldError] = []
    if slash and (not prefix or validate_dns_subdomain(prefix, path)):
        errors.append(FieldError("Invalid", path, "prefix part must be a DNS subdomain", key))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        errors.append(FieldError(
            "Invalid", path,
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (at most 63 characters)", key))
    return errors


def _validate_labels(labels: Any, path: str) -> list[FieldError]:
    if not isinstance(labels, Mapping):
        return [FieldError("Invalid", path, "must be a map of strings", labels)]
    errors: list[FieldError] = []
    for key, value in labels.items():
        errors += _validate_qualified_name(str(key), path)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            errors.append(FieldError(
                "Invalid", f"{path}", "a valid label must be an empty string or consist of "
                "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (at most 63 characters)", value))
    return errors


def _validate_annotations(annotations: Any, path: str) -> list[FieldError]:
    if not isinstance(annotations, Mapping):
        return [FieldError("Invalid", path, "must be a map of strings", annotations)]
    errors: list[FieldError] = []
    for key, value in annotations.items():
        errors += _validate_qualified_name(str(key), path)
        if not isinstance(value, str):
            errors.append(FieldError("Invalid", f"{path}.{key}", "must be a string", value))
    total = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
    if total > 256 * 1024:
        errors.append(FieldError("Invalid", path, "may not be more than 262144 bytes", "..."))
    return errors


def validate_metadata(meta: Mapping[str, Any], *, dns_label_name: bool = False) -> list[FieldError]:
    """Name (label or subdomain), labels and annotations of `metadata`."""
    errors: list[FieldError] = []
    name = meta.get("name")
    if not name:
        errors.append(FieldError("Required", "metadata.name", "name or generateName is required"))
    elif dns_label_name:
        errors += validate_dns_label(str(name), "metadata.name")
    else:
        errors += validate_dns_subdomain(str(name), "metadata.name")
    if "labels" in meta and meta["labels"] is not None:
        errors += _validate_labels(meta["labels"], "metadata.labels")
    if "annotations" in meta and meta["annotations"] is not None:
        errors += _validate_annotations(meta["annotations"], "metadata.annotations")
    return errors


def random_hex(n: int = 32) -> str:
    """`n` random hex characters (container IDs, machine IDs)."""
    return "".join(secrets.choice(string.hexdigits[:16]) for _ in range(n))
