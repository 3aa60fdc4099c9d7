"""Download a weights file into a local cache, checked, atomically and resumably.

    cache_dir() -> Path     the cache root's weights/ folder (ppcls/utils/cache.py):
                            $PPCLS_CACHE_DIR/weights, else $XDG_CACHE_HOME/ppcls/weights,
                            else ~/.cache/ppcls/weights
    fetch(url, sha256=None, progress=True, retries=3, max_bytes=None) -> Path

Cache layout: one file per URL at

    cache_dir() / <host>[_<port>] / <directories of the URL path> / <file name>

e.g. https://huggingface.co/<owner>/<repository>/resolve/main/model.safetensors ->
cache_dir()/huggingface.co/<owner>/<repository>/resolve/main/model.safetensors, so two
repositories' `model.safetensors` never share a file. Each path segment is URL-decoded;
characters a file name cannot hold (`/ \\ : * ? " < > |`, control characters) and `%`
itself are %-escaped again, so the mapping stays one-to-one. The query string and the
scheme do not count: http and https URLs of the same path share a file. A segment longer
than 128 bytes becomes its first 64 bytes, `%~`, 32 hex digits of its SHA-256 and its
extension (`%~` never comes out of the escaping, so no other URL maps onto it); when the
path below the host would still pass 1024 bytes, its directories become one such segment.
Every name then fits the tightest common file-name limit (eCryptfs's 143 bytes) and the
path stays far below PATH_MAX.

A download goes to `<file>.part` next to the final file and is renamed onto it only when
complete and verified, so the final name never holds a partial file. A `.part` left by a
failed or interrupted run is resumed with an HTTP Range request by the next one.

Verified means: the content starts like a weights file (formats.sniff: a zip, torch.save or
numpy .npz; a pickle, Paddle's .pdparams or a legacy torch.save; safetensors), so a web page
or a JSON error answered with 200 is refused and not cached; and its SHA-256 is the expected
one. The expected SHA-256 is the `sha256` argument, or else the hex prefix torch.hub's file
names carry (`<name>-<at least 8 hex digits>.<ext>`): the digest must start with it.
Without either, the download logs its SHA-256 so that it can be pinned (the `sha256`
argument, or the `sha256` of the weights record that names the URL).

Bounds, whatever the server does (each refusal is one WeightsError line):
    size        `max_bytes` (a record's published size with some to spare), else
                $PPCLS_DOWNLOAD_MAX_MB (default 1024; MB of 2**20 bytes). An announced
                larger size is refused before reading; a body that passes it is cut off
                and deleted.
    time        $PPCLS_DOWNLOAD_DEADLINE seconds (default 3600) for the whole download,
                retries included; besides, TIMEOUT seconds without any data fail a read.
                Past the deadline the sockets are shut, so a server sending a byte now and
                then cannot hold the download; the bytes received are kept for the next run.
    redirects   followed to http and https only (not ftp://, file://, ...), and never from
                https down to http: one line names both URLs. Other hosts are allowed (the
                hubs hand files to CDNs) and logged, without their query strings.

Not handled: two processes fetching the same URL at once share the `.part` file; let one
rank download (e.g. rank 0 before a barrier) and the others wait for it.
"""

import errno
import hashlib
import http.client
import math
import os
import posixpath
import re
import shutil
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple, Optional

from ppcls.utils import cache, logger
from ppcls.utils.errors import ConfigError, WeightsError
from ppcls.weights.formats import SNIFFED, read_head, sniff

TIMEOUT = 30        # seconds without data before a connection counts as failed
BACKOFF = 0.5       # seconds before the first retry, doubled for each further one
CHUNK = 1 << 16
USER_AGENT = "ppcls-weights-download"
MAX_MB = "PPCLS_DOWNLOAD_MAX_MB"
DEFAULT_MAX_MB = 1024.0  # 40 times the largest MnasNet file, for URLs without a record
DEADLINE = "PPCLS_DOWNLOAD_DEADLINE"
DEFAULT_DEADLINE = 3600.0  # an hour: a 1 GB file over a 300 kB/s link

# Errors of the network, as opposed to those of the local disk.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError, ssl.SSLError, socket.gaierror)
_UNSAFE = set('/\\:*?"<>|%')
_HUB_DIGEST_NAME = re.compile(r".*-([0-9a-fA-F]{8,64})")  # torch.hub's <name>-<digest>
_NAME_BYTES = 128  # plus ".part": within eCryptfs's 143-byte names
_PATH_BYTES = 1024
_HASHED = "%~"  # `%` is otherwise always followed by two hex digits


