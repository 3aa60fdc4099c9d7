"""The HTTP service (deploy/serving/serve.py): a real server process on 127.0.0.1, called with
a real HTTP client (http.client), for PaddleX's image-classification API."""

import base64
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, serving_in_thread, write_png_bomb

sys.path.insert(0, os.path.join(ROOT, "deploy", "python"))
sys.path.insert(0, os.path.join(ROOT, "deploy", "serving"))
import predict_cls  # noqa: E402
from image_urls import ImageURLError, fetch_image, is_public_address  # noqa: E402
from test_inference import train_and_export  # noqa: E402

DEPLOY_CONFIG = os.path.join(ROOT, "deploy", "configs", "inference_digits.yaml")
SERVE = os.path.join(ROOT, "deploy", "serving", "serve.py")


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    """A model trained long enough to tell images apart (so a swapped answer would show),
    exported with inference.onnx; 8 val images of 32 px and one of 48 px (another size than
    the model's input); an engine cache of its own, shared by predict_cls.py and the server
    so that `auto` decides once for both."""
    import cv2

    root = tmp_path_factory.mktemp("serving")
    exported = train_and_export(digits, root, extra=[
        f"DataLoader.Train.dataset.cls_label_path={digits}/train_list.txt"])
    images = root / "requests"
    images.mkdir()
    val = (digits / "val_list.txt").read_text().split()[::2][::40][:9]
    for i, rel in enumerate(val[:8]):
        shutil.copy(digits / rel, images / f"img{i}.png")
    cv2.imwrite(str(images / "img8_48px.png"), cv2.resize(cv2.imread(str(digits / val[8])), (48, 48)))
    exported["requests"] = sorted(images.iterdir())
    exported["cache"] = root / "cache"
    return exported


def predicted(model, monkeypatch, *overrides):
    """deploy/python/predict_cls.py's results for the request images, by file name."""
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(model["cache"]))
    out = model["root"] / "predicted.json"
    args = ["-c", DEPLOY_CONFIG, "-o", f"Global.inference_model_dir={model['model_dir']}",
            "-o", f"Global.infer_imgs={model['requests'][0].parent}", "-o", f"Global.save_path={out}"]
    for override in overrides:
        args += ["-o", override]
    predict_cls.main(predict_cls.parse_args(args))
    return {os.path.basename(r["file_name"]): r for r in json.loads(out.read_text())}


class Server:
    """serve.py in a process of its own on a free port of 127.0.0.1."""

    def __init__(self, model, *flags, overrides=()):
        args = [sys.executable, SERVE, "-c", DEPLOY_CONFIG, "-o",
                f"Global.inference_model_dir={model['model_dir']}", "--port", "0", *flags]
        for override in overrides:
            args += ["-o", override]
        env = dict(os.environ, PPCLS_CACHE_DIR=str(model["cache"]), OMP_NUM_THREADS="2")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines = []
        for line in self.process.stdout:
            self.lines.append(line)
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise AssertionError("the server did not start:\n" + "".join(self.lines[-30:]))
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def call(self, method, path, body=None, headers=None):
        """(status, JSON body) of one request on a connection of its own."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            connection.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                                 **(headers or {})})
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            connection.close()

    def classify(self, image_file, **fields):
        image = base64.b64encode(image_file.read_bytes()).decode()
        return self.call("POST", "/image-classification", {"image": image, **fields})

    def stop(self):
        """SIGTERM; the exit code and everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        return code, "".join(self.lines)


@pytest.fixture
def serve(model):
    servers = []

    def start(*flags, overrides=()):
        servers.append(Server(model, *flags, overrides=overrides))
        return servers[-1]

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def categories_of(result):
    return [(c["id"], c["name"]) for c in result["categories"]], [c["score"] for c in result["categories"]]


def assert_same_answer(answer, expected):
    ids_names, scores = categories_of(answer)
    assert ids_names == list(zip(expected["class_ids"], expected["label_names"])), (answer, expected)
    assert scores == pytest.approx(expected["scores"], abs=2e-5)  # rounded to 5 decimals


