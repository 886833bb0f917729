"""Fetching a data file into the cache: download with a timeout, verify its md5, write atomically.

Two limits keep a download from hanging: ``timeout`` (seconds to connect, or to wait for the
next bytes: a silent server) and ``deadline`` (seconds for the whole download: a server that
trickles bytes), by default ``$PLUGLEARN_DOWNLOAD_DEADLINE`` or :data:`DEFAULT_DEADLINE`. The
deadline is checked as bytes arrive, so a download stops at most ``timeout`` seconds after it.

Downloads go through a temporary file that is checked (size, md5) before ``os.replace`` moves it
into the cache, so the cache never holds a partial or corrupt file. Used by
:func:`pluglearn.data.mnist.load_mnist`, whose advice the error messages give.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CACHE_ENV",
    "DEADLINE_ENV",
    "DEFAULT_DEADLINE",
    "URL_ENV",
    "ChecksumError",
    "DownloadError",
    "cache_path",
    "default_cache_dir",
    "fetch",
    "file_name",
    "verify",
]

#: Where load_mnist() reads its default source; a failed download suggests setting it.
URL_ENV = "PLUGLEARN_MNIST_URL"
CACHE_ENV = "PLUGLEARN_CACHE"
#: Seconds a whole download may take, when ``deadline`` is not given (else DEFAULT_DEADLINE).
DEADLINE_ENV = "PLUGLEARN_DOWNLOAD_DEADLINE"
#: 10 minutes: MNIST's 17 MB at 30 KB/s; a slower or stalling server is reported, not awaited.
DEFAULT_DEADLINE = 600.0


class DownloadError(ConnectionError):
    """The file could not be fetched (offline, refused, timed out, HTTP error, truncated)."""


class ChecksumError(ValueError):
    """A file's md5 is not the expected one; a download that fails it is never cached."""


def default_cache_dir() -> Path:
    """``$PLUGLEARN_CACHE``, else ``$XDG_CACHE_HOME/pluglearn``, else ``~/.cache/pluglearn``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pluglearn"


def resolve_deadline(deadline: float | None) -> float:
    """``deadline``, else ``$PLUGLEARN_DOWNLOAD_DEADLINE``, else :data:`DEFAULT_DEADLINE`:
    a positive, finite number of seconds, or an error that names where the bad value came from."""
    source = "deadline"
    if deadline is None:
        text = os.environ.get(DEADLINE_ENV, "").strip()
        if not text:
            return DEFAULT_DEADLINE
        source = f"${DEADLINE_ENV}"
        try:
            deadline = float(text)
        except ValueError:
            deadline = None
    is_number = isinstance(deadline, int | float) and not isinstance(deadline, bool)
    if not (is_number and 0 < deadline < float("inf")):  # type: ignore[operator]
        raise ValueError(
            f"{source} must be a positive, finite number of seconds for a whole download, got "
            f"{deadline if source == 'deadline' else os.environ.get(DEADLINE_ENV)!r}: e.g. 600."
        )
    return float(deadline)  # type: ignore[arg-type]


def fetch(
    url: str, dest: Path, md5: str | None, timeout: float, deadline: float | None = None
) -> Path:
    """Return ``dest``, downloading ``url`` there first unless a verified copy is cached.
    ``deadline``: seconds for the whole download (None: :func:`resolve_deadline`)."""
    deadline = resolve_deadline(deadline)
    if dest.is_file():
        if md5 is None or _md5(dest) == md5.lower():
            return dest
        # A cached file that rotted on disk is repaired rather than trusted or left in the way.
        warnings.warn(f"cached {dest} fails its md5 check; downloading it again", stacklevel=3)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size, expected = _download(url, out, timeout, deadline, dest)
            if expected is not None and size != expected:
                raise DownloadError(
                    f"download of {url} stopped after {size} of {expected} bytes; nothing was"
                    f" cached at {dest}. Retry, or pass a local copy to load_mnist()."
                )
            if md5 is not None and digest != md5.lower():
                raise ChecksumError(
                    f"{url} arrived with md5 {digest}, expected {md5.lower()}: the file is"
                    f" corrupt or not the expected one, so nothing was cached at {dest}. Retry,"
                    f" use another mirror, or pass the right md5= if the file changed on purpose."
                )
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _download(
    url: str, out: BinaryIO, timeout: float, deadline: float, dest: Path
) -> tuple[str, int, int | None]:
    """Stream ``url`` into ``out``; return (md5 hex, bytes read, Content-Length or None)."""
    digest, size, length = hashlib.md5(usedforsecurity=False), 0, None
    request = urllib.request.Request(url, headers={"User-Agent": "pluglearn"})
    end, late = time.monotonic() + deadline, False
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            # read1: what has arrived (one receive), so the deadline is checked between arrivals
            while chunk := response.read1(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if late := time.monotonic() > end:
                    break
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets
        reason = getattr(error, "reason", None) or error
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        raise DownloadError(
            f"could not download {url} ({reason}). Nothing was cached at {dest}. To work"
            f" offline, fetch the file elsewhere and pass its path to load_mnist() (or set"
            f" {URL_ENV} to that path or to a reachable mirror), or place it at {dest}."
        ) from error
    expected = int(length) if length and length.isdigit() else None
    if late and (expected is None or size < expected):
        of = f" of {expected}" if expected is not None else ""
        raise DownloadError(
            f"download of {url} passed its {deadline:g} s deadline with {size}{of} bytes"
            f" received: the server is too slow. Nothing was cached at {dest}. Retry later,"
            f" allow more time (load_mnist(deadline=...) or ${DEADLINE_ENV}), or fetch the file"
            " elsewhere and pass its path to load_mnist()."
        )
    return digest.hexdigest(), size, expected


def cache_path(cache: Path, url: str) -> Path:
    """One folder per URL, so two sources with the same file name never share a cache entry."""
    return cache / "mnist" / hashlib.sha256(url.encode()).hexdigest()[:16]


def file_name(url_path: str) -> str:
    """A safe local file name from the last segment of a URL path."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.unquote(url_path.rsplit("/", 1)[-1]))
    return name.lstrip(".") or "download"


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, md5: str | None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the md5 ``md5`` (None: no check)."""
    if md5 is not None and (got := _md5(path)) != md5.lower():
        raise ChecksumError(
            f"{path} has md5 {got}, expected {md5.lower()}: the file is corrupt or another"
            f" file; replace it, or pass the right md5= (or none)."
        )
