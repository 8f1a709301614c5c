"""The rules one request lives by: how a URL shows in messages (never its query string:
signed URLs carry tokens there), which origin a credential belongs to, how long
``Retry-After`` makes us wait, and the signals that steer a download (retry, restart, back
to one stream, on to parts)."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

REDIRECTS = (301, 302, 303, 307, 308)


def where(url: str) -> str:
    """The URL as messages show it: scheme, host and path; no query, fragment or userinfo."""
    u = urlsplit(url)
    host = u.hostname or ""
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{host}{port}{u.path}"


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port


def _retry_after(value: str | None, cap: float) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(cap, seconds))


class _Restart(Exception):
    """The server will not continue where we stopped: start the file again."""


class _NoRanges(Exception):
    """A part was not answered with the range it asked for: back to one stream."""


class _GoParallel(Exception):
    """The first answer showed a large file and range support: fetch it in parts."""


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
