"""ppcls.weights.download against a real HTTP server on 127.0.0.1 that honours Range and
can misbehave on request: cut a body in half, ignore Range, answer with an error status."""

import hashlib
import io
import socket

import pytest

from ppcls.utils.errors import WeightsError
from ppcls.weights import download
from ppcls.weights.download import cache_dir, fetch

# 300 KiB (several read chunks) that start like a pickle, as Paddle's .pdparams do: fetch caches
# only what looks like weights (test_download_limits.py)
DATA = b"\x80\x04\x95" + bytes(range(256)) * 1200
SHA = hashlib.sha256(DATA).hexdigest()


def serve(server, name, data=DATA):
    path = server.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return server.url(name)


def leftovers(path):
    return sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PPCLS_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ppcls" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ppcls" / "weights"
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "weights"  # one rule for every cache (issue 24)


def test_fetch_then_cached_without_request(server, capsys):
    url = serve(server, "w/mnasnet.pdparams")
    path = fetch(url)
    assert path.read_bytes() == DATA
    assert path == cache_dir() / f"127.0.0.1_{server.server_port}" / "w" / "mnasnet.pdparams"
    assert leftovers(path) == ["mnasnet.pdparams"]
    assert fetch(url) == path
    assert server.ranges == [None]  # the second fetch asked nothing
    out = capsys.readouterr()
    assert f"downloading {url} -> {path}" in out.out
    assert out.err == ""  # stderr is no terminal here: no progress bar


def test_full_sha256_and_torchvision_prefix_accepted(server):
    assert fetch(serve(server, "a.pth"), sha256=SHA.upper()).read_bytes() == DATA
    name = f"weights-{SHA[:10]}.pth"
    assert fetch(serve(server, name)).name == name
    assert len(server.ranges) == 2


@pytest.mark.parametrize("how", ["argument", "file name"])
def test_digest_mismatch_deletes_download(server, how):
    wrong = "0" * 64 if SHA[0] != "0" else "f" * 64
    if how == "argument":
        url, sha256 = serve(server, "a.pth"), wrong
    else:
        url, sha256 = serve(server, f"weights-{wrong[:8]}.pth"), None
    with pytest.raises(WeightsError) as info:
        fetch(url, sha256=sha256)
    msg = str(info.value)
    assert "\n" not in msg
    assert url in msg and SHA in msg and wrong[:8] in msg and "deleted" in msg
    target = download.cache_path(url)
    assert leftovers(target) == []  # neither the file nor its .part
    assert len(server.ranges) == 1  # a mismatch is not retried


def test_cached_file_with_wrong_digest_is_reported_not_deleted(server):
    url = serve(server, "a.pth")
    fetch(url)
    with pytest.raises(WeightsError, match="delete it") as info:
        fetch(url, sha256="0" * 64 if SHA[0] != "0" else "f" * 64)
    assert "\n" not in str(info.value)
    assert download.cache_path(url).read_bytes() == DATA
    assert len(server.ranges) == 1


def test_cut_transfer_resumes_with_range(server):
    server.plan = ["cut"]
    path = fetch(serve(server, "a.pth"), sha256=SHA)
    assert path.read_bytes() == DATA
    assert server.ranges == [None, f"bytes={len(DATA) // 2}-"]
    assert leftovers(path) == ["a.pth"]


def test_part_from_earlier_run_is_resumed(server):
    url = serve(server, "a.pth")
    target = download.cache_path(url)
    target.parent.mkdir(parents=True)
    target.with_name("a.pth.part").write_bytes(DATA[:1000])
    assert fetch(url).read_bytes() == DATA
    assert server.ranges == ["bytes=1000-"]
    assert leftovers(target) == ["a.pth"]


def test_server_ignoring_range_restarts_the_file(server):
    url = serve(server, "a.pth")
    target = download.cache_path(url)
    target.parent.mkdir(parents=True)
    target.with_name("a.pth.part").write_bytes(b"x" * 1000)  # wrong bytes: must not stay
    server.plan = ["ignore-range"]
    assert fetch(url).read_bytes() == DATA
    assert server.ranges == ["bytes=1000-"]


def test_part_longer_than_file_gets_416_and_restarts(server):
    url = serve(server, "a.pth")
    target = download.cache_path(url)
    target.parent.mkdir(parents=True)
    target.with_name("a.pth.part").write_bytes(DATA + b"junk")
    assert fetch(url, sha256=SHA).read_bytes() == DATA
    assert server.ranges == [f"bytes={len(DATA) + 4}-", None]


def test_404_is_not_retried(server):
    url = server.url("missing/mnasnet.pdparams")
    with pytest.raises(WeightsError) as info:
        fetch(url)
    msg = str(info.value)
    assert "\n" not in msg
    assert url in msg and "HTTP 404" in msg
    assert str(download.cache_path(url)) in msg and "PPCLS_CACHE_DIR" in msg
    assert server.ranges == [None]


def test_connection_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(download, "BACKOFF", 0)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w/a.pth"
    with pytest.raises(WeightsError) as info:
        fetch(url, retries=1)
    msg = str(info.value)
    assert "\n" not in msg
    assert url in msg and "connection refused" in msg
    assert str(tmp_path / "weights" / f"127.0.0.1_{port}" / "w" / "a.pth") in msg


def test_5xx_is_retried(server):
    server.plan = [503, 500]
    assert fetch(serve(server, "a.pth"), retries=2).read_bytes() == DATA
    assert server.ranges == [None, None, None]


def test_5xx_every_time_fails_after_retries_keeping_part(server):
    server.plan = ["cut", 503, 503]
    url = serve(server, "a.pth")
    with pytest.raises(WeightsError) as info:
        fetch(url, retries=2)
    msg = str(info.value)
    assert "\n" not in msg
    assert "HTTP 503" in msg and "3 attempts" in msg and "resumes" in msg
    part = download.cache_path(url).with_name("a.pth.part")
    assert part.read_bytes() == DATA[: len(DATA) // 2]
    assert fetch(url).read_bytes() == DATA  # the next run resumes
    assert server.ranges[-1] == f"bytes={len(DATA) // 2}-"


def test_same_basename_different_urls_do_not_collide(server):
    first, second = DATA[:3] + b"first", DATA[:3] + b"second"
    url_a = serve(server, "timm/a/resolve/main/model.safetensors", first)
    url_b = serve(server, "timm/b/resolve/main/model.safetensors", second)
    path_a, path_b = fetch(url_a), fetch(url_b)
    assert path_a != path_b
    assert (path_a.read_bytes(), path_b.read_bytes()) == (first, second)


def test_cache_path_escapes_and_decodes():
    a = download.cache_path("https://h.org/x%20y/a%3Ab.pth?download=1")
    assert a.relative_to(cache_dir()).parts == ("h.org", "x y", "a%3Ab.pth")
    assert download.cache_path("https://h.org/a%2Fb/c.pth") != download.cache_path(
        "https://h.org/a/b/c.pth")


@pytest.mark.parametrize("url, words", [("ftp://h.org/a.pth", "'ftp' scheme"),
                                        ("https://h.org/dir/", "names no file")])
def test_unusable_url(url, words):
    with pytest.raises(WeightsError, match=words) as info:
        fetch(url)
    assert "\n" not in str(info.value)


def test_progress_bar_on_a_terminal(server, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    fetch(serve(server, "a.pth"))
    shown = download.sys.stderr.getvalue()
    assert "100%" in shown and shown.endswith("\n")
    fetch(serve(server, "b.pth"), progress=False)
    assert download.sys.stderr.getvalue() == shown
