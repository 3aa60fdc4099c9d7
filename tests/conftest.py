import functools
import os
import re
import shutil
import struct
import sys
import threading
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Small, deterministic CPU runs: the suite is sized for 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
import ppcls  # noqa: E402,F401  (the tools' CPU defaults and console, before Paddle is imported)

QUICK_START = os.path.join(ROOT, "configs", "quick_start", "MnasNet_B1_x0_5_digits.yaml")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The quick-start digits written once, plus small lists for fast runs: 96 training
    images (every class) and an odd-sized validation list of 37."""
    from tools.make_digits_dataset import write_dataset

    root = tmp_path_factory.mktemp("digits")
    write_dataset(str(root), size=32)
    train = (root / "train_list.txt").read_text().splitlines()
    val = (root / "val_list.txt").read_text().splitlines()
    (root / "train_small.txt").write_text("\n".join(train[::15][:96]) + "\n")
    (root / "val_odd.txt").write_text("\n".join(val[::9][:37]) + "\n")
    return root


def config_args(overrides, *more):
    """A tool's arguments: the quick-start config with these overrides."""
    return ["-c", QUICK_START, *(arg for o in [*overrides, *more] for arg in ("-o", o))]


def digits_overrides(root, output_dir, epochs=2, seed=7, extra=()):
    """Overrides that turn the quick-start config into a seconds-long run (`seed=None`
    leaves the seed unset, so each run draws its own)."""
    return [
        f"DataLoader.Train.dataset.image_root={root}",
        f"DataLoader.Train.dataset.cls_label_path={root}/train_small.txt",
        f"DataLoader.Eval.dataset.image_root={root}",
        f"DataLoader.Eval.dataset.cls_label_path={root}/val_odd.txt",
        "DataLoader.Train.sampler.batch_size=16",
        "DataLoader.Eval.sampler.batch_size=8",
        f"Global.output_dir={output_dir}",
        f"Global.epochs={epochs}",
        f"Global.seed={'null' if seed is None else seed}",
        "Global.print_batch_step=1",
        "Global.save_interval=1",
        *extra,
    ]


# ------------------------------------------- a weights server on 127.0.0.1
class RangeHandler(SimpleHTTPRequestHandler):
    """Serves the files under `directory`, honouring `Range: bytes=N-`. Each request takes
    the next action of `server.plan` ("serve" once it is empty): "serve", "cut" (announce
    the full length, send half, close), "ignore-range" (a 200 with the whole file) or an
    HTTP status code to answer with."""

    def do_GET(self):
        self.server.ranges.append(self.headers.get("Range"))
        action = self.server.plan.pop(0) if self.server.plan else "serve"
        if isinstance(action, int):
            return self.send_error(action)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and action != "ignore-range" else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        self.wfile.write(body[: len(body) // 2] if action == "cut" else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A server of tmp_path/"srv"; `server.url(name)` is a file's URL, `server.ranges` the
    Range header (or None) of each request seen. The cache is tmp_path/"cache"."""
    root = tmp_path / "srv"
    root.mkdir()
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(tmp_path / "cache"))
    from ppcls.weights import download

    monkeypatch.setattr(download, "BACKOFF", 0.01)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(RangeHandler, directory=str(root)))
    httpd.plan, httpd.ranges, httpd.root = [], [], root
    httpd.url = lambda name: f"http://127.0.0.1:{httpd.server_port}/{name}"
    yield from serving_in_thread(httpd)


def serving_in_thread(httpd):
    """A fixture's body for a real HTTP server on 127.0.0.1: served from a thread while the
    test runs (`yield from serving_in_thread(httpd)`), then shut down and closed."""
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def copy_listed_images(digits, lines, root):
    """Copy the images that list `lines` ('relative/path label') name from `digits` to the
    same relative paths under `root`."""
    for line in lines:
        target = root / line.split()[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(digits / line.split()[0], target)


# ------------------------------------------------- a disk that fills up
@pytest.fixture
def small_disk(tmp_path):
    """A directory on a real tmpfs of 256 KiB, so writes past that fail with ENOSPC as on a
    full disk. Mounting needs root (or a user namespace); where neither is allowed the
    test is skipped, saying why."""
    import subprocess

    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): the ENOSPC "
                    "case needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


# ------------------------------------------------- a decompression bomb
def write_png_bomb(path, width=12000, height=12000):
    """A valid 8-bit greyscale PNG of width x height black pixels, compressed row by row
    so that this test never holds more than one row of it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter type 0, then the row's pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