def test_answers_are_predict_cls_answers_each_its_own(model, serve, monkeypatch):
    """Requests sent at once to 2 workers that batch up to 4 images: every answer is the one
    predict_cls.py gives that image with the same config (an image of another size included),
    PaddleX's envelope around it, and one log line per request with its latency."""
    overrides = ("Global.cpu_num_threads=1",)
    expected = predicted(model, monkeypatch, *overrides)
    assert len({tuple(r["scores"]) for r in expected.values()}) == len(expected)  # a swap would show
    server = serve("--workers", "2", "--max_batch", "4", overrides=overrides)
    status, health = server.call("GET", "/health")
    assert status == 200 and health["errorCode"] == 0 and health["errorMsg"] == "Healthy"
    files = model["requests"] * 3
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        answers = list(pool.map(server.classify, files))
    for file, (status, body) in zip(files, answers):
        assert status == 200 and body["errorCode"] == 0 and body["errorMsg"] == "Success", body
        assert re.fullmatch(r"[0-9a-f]{32}", body["logId"])
        assert_same_answer(body["result"], expected[file.name])
    status, body = server.classify(files[0], inferenceParams={"topK": 5})  # PaddleX 3.0 beta's form
    assert status == 200 and len(body["result"]["categories"]) == 5
    assert categories_of(body["result"])[0][:3] == categories_of(answers[0][1]["result"])[0]
    status, body = server.classify(files[0], topk=1, visualize=False)  # PaddleX 3.x's form
    assert status == 200 and len(body["result"]["categories"]) == 1 and "image" not in body["result"]
    code, printed = server.stop()
    assert code == 0, printed[-3000:]
    for _, body in answers:
        assert re.search(rf"POST /image-classification 200 [\d.]+ ms logId={body['logId']}\n", printed)


@pytest.fixture(scope="module")
def bomb_base64(tmp_path_factory):
    path = write_png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")
    return base64.b64encode(path.read_bytes()).decode()


def test_hostile_requests_get_paddlex_errors_and_the_service_goes_on(model, serve, bomb_base64):
    server = serve("--max_body_mb", "1")
    good = base64.b64encode(model["requests"][0].read_bytes()).decode()
    text = base64.b64encode(b"this is not an image").decode()
    cases = [
        (b"{not json", 422, "not JSON"),
        (b"[]", 422, "the request body must be a JSON object"),
        ({}, 422, "image: Field required"),
        ({"image": 5}, 422, "image: Input should be a valid string"),
        ({"image": good, "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ({"image": text}, 422, "image: not a decodable image"),
        ({"image": "not base64!"}, 422, "image: neither base64 nor a URL"),
        ({"image": ""}, 422, "image: empty file"),
        ({"image": bomb_base64}, 422, "over the pixel cap"),
        ({"image": "file:///etc/passwd"}, 422, "URLs are not enabled"),
        ({"image": good, "topk": 0}, 422, "topk must be from 1 to 10"),
        ({"image": good, "topk": 11}, 422, "topk must be from 1 to 10"),
        ({"image": good, "topk": "3"}, 422, "topk: Input should be a valid integer"),
        ({"image": good, "topk": 2, "inferenceParams": {"topK": 3}}, 422, "differ"),
        ({"image": good, "inferenceParams": {"topK": -1}}, 422, "topk must be from 1 to 10"),
        ({"image": good, "visualize": True}, 422, "no visualisation image"),
    ]
    for body, status, message in cases:
        got, answer = server.call("POST", "/image-classification", body)
        assert (got, answer["errorCode"]) == (status, status) and message in answer["errorMsg"], (body if
                                                                                                 len(str(body)) < 200 else message, answer)
        assert set(answer) == {"logId", "errorCode", "errorMsg"}
    assert server.call("GET", "/image-classification")[0] == 405
    assert server.call("GET", "/nowhere")[1]["errorCode"] == 404
    status, answer = server.call("POST", "/image-classification", {"image": good})
    assert status == 200 and answer["result"]["categories"]


def test_a_body_over_the_limit_is_413_without_reading_it(model, serve):
    """A Content-Length over the limit is answered at once, before the body is sent; a
    chunked body (no Content-Length) is counted as it arrives and stopped at the limit."""
    server = serve("--max_body_mb", "0.01")  # 10485 bytes
    for head, body in [(b"Content-Length: 2097152\r\n", b""),
                       (b"Transfer-Encoding: chunked\r\n", b"".join(b"2000\r\n" + b"x" * 8192 + b"\r\n"
                                                                      for _ in range(3)))]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"POST /image-classification HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head
                         + b"\r\n" + body)
            status, answer = read_answer(sock)
        assert status == answer["errorCode"] == 413, answer
        assert "over this service's limit of 10485 bytes" in answer["errorMsg"]


class ImageAndRedirects(BaseHTTPRequestHandler):
    """GET /image.png: the image; /to?url: a redirect there; counts its requests."""

    def do_GET(self):
        self.server.seen.append(self.path)
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to?"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.server.image if self.path == "/image.png" else b"x" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server(model):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ImageAndRedirects)
    httpd.seen, httpd.image = [], model["requests"][0].read_bytes()
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_port}{path}"
    yield from serving_in_thread(httpd)


