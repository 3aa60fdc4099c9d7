"""Download a weights file into a local cache, checked, atomically and resumably.

    cache_dir() -> Path     $PPCLS_CACHE_DIR, else $XDG_CACHE_HOME/ppcls/weights,
                            else ~/.cache/ppcls/weights
    fetch(url, sha256=None, progress=True, retries=3) -> Path

Cache layout: one file per URL at

    cache_dir() / <host>[_<port>] / <directories of the URL path> / <file name>

e.g. https://huggingface.co/timm/mnasnet_100.rmsp_in1k/resolve/main/model.safetensors ->
cache_dir()/huggingface.co/timm/mnasnet_100.rmsp_in1k/resolve/main/model.safetensors, so two
repositories' `model.safetensors` never share a file. Each path segment is URL-decoded;
characters a file name cannot hold (`/ \\ : * ? " < > |`, control characters) and `%`
itself are %-escaped again, so the mapping stays one-to-one. The query string and the
scheme do not count: http and https URLs of the same path share a file.

A download goes to `<file>.part` next to the final file and is renamed onto it only when
complete and verified, so the final name never holds a partial file. A `.part` left by a
failed or interrupted run is resumed with an HTTP Range request by the next one.

The expected SHA-256 is the `sha256` argument, or else the hex prefix torchvision puts in
its file names (`<name>-<at least 8 hex digits>.<ext>`): the digest must start with it.

Not handled: two processes fetching the same URL at once share the `.part` file; let one
rank download (e.g. rank 0 before a barrier) and the others wait for it.
"""

import hashlib
import http.client
import os
import posixpath
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ppcls.utils import logger
from ppcls.utils.errors import WeightsError

TIMEOUT = 30        # seconds without data before a connection counts as failed
BACKOFF = 0.5       # seconds before the first retry, doubled for each further one
CHUNK = 1 << 16
USER_AGENT = "ppcls-weights-download"

# Errors of the network, as opposed to those of the local disk (which propagate as they are).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError, ssl.SSLError, socket.gaierror)
_UNSAFE = set('/\\:*?"<>|%')
_TORCHVISION_NAME = re.compile(r".*-([0-9a-fA-F]{8,64})")