def cache_dir():
    """Where downloaded weights go: the `weights` folder of the one cache rule
    (ppcls/utils/cache.py)."""
    return cache.cache_dir("weights")


class Download(NamedTuple):
    """A file to fetch, with what to check it against (see fetch)."""
    url: str
    sha256: Optional[str] = None
    max_bytes: Optional[int] = None


def fetch(url, sha256=None, progress=True, retries=3, max_bytes=None):
    """The local path of the file at `url`, downloaded into `cache_dir()` unless already
    there. Raises WeightsError, with a one-line message, when it cannot be downloaded, is
    larger than `max_bytes` (or $PPCLS_DOWNLOAD_MAX_MB), is not a weights file, or its
    SHA-256 is not the expected one."""
    target = cache_path(url)
    expected = _expected_digest(_file_name(url), sha256)
    if target.exists():
        _check_cached(target, expected)
        return target
    return _Download(url, target, expected, _Limits(max_bytes), progress).run(max(0, retries))


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
    names = [_bounded(host)] + [_bounded(_safe(urllib.parse.unquote(s))) for s in segments]
    if len("/".join(names[1:]).encode()) > _PATH_BYTES:
        names = [names[0], _hashed("/".join(names[1:-1]), keep_suffix=False), names[-1]]
    return cache_dir().joinpath(*names)


def _file_name(url):
    return urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))


def _safe(text):
    """`text` as one path component: %-escape what a file name cannot hold, and `%`."""
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return "".join(urllib.parse.quote(c, safe="") if c in _UNSAFE or not c.isprintable()
                   else c for c in text)


def _bounded(name):
    return name if len(name.encode()) <= _NAME_BYTES else _hashed(name)


def _hashed(name, keep_suffix=True):
    """A short stand-in for `name` (a path component, or directories joined by "/"): its
    start (readable), `%~`, 128 bits of its SHA-256 (unique), its extension (the file type
    stays visible)."""
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext}" if keep_suffix and dot and stem and 0 < len(ext.encode()) <= 16 else ""
    start = name.encode()[:64].decode("utf-8", "ignore").replace("/", "%2F")
    return f"{start}{_HASHED}{hashlib.sha256(name.encode()).hexdigest()[:32]}{suffix}"


def _expected_digest(name, sha256):
    """The full or prefix hex digest the file must have, or None."""
    if sha256 is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise WeightsError(f"sha256 must be 64 hex digits, got {sha256!r}")
        return sha256.lower()
    match = _HUB_DIGEST_NAME.fullmatch(name.rsplit(".", 1)[0] if "." in name else name)
    return match.group(1).lower() if match else None


def _describe(expected):
    if len(expected) == 64:
        return expected
    return f"a digest starting with {expected} (from the file name)"


def _check_cached(target, expected):
    """A cached file that is not weights, or has the wrong digest, did not come from fetch
    (it verifies before it renames): do not delete what may be a user's copy, say what is
    wrong."""
    head = read_head(target)
    if sniff(head) is None:
        raise WeightsError(f"the cached file {target} is not a weights file (it starts with "
                           f"{head[:32]!r}; expected {SNIFFED}): delete it to "
                           "download it again")
    if expected:
        actual = _file_sha256(target)
        if not actual.startswith(expected):
            raise WeightsError(
                f"the cached file {target} has SHA-256 {actual}, expected "
                f"{_describe(expected)}: delete it to download it again")


def _file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # reads in blocks


# --------------------------------------------------------------------------- limits
def _positive_setting(name, default):
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {text[:40]!r}")
    return value


class _Limits:
    """What one download may take: bytes (`max_bytes`, else $PPCLS_DOWNLOAD_MAX_MB) and
    seconds in all ($PPCLS_DOWNLOAD_DEADLINE), counted from now."""

    def __init__(self, max_bytes):
        if max_bytes is None:
            megabytes = _positive_setting(MAX_MB, DEFAULT_MAX_MB)
            self.max_bytes = math.floor(megabytes * 2**20)
            self.cap = f"the {megabytes:g} MB cap ({MAX_MB})"
            self.advice = f"if the file really is that large, raise {MAX_MB}"
        else:
            self.max_bytes = int(max_bytes)
            self.cap = f"the {self.max_bytes}-byte cap given for it"
            self.advice = "the server sends something else than the expected file"
        self.seconds = _positive_setting(DEADLINE, DEFAULT_DEADLINE)
        self.ends = time.monotonic() + self.seconds

    def remaining(self):
        return self.ends - time.monotonic()


class _TooLarge(Exception):
    pass


class _OutOfTime(Exception):
    pass


class _Refused(Exception):
    """A redirect we do not follow; the message names both URLs."""