def test_image_urls_when_enabled_reach_only_public_addresses(model, serve, image_server):
    server = serve("--allow_image_urls")
    port = image_server.server_port
    for url, message in [
        ("file:///etc/passwd", "scheme 'file' are not fetched: only http and https"),
        ("ftp://example.com/a.png", "scheme 'ftp'"),
        (image_server.url("/image.png"), "resolves to 127.0.0.1, which is not a public address"),
        (f"http://localhost:{port}/image.png", "not a public address"),
        (f"http://[::1]:{port}/image.png", "not a public address"),
        (f"http://[::ffff:127.0.0.1]:{port}/image.png", "not a public address"),
        ("http://169.254.169.254/latest/meta-data/", "not a public address"),
        ("http://10.0.0.1/a.png", "not a public address"),
        ("http://user:secret@example.com/a.png", "credentials"),
    ]:
        status, answer = server.call("POST", "/image-classification", {"image": url})
        assert status == 422 and message in answer["errorMsg"], (url, answer)
    assert image_server.seen == []  # nothing reached the private server


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False), ("::1", False),
    ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("fe80::1%1", False),
    ("fd00::1", False), ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True)])
def test_public_addresses(address, public):
    assert is_public_address(address) == public


def test_fetching_follows_redirects_checking_each_and_bounds_the_size(image_server):
    """The fetch itself, against the real local server, with 127.0.0.1 (only) let through."""
    only_here = lambda address: address == "127.0.0.1"  # noqa: E731
    image = fetch_image(image_server.url("/to?/image.png"), 10**6, 10, only_here)
    assert image == image_server.image and image_server.seen == ["/to?/image.png", "/image.png"]
    with pytest.raises(ImageURLError, match="resolves to 127.0.0.2, which is not a public address"):
        fetch_image(image_server.url(f"/to?http://127.0.0.2:{image_server.server_port}/image.png"),
                    10**6, 10, only_here)
    with pytest.raises(ImageURLError, match="5000 bytes, over the limit of 1000"):
        fetch_image(image_server.url("/large"), 1000, 10, only_here)
    with pytest.raises(ImageURLError, match="redirected more than 3 times"):
        fetch_image(image_server.url("/to?/to?/to?/to?/image.png"), 10**6, 10, only_here)