def cache_dir():
    """Where downloaded weights go (see the module docstring)."""
    if os.environ.get("PPCLS_CACHE_DIR"):
        return Path(os.environ["PPCLS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ppcls" / "weights"


def fetch(url, sha256=None, progress=True, retries=3):
    """The local path of the file at `url`, downloaded into `cache_dir()` unless already
    there. Raises WeightsError, with a one-line message, when it cannot be downloaded or
    its SHA-256 is not the expected one."""
    target = cache_path(url)
    expected = _expected_digest(target.name, sha256)
    if target.exists():
        _check_cached(target, expected)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    logger.info("downloading %s -> %s", url, target)
    _download_with_retries(url, part, target, progress, max(0, retries))
    actual = _file_sha256(part)
    if expected and not actual.startswith(expected):
        part.unlink()
        raise WeightsError(
            f"the download of {url} has SHA-256 {actual}, expected {_describe(expected)}; "
            f"the downloaded file was deleted: try again, and if it fails the same way the "
            f"server holds a different file (check the URL and the sha256 given)")
    os.replace(part, target)
    logger.info("downloaded %s (%d bytes, sha256 %s)", target, target.stat().st_size, actual)
    return target


def cache_path(url):
    """The file `url` is cached as; a WeightsError for URLs that are not http(s) or name no
    file."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WeightsError(f"cannot download {url}: the {parts.scheme or 'missing'!r} scheme "
                           f"is not supported, only http and https")
    if not parts.hostname or not parts.path or parts.path.endswith("/"):
        raise WeightsError(f"cannot download {url}: the URL names no file")
    # normpath resolves '.' and '..' the way a server would; empty segments are dropped
    segments = [s for s in posixpath.normpath(parts.path).split("/") if s]
    host = _safe(parts.hostname) + (f"_{parts.port}" if parts.port else "")
    return cache_dir().joinpath(host, *(_safe(urllib.parse.unquote(s)) for s in segments))


def _safe(text):
    """`text` as one path component: %-escape what a file name cannot hold, and `%`."""
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return "".join(urllib.parse.quote(c, safe="") if c in _UNSAFE or not c.isprintable()
                   else c for c in text)


def _expected_digest(name, sha256):
    """The full or prefix hex digest the file must have, or None."""
    if sha256 is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise WeightsError(f"sha256 must be 64 hex digits, got {sha256!r}")
        return sha256.lower()
    match = _TORCHVISION_NAME.fullmatch(name.rsplit(".", 1)[0] if "." in name else name)
    return match.group(1).lower() if match else None


def _describe(expected):
    if len(expected) == 64:
        return expected
    return f"a digest starting with {expected} (from the file name)"


def _check_cached(target, expected):
    """A cached file with the wrong digest did not come from fetch (it verifies before it
    renames): do not delete what may be a user's copy, say what is wrong."""
    if expected:
        actual = _file_sha256(target)
        if not actual.startswith(expected):
            raise WeightsError(
                f"the cached file {target} has SHA-256 {actual}, expected "
                f"{_describe(expected)}: delete it to download it again")


def _file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # reads in blocks


def _download_with_retries(url, part, target, progress, retries):
    """Run transfers until one completes; a 4xx answer is final, other network failures
    are retried after a growing pause, each retry resuming from the `.part` bytes."""
    for attempt in range(retries + 1):
        try:
            return _transfer(url, part, progress)
        except _NETWORK_ERRORS as err:
            if isinstance(err, urllib.error.HTTPError):
                err.close()
            final = isinstance(err, urllib.error.HTTPError) and err.code < 500
            if final or attempt == retries:
                raise _failure(url, target, part, _reason(err), attempt + 1) from err
            pause = BACKOFF * 2 ** attempt
            logger.warning("download of %s failed (%s); retry %d of %d in %g s",
                           url, _reason(err), attempt + 1, retries, pause)
            time.sleep(pause)


def _transfer(url, part, progress):
    """One request: append to `part` if the server honours the Range asked for, else
    rewrite it. Raises IncompleteRead if the connection ends before the announced size."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part is complete or longer than the file
            err.close()
            part.unlink()
            return _transfer(url, part, progress)
        raise
    with response:
        start, total = _resume_point(response, have)
        if start is None:  # a 206 for other bytes than asked
            if not have:
                raise http.client.HTTPException("a 206 answer to a request without Range")
            part.unlink()  # start over
            return _transfer(url, part, progress)
        with open(part, "ab" if start else "wb") as f:
            done = _copy(response, f, start, total, progress)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename publishes them
    if total is not None and done != total:
        raise http.client.IncompleteRead(b"", total - done)


def _resume_point(response, have):
    """(offset the body starts at, total size or None); offset None if a 206 answer does
    not continue at `have`."""
    length = response.headers.get("Content-Length")
    if response.status != 206:
        return 0, int(length) if length else None
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:
        return None, None
    if match.group(2) != "*":
        return have, int(match.group(2))
    return have, have + int(length) if length else None


def _copy(response, f, done, total, progress):
    """Copy the body into `f`; returns the size of the file afterwards."""
    bar = _ProgressBar(total, enabled=progress)
    try:
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                return done
            f.write(chunk)
            done += len(chunk)
            bar.update(done)
    finally:
        bar.close()


class _ProgressBar:
    """A one-line bar on stderr when it is a terminal and the size is known; elsewhere
    silent (the log has a line at the start and at the end)."""

    def __init__(self, total, enabled):
        self.total = total
        self.enabled = bool(enabled and total and sys.stderr.isatty())
        self.shown = 0.0

    def update(self, done):
        now = time.monotonic()
        if not self.enabled or (now - self.shown < 0.1 and done < self.total):
            return
        self.shown = now
        filled = 30 * done // self.total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {100 * done // self.total:3d}%"
                         f" {done / 1e6:.1f}/{self.total / 1e6:.1f} MB")
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _reason(err):
    """A short, one-line cause of a network error."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    cause = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ConnectionResetError):
        return "connection reset"
    if isinstance(cause, socket.gaierror):
        return f"host not found ({cause.strerror})"
    if isinstance(cause, TimeoutError):
        return f"no data for {TIMEOUT} s"
    if isinstance(cause, http.client.IncompleteRead):
        return f"connection closed with {cause.expected} bytes missing"
    return " ".join(str(cause).split()) or type(cause).__name__


def _failure(url, target, part, reason, attempts):
    kept = (f"; the {part.stat().st_size} bytes received are kept in {part.name} and the "
            f"next run resumes" if part.exists() and part.stat().st_size else "")
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    return WeightsError(
        f"cannot download {url}: {reason}{tries}; to use a copy you already have, put it at "
        f"{target} (the cache directory is $PPCLS_CACHE_DIR if set){kept}")
