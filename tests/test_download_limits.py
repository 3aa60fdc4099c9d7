"""What a download refuses, against real servers on 127.0.0.1 that misbehave on purpose: a
body that never ends, a body sent one byte a second, redirects to other schemes and hosts,
a web page where the weights should be, a file name too long for the disk, a full disk."""

import functools
import hashlib
import os
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import config_args, digits_overrides
from ppcls.utils.cli import run
from ppcls.utils.config import parse_args
from ppcls.utils.errors import ConfigError, WeightsError
from ppcls.weights import download
from ppcls.weights.download import cache_dir, cache_path, fetch
from ppcls.weights.formats import weights_format
from tools import eval as eval_tool

# A body that starts like a pickle (Paddle's .pdparams): the format check lets it through.
WEIGHTS = b"\x80\x04\x95" + bytes(range(256)) * 1200
WEIGHTS_SHA = hashlib.sha256(WEIGHTS).hexdigest()
HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>...</body></html>"


# ----------------------------------------------------------------- a scripted server
class ScriptedHandler(BaseHTTPRequestHandler):
    """Answers each path with its entry of `server.routes` (a function of the handler);
    `server.seen` records (path, Range header) of every request."""

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        self.server.seen.append((path, self.headers.get("Range")))
        route = self.server.routes.get(path)
        if route is None:
            return self.send_error(404)
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def log_message(self, *args):
        pass


def body(data, content_type="application/octet-stream"):
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return answer