class _Watchdog:
    """Shuts the sockets of a transfer when its time is up. The per-read TIMEOUT alone
    lets a server that sends a byte now and then (in the body, the headers or the TLS
    handshake) hold a download forever; a shut socket wakes the blocked read at once."""

    def __init__(self, seconds):
        self.expired = False
        self._sockets, self._lock = [], threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)
        return sock

    def _expire(self):
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def connection_class(self, base):
        """`base` (HTTPConnection or HTTPSConnection) with its socket watched from the
        moment it connects, before any TLS handshake."""
        watchdog = self

        class Watched(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                create = self._create_connection
                self._create_connection = lambda *a, **k: watchdog.watch(create(*a, **k))

        return Watched


def _shut(sock):
    try:  # the socket's own shutdown, under any TLS layer (which must not be touched here)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Watched:
    """Opens connections of the watchdog's class (mixed into urllib's http and https handlers)."""

    def __init__(self, watchdog):
        super().__init__()
        self.watchdog = watchdog

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(self.watchdog.connection_class(http_class), req, **kwargs)


class _WatchedHTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


class _RedirectPolicy(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only, never from https down to http; logged, as the bytes may
    come from another host."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            new = urllib.parse.urljoin(req.full_url, location)
            old_scheme, new_scheme = (urllib.parse.urlsplit(u).scheme for u in (req.full_url, new))
            why = None
            if new_scheme not in ("http", "https"):
                why = "only http and https are followed"
            elif old_scheme == "https" and new_scheme == "http":
                why = "it goes from https to http, which would drop the transport security"
            if why:
                fp.close()
                raise _Refused(f"refused the redirect of {req.full_url} to {new}: {why}")
            logger.info("%s redirects to %s", req.full_url, _without_query(new))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _without_query(url):
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(query="", fragment=""))


# ------------------------------------------------------------------------- download
class _Download:
    """One fetch of `url` into `target`, through `<target>.part`."""

    def __init__(self, url, target, expected, limits, progress):
        self.url, self.target, self.expected = url, target, expected
        self.limits, self.progress = limits, progress
        self.part = target.with_name(target.name + ".part")

    def run(self, retries):
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            logger.info("downloading %s -> %s", self.url, self.target)
            content_type = self._with_retries(retries)
            self._check_content(content_type)
            actual = self._check_digest()
            os.replace(self.part, self.target)
        except OSError as err:  # the local disk's: full, read-only, a file where a folder is
            raise self._disk_failure(err) from None
        except _TooLarge as err:
            _remove(self.part)  # its bytes are of no use
            raise WeightsError(f"refused {self.url}: {err}, more than {self.limits.cap}; "
                               f"nothing was kept: {self.limits.advice}") from None
        except _OutOfTime:
            raise self._failure(f"not finished within {self.limits.seconds:g} s, the limit "
                                f"set by {DEADLINE} (default {DEFAULT_DEADLINE:g}); raise it "
                                "for a slow link") from None
        except _Refused as err:
            raise WeightsError(f"cannot download {self.url}: {err}; to use a copy you "
                               f"already have, put it at {self.target}") from None
        self._log_done(actual)
        return self.target

    def _with_retries(self, retries):
        """Run transfers until one completes (returning its Content-Type); a 4xx answer is
        final, other network failures are retried after a growing pause, each retry
        resuming from the `.part` bytes."""
        for attempt in range(retries + 1):
            try:
                return self._transfer()
            except _NETWORK_ERRORS as err:
                if isinstance(err, urllib.error.HTTPError):
                    err.close()
                final = isinstance(err, urllib.error.HTTPError) and err.code < 500
                if final or attempt == retries:
                    raise self._failure(_reason(err), attempt + 1) from err
                pause = BACKOFF * 2 ** attempt
                if pause >= self.limits.remaining():
                    raise _OutOfTime() from err
                logger.warning("download of %s failed (%s); retry %d of %d in %g s",
                               self.url, _reason(err), attempt + 1, retries, pause)
                time.sleep(pause)

    def _transfer(self):
        """One request under the deadline's watchdog."""
        remaining = self.limits.remaining()
        if remaining <= 0:
            raise _OutOfTime()
        with _Watchdog(remaining) as watchdog:
            try:
                content_type = self._request(watchdog)
            except _NETWORK_ERRORS as err:
                if watchdog.expired:  # the shut socket, not the server, ended it
                    raise _OutOfTime() from err
                raise
            if watchdog.expired:  # an EOF from the shut socket is no complete body
                raise _OutOfTime()
            return content_type

    def _request(self, watchdog):
        """Append to `.part` if the server honours the Range asked for, else rewrite it.
        Raises IncompleteRead if the connection ends before the announced size."""
        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
        opener = urllib.request.build_opener(_WatchedHTTP(watchdog), _WatchedHTTPS(watchdog),
                                             _RedirectPolicy())
        try:
            response = opener.open(urllib.request.Request(self.url, headers=headers),
                                   timeout=TIMEOUT)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # the part is complete or longer than the file
                err.close()
                self.part.unlink()
                return self._transfer()
            raise
        with response:
            start, total = _resume_point(response, have)
            if start is None:  # a 206 for other bytes than asked
                if not have:
                    raise http.client.HTTPException("a 206 answer to a request without Range")
                self.part.unlink()  # start over
                return self._transfer()
            if total is not None and total > self.limits.max_bytes:
                raise _TooLarge(f"it announces {total} bytes")
            with open(self.part, "ab" if start else "wb") as f:
                done = self._copy(response, f, start, total)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the rename publishes them
        if total is not None and done != total and not watchdog.expired:
            raise http.client.IncompleteRead(b"", total - done)
        return response.headers.get("Content-Type")

    def _copy(self, response, f, done, total):
        """Copy the body into `f`, as it arrives; returns the size of the file afterwards."""
        bar = _ProgressBar(total, enabled=self.progress)
        try:
            while True:
                chunk = response.read1(CHUNK)
                if not chunk:
                    return done
                f.write(chunk)
                done += len(chunk)
                if done > self.limits.max_bytes:
                    raise _TooLarge(f"the server sent over {done} bytes and was cut off")
                bar.update(done)
        finally:
            bar.close()

    def _check_content(self, content_type):
        """Only weights are cached: a login page or a JSON error answered with 200 is not."""
        head = read_head(self.part)
        if sniff(head) is None:
            _remove(self.part)
            raise WeightsError(
                f"refused {self.url}: the server answered with Content-Type "
                f"{content_type or '(none)'} and a body starting {head[:32]!r}, which is not "
                f"a weights file ({SNIFFED}); nothing was cached: check the URL (a "
                "web page, such as a login or error page, often comes instead of the file)")

    def _check_digest(self):
        actual = _file_sha256(self.part)
        if self.expected and not actual.startswith(self.expected):
            self.part.unlink()
            raise WeightsError(
                f"the download of {self.url} has SHA-256 {actual}, expected "
                f"{_describe(self.expected)}; the downloaded file was deleted: try again, and "
                f"if it fails the same way the server holds a different file (check the URL "
                f"and the sha256 given)")
        return actual

    def _log_done(self, actual):
        logger.info("downloaded %s (%d bytes, sha256 %s)", self.target,
                    self.target.stat().st_size, actual)
        if not self.expected:
            logger.info("%s publishes no SHA-256 to check it against: it has sha256=%s; to "
                        "pin it, pass that as the sha256 of fetch() or of the weights record "
                        "that names this URL", self.url, actual)

    def _failure(self, reason, attempts=1):
        kept = (f"; the {self.part.stat().st_size} bytes received are kept in "
                f"{self.part.name} and the next run resumes"
                if self.part.exists() and self.part.stat().st_size else "")
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return WeightsError(
            f"cannot download {self.url}: {reason}{tries}; to use a copy you already have, put "
            f"it at {self.target} (the weights cache; $PPCLS_CACHE_DIR moves its root){kept}")

    def _disk_failure(self, err):
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            _remove(self.part)  # a full disk needs its space back more than a resume
            free = _free_bytes(self.part.parent)
            return WeightsError(
                f"cannot download {self.url}: no space left on the disk of {self.part.parent}"
                f"{f' ({free / 1e6:.1f} MB free)' if free is not None else ''}; the partial "
                "download was deleted: free space there, or set PPCLS_CACHE_DIR to a "
                "directory on a disk with room")
        return WeightsError(
            f"cannot download {self.url}: cannot write {err.filename or self.part}: "
            f"{err.strerror or err}; set PPCLS_CACHE_DIR to a directory you can write to")


def _remove(path):
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _free_bytes(directory):
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _resume_point(response, have):
    """(offset the body starts at, total size or None); offset None if a 206 answer does
    not continue at `have`."""
    length = _byte_count(response.headers.get("Content-Length"))
    if response.status != 206:
        return 0, length
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:
        return None, None
    if match.group(2) != "*":
        return have, int(match.group(2))
    return have, have + length if length is not None else None


def _byte_count(header):
    """A Content-Length as an int, or None when absent or not a number."""
    header = (header or "").strip()
    return int(header) if header.isdigit() and header.isascii() else None


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
