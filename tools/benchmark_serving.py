"""Throughput and latency of the HTTP service (deploy/serving/serve.py) at 1, 8 and 32
concurrent clients, beside the in-process predictor's images/s on the same model, images
and engine.

Each round starts, one after the other: the in-process predictor in a process of its own
(ppcls.predictor.Predictor over the images, in batches of Global.batch_size, as
predict_cls.py runs), then the server in a process of its own, called by closed-loop
clients (threads of this process, one keep-alive connection each, sending the images in
turn as base64 JSON) for --seconds at each client count. images/s is the median over the
rounds; p50/p99 are over every request of every round. The clients share the cores with
the server, as a load generator on the same machine does.

    python tools/benchmark_serving.py --model_dir inference/B1_x1_0 --images demo/
    python tools/benchmark_serving.py --model_dir DIR --server "" --server "--workers 2 -o Global.cpu_num_threads=1"
"""

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
SERVE = os.path.join(ROOT, "deploy", "serving", "serve.py")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="an exported model folder")
    parser.add_argument("-c", "--config", default=os.path.join(ROOT, "deploy", "configs", "inference_cls.yaml"))
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="deploy config overrides for both the service and the in-process predictor")
    parser.add_argument("--images", default=os.path.join(ROOT, "demo"), help="an image or a folder")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed per client count and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", action="append", default=None,
                        help="serve.py flags of one configuration to measure (repeat to compare; "
                             "default: serve.py's defaults)")
    parser.add_argument("--inprocess_worker", nargs=2, metavar=("ENGINE", "PASSES"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def image_files(path):
    from ppcls.inference import list_images

    return list_images(path)


# ----------------------------------------------------------------------- in-process predictor
def run_inprocess_worker(args):
    """In its own process: images/s of Predictor.predict over the images, PASSES times."""
    from ppcls.inference import read_deploy_config
    from ppcls.predictor import Predictor

    engine, passes = args.inprocess_worker
    config = read_deploy_config(args.config, [*args.override, f"Global.inference_model_dir={args.model_dir}",
                                       f"Global.engine={engine}"], required=("inference_model_dir",))
    predictor = Predictor(config=config)
    files = image_files(args.images)
    predictor.predict(files)  # warm-up
    start = time.perf_counter()
    for _ in range(int(passes)):
        results = predictor.predict(files)
    elapsed = time.perf_counter() - start
    assert all("error" not in r for r in results), results
    print("IMAGES_PER_S " + json.dumps(len(files) * int(passes) / elapsed))
    return 0


def inprocess_images_per_s(args, engine, passes):
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *args.argv,
                           "--inprocess_worker", engine, str(passes)], capture_output=True, text=True)
    found = re.findall(r"^IMAGES_PER_S (.+)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise SystemExit(f"error: the in-process predictor failed: {(done.stderr or done.stdout)[-2000:]}")
    return json.loads(found[-1])


# ----------------------------------------------------------------------------------- server
class Server:
    def __init__(self, args, flags):
        command = [sys.executable, SERVE, "-c", args.config, "--port", "0",
                   "-o", f"Global.inference_model_dir={args.model_dir}", *shlex.split(flags)]
        for override in args.override:
            command += ["-o", override]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        for line in self.process.stdout:
            self.lines.append(line)
            found = re.search(r"serving on http://[^:]+:(\d+) \(.*\): (\w+), ", line)
            if found:
                self.port, self.engine, self.description = int(found.group(1)), found.group(2), line.strip()
                break
        else:
            raise SystemExit("error: the server did not start:\n" + "".join(self.lines[-20:]))
        # drain its log (one line per request) so that it never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()

    def stop(self):
        self.process.terminate()
        return self.process.wait(timeout=120)


def connect(port):
    """A keep-alive connection without Nagle's delay, as curl and requests (urllib3) open
    them: http.client sends a request's headers and body in two writes, and the body would
    otherwise wait for the server's delayed ACK of the headers (40 ms on Linux)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def client(port, bodies, deadline, latencies, failures):
    connection = connect(port)
    i = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        connection.request("POST", "/image-classification", body=bodies[i % len(bodies)],
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        if answer.status == 200:
            latencies.append(time.perf_counter() - start)
        else:
            failures.append(answer.status)
            if answer.getheader("Connection", "").lower() == "close":
                connection.close()
                connection = connect(port)
        i += 1
    connection.close()


def load(port, bodies, clients, seconds):
    """(images/s, latencies in s, failed statuses) of `clients` closed-loop clients."""
    warm = time.perf_counter() + min(2.0, seconds / 4)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: client(port, bodies[i:] + bodies[:i], warm, [], []), range(clients)))
    latencies, failures = [], []
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: client(port, bodies[i:] + bodies[:i], start + seconds, latencies, failures),
                      range(clients)))
    return len(latencies) / (time.perf_counter() - start), latencies, failures


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


def measure(args, flags, bodies, files):
    rates, latencies, failures, inprocess, described = {c: [] for c in args.clients}, \
        {c: [] for c in args.clients}, {c: [] for c in args.clients}, [], None
    for round_ in range(args.rounds):
        server = Server(args, flags)
        described = server.description
        for clients in args.clients:
            rate, times, failed = load(server.port, bodies, clients, args.seconds)
            rates[clients].append(rate)
            latencies[clients] += times
            failures[clients] += failed
        server.stop()
        passes = max(1, int(statistics.median(rates[args.clients[-1]]) * args.seconds / 2 / len(files)))
        inprocess.append(inprocess_images_per_s(args, server.engine, passes))
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{c} clients {rates[c][-1]:.1f}/s" for c in args.clients) + f"; in-process {inprocess[-1]:.1f}/s",
            flush=True)
    return described, rates, latencies, failures, inprocess


def table(flags, described, rates, latencies, failures, inprocess, clients):
    base = statistics.median(inprocess)
    lines = [f"serve.py {flags or '(defaults)'}: {described.split('): ', 1)[-1]}", "",
             "| clients | images/s | p50 (ms) | p99 (ms) | / in-process | failed |", "|---|---|---|---|---|---|",
             f"| in-process predictor | {base:.1f} | | | 1.00x | |"]
    for c in clients:
        rate = statistics.median(rates[c])
        lines.append(f"| {c} | {rate:.1f} | {percentile(latencies[c], 50):.1f} | "
                     f"{percentile(latencies[c], 99):.1f} | {rate / base:.2f}x | {len(failures[c])} |")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    if args.inprocess_worker:
        return run_inprocess_worker(args)
    files = image_files(args.images)
    bodies = [json.dumps({"image": base64.b64encode(open(f, "rb").read()).decode()}).encode() for f in files]
    out = []
    for flags in args.server or [""]:
        out.append(table(flags, *measure(args, flags, bodies, files), args.clients))
        print(out[-1] + "\n", flush=True)
    import platform

    print(f"`python tools/benchmark_serving.py {' '.join(argv)}` "
          f"on {os.cpu_count()} cores ({platform.machine()}); {len(files)} images from {args.images}; "
          f"{args.rounds} rounds of {args.seconds:g} s per client count; images/s: median over rounds; "
          "p50/p99: over all requests; clients and server share the machine.")
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    from ppcls.utils.cli import run

    sys.exit(run(main, sys.argv[1:]))