def endless(handler):
    """200 without a Content-Length, then weights-like bytes until the client hangs up, or
    64 MiB: to the client it never ends (every cap here is far below), and a client with
    no cap fails the test instead of filling the disk."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.end_headers()
    handler.wfile.write(WEIGHTS[:3])
    for _ in range(1024):
        handler.wfile.write(bytes(1 << 16))


def drip(data, seconds_per_byte=1.0):
    """The announced length, one byte a second: never idle long enough for a read timeout."""
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for i in range(len(data)):
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()
            time.sleep(seconds_per_byte)
    return answer


def redirect(location):
    def answer(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


def start(httpd):
    httpd.routes, httpd.seen = {}, []
    httpd.url = lambda path: f"{httpd.scheme}://127.0.0.1:{httpd.server_port}{path}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return httpd, thread


def stop(httpd, thread):
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    httpd.scheme = "http"
    httpd, thread = start(httpd)
    yield httpd
    stop(httpd, thread)


def finishes(call, guard=60):
    """`call()`'s exception (or None), failing if it is still running after `guard` s: the
    bug these tests pin is a download that never ends."""
    outcome = []

    def target():
        try:
            call()
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(guard)
    assert outcome, f"the download was still running after {guard} s"
    return outcome[0]


def one_line(err):
    assert isinstance(err, WeightsError), repr(err)
    message = str(err)
    assert "\n" not in message
    return message


def cached_files():
    return sorted(str(p.relative_to(cache_dir())) for p in cache_dir().rglob("*") if p.is_file())


# ------------------------------------------------------------------------ size cap
def test_endless_body_stops_at_the_size_cap(scripted, monkeypatch):
    monkeypatch.setenv("PPCLS_DOWNLOAD_MAX_MB", "0.25")
    scripted.routes["/w/model.pdparams"] = endless
    url = scripted.url("/w/model.pdparams")
    message = one_line(finishes(lambda: fetch(url)))
    assert url in message and "0.25 MB" in message and "PPCLS_DOWNLOAD_MAX_MB" in message
    assert cached_files() == []  # the .part is deleted too: its bytes are of no use
    assert len(scripted.seen) == 1  # not retried


def test_announced_size_over_the_cap_is_refused_before_reading(scripted):
    scripted.routes["/w/model.pdparams"] = body(WEIGHTS)
    url = scripted.url("/w/model.pdparams")
    message = one_line(finishes(lambda: fetch(url, max_bytes=100_000)))
    assert f"announces {len(WEIGHTS)} bytes" in message and "100000" in message
    assert cached_files() == []
    assert len(scripted.seen) == 1


def test_invalid_cap_setting_is_named(scripted, monkeypatch):
    monkeypatch.setenv("PPCLS_DOWNLOAD_MAX_MB", "lots")
    scripted.routes["/w/model.pdparams"] = body(WEIGHTS)
    with pytest.raises(ConfigError, match="PPCLS_DOWNLOAD_MAX_MB.*'lots'") as info:
        fetch(scripted.url("/w/model.pdparams"))
    assert "\n" not in str(info.value)
    assert scripted.seen == []


# ------------------------------------------------------------------------ deadline
def test_slow_drip_stops_at_the_overall_deadline(scripted, monkeypatch):
    """One byte a second never trips the 30 s read timeout; the deadline (1 s here) stops
    it, and the bytes received are kept for the next run to resume."""
    monkeypatch.setenv("PPCLS_DOWNLOAD_DEADLINE", "1")
    scripted.routes["/w/model.pdparams"] = drip(WEIGHTS[:1000])
    url = scripted.url("/w/model.pdparams")
    message = one_line(finishes(lambda: fetch(url)))
    assert url in message and "1 s" in message and "PPCLS_DOWNLOAD_DEADLINE" in message
    assert "resumes" in message
    assert len(scripted.seen) == 1  # out of time: not retried
    assert not cache_path(url).exists()


# ----------------------------------------------------------------------- redirects
@pytest.mark.parametrize("location", ["ftp://127.0.0.1:9/w/model.pdparams",
                                      "file:///etc/passwd"])
def test_redirect_to_another_scheme_is_refused(scripted, location):
    scripted.routes["/w/model.pdparams"] = redirect(location)
    url = scripted.url("/w/model.pdparams")
    message = one_line(finishes(lambda: fetch(url)))
    assert url in message and location in message and "only http and https" in message
    assert len(scripted.seen) == 1
    assert cached_files() == []


def test_redirect_to_another_host_is_followed_logged_and_resumed(scripted, server, capsys):
    """HF and download.pytorch.org hand the file to a CDN host: followed, with a log line
    naming where the bytes come from; a cut transfer resumes through the redirect."""
    (server.root / "blob").write_bytes(WEIGHTS)
    scripted.routes["/w/model.pdparams"] = redirect(server.url("blob") + "?signature=secret")
    server.plan = ["cut"]
    url = scripted.url("/w/model.pdparams")
    path = fetch(url, sha256=WEIGHTS_SHA)
    assert path == cache_path(url) and path.read_bytes() == WEIGHTS
    assert server.ranges == [None, f"bytes={len(WEIGHTS) // 2}-"]
    out = capsys.readouterr().out
    assert f"{url} redirects to {server.url('blob')}" in out
    assert "secret" not in out  # signed query strings stay out of the log


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An https server on 127.0.0.1 with a certificate made here and trusted through
    SSL_CERT_FILE (read by Python's default SSL context)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                           "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr[-200:]!r}")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.scheme = "https"
    httpd, thread = start(httpd)
    yield httpd
    stop(httpd, thread)


def test_https_redirect_to_plain_http_is_refused(scripted, tls_server):
    tls_server.routes["/w/model.pdparams"] = body(WEIGHTS)
    secure = tls_server.url("/w/model.pdparams")
    assert fetch(secure, sha256=WEIGHTS_SHA).read_bytes() == WEIGHTS  # the TLS setup works
    scripted.routes["/w/model.pdparams"] = body(WEIGHTS)
    tls_server.routes["/w/other.pdparams"] = redirect(scripted.url("/w/model.pdparams"))
    url = tls_server.url("/w/other.pdparams")
    message = one_line(finishes(lambda: fetch(url)))
    assert url in message and scripted.url("/w/model.pdparams") in message
    assert "https to http" in message
    assert scripted.seen == []


# ------------------------------------------------------------ content before caching
@pytest.mark.parametrize("content_type, data", [
    ("text/html; charset=utf-8", HTML),
    ("application/json", b'{"error": "Repository not found"}'),
    ("text/plain", b"Access denied\n"),
])
def test_a_page_instead_of_weights_is_refused_not_cached_and_fetched_again(
        scripted, content_type, data):
    scripted.routes["/w/model.pdparams"] = body(data, content_type)
    url = scripted.url("/w/model.pdparams")
    message = one_line(finishes(lambda: fetch(url)))
    assert url in message and content_type in message and repr(data[:12])[:-1] in message
    assert cached_files() == []
    scripted.routes["/w/model.pdparams"] = body(WEIGHTS)  # the server is fixed
    assert fetch(url).read_bytes() == WEIGHTS
    assert len(scripted.seen) == 2


def test_a_page_cached_by_an_earlier_version_is_reported(scripted):
    url = scripted.url("/w/model.pdparams")
    target = cache_path(url)
    target.parent.mkdir(parents=True)
    target.write_bytes(HTML)
    message = one_line(finishes(lambda: fetch(url)))
    assert str(target) in message and "delete it" in message
    assert target.read_bytes() == HTML  # maybe a user's file: reported, not deleted
    assert scripted.seen == []


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"\x80\x02\x8a\x0a", b"\x80\x04\x95",
                                  len(b'{"a":1}').to_bytes(8, "little") + b'{"a":1}'],
                         ids=["zip", "pickle-2", "pickle-4", "safetensors"])
def test_each_weights_format_passes_the_content_check(scripted, head):
    data = head + bytes(100)
    scripted.routes["/w/model.bin"] = body(data, "binary/octet-stream")
    assert fetch(scripted.url("/w/model.bin")).read_bytes() == data


@pytest.mark.parametrize("head", [b"\x80\x02\x8a\x0a", b"\x80\x04\x95",
                                  len(b'{"a":1}').to_bytes(8, "little") + b'{"a":1}',
                                  b"\x80\x06\x95", b"\x80\x01(", b"<html>"],
                         ids=["pickle-2", "pickle-4", "safetensors", "pickle-6", "proto-1",
                              "html"])
def test_the_reader_recognises_exactly_what_a_download_lets_through(scripted, tmp_path, head):
    """One content check (ppcls.weights.formats.sniff) for downloads and for reading."""
    data = head + bytes(100)
    scripted.routes["/w/model.bin"] = body(data)
    fetched = finishes(lambda: fetch(scripted.url("/w/model.bin"))) is None
    copy = tmp_path / "copy.bin"
    copy.write_bytes(data)
    assert (weights_format(copy) is not None) == fetched


def test_a_download_without_a_digest_logs_the_sha256_to_pin(scripted, capsys):
    scripted.routes["/w/model.pdparams"] = body(WEIGHTS)
    fetch(scripted.url("/w/model.pdparams"))
    out = capsys.readouterr().out
    assert f"sha256={WEIGHTS_SHA}" in out and "pin" in out


# -------------------------------------------------------------------- long names
def test_a_300_character_file_name_gets_a_bounded_readable_cache_name(scripted):
    long_name = "w" * 290 + ".pdparams"  # 299 characters: more than a file name may hold
    other = "w" * 289 + "x.pdparams"
    scripted.routes[f"/w/{long_name}"] = body(WEIGHTS)
    scripted.routes[f"/w/{other}"] = body(WEIGHTS[:-1])
    path = fetch(scripted.url(f"/w/{long_name}"))
    assert path.read_bytes() == WEIGHTS
    assert len(path.name.encode()) + len(".part") <= 255
    assert path.name.startswith("w" * 40) and path.name.endswith(".pdparams")
    assert fetch(scripted.url(f"/w/{long_name}")) == path and len(scripted.seen) == 1
    second = fetch(scripted.url(f"/w/{other}"))
    assert second != path and second.read_bytes() == WEIGHTS[:-1]


def test_a_very_long_url_path_stays_under_the_path_limit(scripted):
    deep = "/" + "/".join(["d" * 200] * 30) + "/model.pdparams"  # 6 KB of directories
    scripted.routes[deep] = body(WEIGHTS)
    path = fetch(scripted.url(deep))
    assert path.read_bytes() == WEIGHTS
    relative = path.relative_to(cache_dir())
    assert len(str(relative).encode()) < 1100
    assert len(relative.parts) == 3  # host, the directories as one hashed name, the file


# ---------------------------------------------------------------------- full disk
def test_disk_full_while_downloading_is_one_line(digits, tmp_path, server, small_disk,
                                                 monkeypatch, capsys):
    """The cache on a 256 KiB filesystem, the weights 300 KiB: the tool stops with one line
    naming the cache directory and what to do, and leaves no partial file behind."""
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(small_disk))
    (server.root / "big.pdparams").write_bytes(WEIGHTS)
    args = config_args(digits_overrides(digits, tmp_path / "out"),
                       f"Global.pretrained_model={server.url('big.pdparams')}")
    code = run(eval_tool.main, parse_args(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "no space left" in err and str(small_disk) in err and "PPCLS_CACHE_DIR" in err
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []
