"""What every record we write carries: the versions of the packages that produced it and a UTC time stamp."""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
COMPACT_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # for file names and run ids


def package_versions(*names: str) -> dict[str, str | None]:
    """{distribution name: installed version, or None when it is not installed}, in the order given."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def utc_timestamp() -> str:
    """Now, as `2026-01-31T12:00:00Z`."""
    return datetime.now(timezone.utc).strftime(TIMESTAMP_FORMAT)


def compact_utc_timestamp() -> str:
    """Now, as `20260131T120000Z` (fits a file name)."""
    return datetime.now(timezone.utc).strftime(COMPACT_TIMESTAMP_FORMAT)