def send_partial_request(port, body):
    """A classification request whose body is sent but for its last byte."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(b"POST /image-classification HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:-1])
    return sock


def read_answer(sock):
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.I)
        if length and len(rest) >= int(length.group(1)):
            return int(head.split()[1]), json.loads(rest[:int(length.group(1))])
    raise AssertionError(f"the connection closed: {data!r}")


def wait_until_busy(server, image_file):
    """Until the server answers 503: the request held open is admitted and fills the queue."""
    for _ in range(200):
        status, answer = server.classify(image_file)
        if status == 503:
            return answer
        time.sleep(0.05)
    raise AssertionError("the server never answered 503")


def wait_until_refused(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError("the server still accepts connections")


def test_a_full_queue_answers_503_and_the_queued_request_is_still_answered(model, serve):
    server = serve("--max_queue", "1")
    body = json.dumps({"image": base64.b64encode(model["requests"][1].read_bytes()).decode()}).encode()
    held = send_partial_request(server.port, body)
    busy = wait_until_busy(server, model["requests"][0])
    assert busy["errorCode"] == 503 and "1 requests are already queued" in busy["errorMsg"]
    held.sendall(body[-1:])
    status, answer = read_answer(held)
    assert status == 200 and answer["result"]["categories"]
    assert server.classify(model["requests"][0])[0] == 200  # room again


def test_sigterm_finishes_the_request_in_flight_and_exits_0(model, serve):
    server = serve("--max_queue", "1")
    body = json.dumps({"image": base64.b64encode(model["requests"][2].read_bytes()).decode()}).encode()
    held = send_partial_request(server.port, body)
    wait_until_busy(server, model["requests"][0])  # the held request is in flight
    server.process.send_signal(signal.SIGTERM)
    wait_until_refused(server.port)  # the signal is handled: no new connections from here on
    held.sendall(body[-1:])
    status, answer = read_answer(held)
    assert status == 200 and answer["errorCode"] == 0 and answer["result"]["categories"]
    code, printed = server.stop()
    assert code == 0, printed[-3000:]
    assert "Traceback" not in printed


def test_by_default_each_core_runs_a_predictor_of_one_thread(model, serve):
    """--workers auto (the default): on this 2-core machine, 2 predictors of 1 thread each
    served 1.24x the images/s of 1 predictor of 2 threads at 8 clients (README, Serve). An
    explicit --workers, or Global.cpu_num_threads given with -o, is kept."""
    from ppcls.utils.threads import usable_cores

    cores = usable_cores()
    workers = min(cores, 8)
    assert f"{workers} worker(s) x {cores // workers} threads" in serve().lines[-1]
    assert "1 worker(s) x 2 threads" in serve("--workers", "1").lines[-1]
    assert f"{max(1, min(cores // 2, 8))} worker(s) x 2 threads" in serve(
        overrides=("Global.cpu_num_threads=2",)).lines[-1]
    done = subprocess.run([sys.executable, SERVE, "-c", DEPLOY_CONFIG, "-o",
                           f"Global.inference_model_dir={model['model_dir']}", "--workers", "many"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "error: --workers must be auto or a number from 1 to 4096, got 'many'")


def test_the_port_in_use_and_a_bad_flag_are_one_line(model, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        done = subprocess.run([sys.executable, SERVE, "-c", DEPLOY_CONFIG, "-o",
                               f"Global.inference_model_dir={model['model_dir']}", "--port",
                               str(taken.getsockname()[1])], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: cannot listen")
    done = subprocess.run([sys.executable, SERVE, "-c", DEPLOY_CONFIG, "-o",
                           f"Global.inference_model_dir={model['model_dir']}", "--max_queue", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--max_queue must be from 1 to 4096" in done.stderr


def test_benchmark_serving_prints_rates_and_latencies_beside_the_in_process_predictor(model, capsys,
                                                                                      monkeypatch):
    from tools import benchmark_serving

    monkeypatch.setenv("PPCLS_CACHE_DIR", str(model["cache"]))
    assert benchmark_serving.main(["--model_dir", str(model["model_dir"]), "-c", DEPLOY_CONFIG,
                                   "--images", str(model["requests"][0].parent), "--clients", "1", "3",
                                   "--seconds", "1", "--rounds", "1", "--server", "--max_batch 2"]) == 0
    out = capsys.readouterr().out
    assert "serve.py --max_batch 2: " in out and "batches of up to 2" in out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines()
            if line.startswith("| ")}
    assert float(rows["in-process predictor"][1]) > 0
    for clients in ("1", "3"):
        rate, p50, p99, ratio, failed = rows[clients][1:6]
        assert float(rate) > 0 and 0 < float(p50) <= float(p99) and ratio.endswith("x")
        assert failed.strip(" |") == "0"
