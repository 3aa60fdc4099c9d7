"""Serve an exported model over HTTP with PaddleX's image-classification API (service.py).

    python deploy/serving/serve.py -c deploy/configs/inference_cls.yaml \
        -o Global.inference_model_dir=./inference [--host 127.0.0.1] [--port 8080]
    curl -s -H 'Content-Type: application/json' \
        -d "{\"image\": \"$(base64 -w0 demo/cat.jpg)\", \"topk\": 3}" http://127.0.0.1:8080/image-classification

The deploy config is predict_cls.py's (Global.infer_imgs is not needed): the same model,
preprocessing, engine and PostProcess give the same answers. The model is loaded (and
`Global.engine: auto` decided) before the port opens; the line "serving on http://..."
says it is ready, and GET /health answers from then on. SIGTERM or Ctrl-C stops accepting
connections, lets the requests in flight finish (up to --shutdown_timeout seconds) and
exits 0. One log line per request gives its status, latency and logId.
"""

import argparse
import os
import signal
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
sys.path.insert(0, HERE)
from ppcls.inference import read_deploy_config  # noqa: E402
from ppcls.predictor import Predictor  # noqa: E402
from ppcls.utils import logger  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.schema import INT32_MAX  # noqa: E402
from ppcls.utils.threads import usable_cores  # noqa: E402
from ppcls.utils.yaml_file import parse_override  # noqa: E402
from ppcls.utils.errors import ConfigError  # noqa: E402
from service import Limits, Service, create_app  # noqa: E402

MB = 2**20
# predictors `--workers auto` starts at most: each holds the model and its engine's buffers
AUTO_WORKERS_MAX = 8


def parse_args(argv=None):
    limits = Limits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", required=True, help="a deploy config (predict_cls.py's)")
    parser.add_argument("-o", "--override", action="append", default=[], help="KEY=VALUE, e.g. "
                        "Global.inference_model_dir=./inference")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed)")
    parser.add_argument("--workers", default="auto",
                        help="predictors running at once, each in its own thread with "
                             "Global.cpu_num_threads threads. auto (default): on a CPU, one "
                             "per core (at most 8) sharing the cores, 1 thread each unless "
                             "-o Global.cpu_num_threads says; 1 on a GPU. --workers 1 gives a "
                             "lone request the lowest latency")
    parser.add_argument("--max_batch", type=int, default=None,
                        help="images a worker runs at once, from the requests waiting "
                             "(default: Global.batch_size)")
    parser.add_argument("--max_queue", type=int, default=limits.max_queue,
                        help="classification requests admitted at once; one more gets 503")
    parser.add_argument("--max_body_mb", type=float, default=limits.max_body / MB,
                        help="largest request body (MiB); larger gets 413")
    parser.add_argument("--body_timeout", type=float, default=limits.body_timeout,
                        help="seconds a request body may take to arrive; slower gets 408")
    parser.add_argument("--allow_image_urls", action="store_true",
                        help="fetch images given as http(s) URLs (public addresses only)")
    parser.add_argument("--url_timeout", type=float, default=limits.url_timeout,
                        help="seconds an image URL may take, redirects included")
    parser.add_argument("--url_max_mb", type=float, default=limits.url_max_bytes / MB,
                        help="largest image fetched from a URL (MiB)")
    parser.add_argument("--shutdown_timeout", type=float, default=30.0,
                        help="seconds SIGTERM waits for the requests in flight")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def worker_count(args, g):
    """How many predictors serve at once. `auto` on a CPU: one per core, at most
    AUTO_WORKERS_MAX, sharing the cores (1 thread each up to 8 cores; set in `g`); with
    -o Global.cpu_num_threads, as many of that many threads as fit. On the 2-core machine of the README, 2 predictors of 1 thread
    served 1.24x the images/s of 1 of 2 threads at 8 clients and 1.30x at 32: one image's
    operators are too small to keep two threads busy; two images at once are not."""
    if args.workers != "auto":
        try:
            return int(args.workers)
        except ValueError:
            raise ConfigError(f"--workers must be auto or a number from 1 to 4096, got "
                              f"{args.workers!r}") from None
    if g["use_gpu"]:
        return 1
    cores = usable_cores()
    if any(path == ["Global", "cpu_num_threads"] for path, _ in map(parse_override, args.override)):
        return max(1, min(cores // int(g["cpu_num_threads"]), AUTO_WORKERS_MAX))
    workers = min(cores, AUTO_WORKERS_MAX)
    g["cpu_num_threads"] = max(1, cores // workers)
    return workers


def limits_of(args, config):
    g = config["Global"]
    limits = Limits(max_queue=args.max_queue, max_body=int(args.max_body_mb * MB),
                    body_timeout=args.body_timeout, workers=worker_count(args, g),
                    max_batch=args.max_batch or int(g["batch_size"]),
                    allow_image_urls=args.allow_image_urls, url_timeout=args.url_timeout,
                    url_max_bytes=int(args.url_max_mb * MB))
    for name in ("max_queue", "workers", "max_batch"):
        if not 1 <= getattr(limits, name) <= 4096:
            raise ConfigError(f"--{name} must be from 1 to 4096, got {getattr(limits, name)}")
    for name, value in (("max_body_mb", limits.max_body), ("url_max_mb", limits.url_max_bytes)):
        if not 1 <= value <= INT32_MAX:
            raise ConfigError(f"--{name} must be from 1 byte to 2 GiB, got {getattr(args, name)}")
    for name in ("body_timeout", "url_timeout", "shutdown_timeout"):
        if not 0 < getattr(args, name) <= 3600:
            raise ConfigError(f"--{name} must be from 0 to 3600 seconds, got {getattr(args, name)}")
    if not g["use_gpu"] and limits.workers * int(g["cpu_num_threads"]) > usable_cores():
        logger.warning(f"--workers {limits.workers} x Global.cpu_num_threads {g['cpu_num_threads']} "
                       f"threads is more than the {usable_cores()} cores this process may use")
    return limits


def build_service(config, limits):
    if "SavePreLabel" in (config.get("PostProcess") or {}):
        raise ConfigError("PostProcess.SavePreLabel copies image files into folders; the service "
                          "receives no files: remove it from the deploy config")
    first = Predictor(config=config)
    predictors = [first] + [first.replica() for _ in range(limits.workers - 1)]
    return Service(predictors, limits, usable_cores())


def bound_socket(host, port):
    """The service's socket, bound at once (a port in use is an error before the model
    loads) but listening only when the model is ready: until then connections are refused."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto named: asyncio turns Nagle's algorithm off only on sockets that say TCP, and
        # with it on, a kept-alive connection waits 40 ms for each response's second write
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}): choose another "
                          "--host or --port") from None
    return sock


def main(args):
    import uvicorn

    config = read_deploy_config(args.config, args.override, required=("inference_model_dir",))
    limits = limits_of(args, config)
    sock = bound_socket(args.host, args.port)
    service = build_service(config, limits)
    sock.listen(2048)
    server = uvicorn.Server(uvicorn.Config(
        create_app(service), log_config=None, access_log=False, lifespan="off",
        timeout_graceful_shutdown=args.shutdown_timeout))
    host, port = sock.getsockname()[:2]
    predictor = service.predictor
    logger.info(f"serving on http://{host if ':' not in host else f'[{host}]'}:{port} "
                f"(POST /image-classification, GET /health): {predictor.engine}, {predictor.precision}, "
                f"{limits.workers} worker(s) x {config['Global']['cpu_num_threads']} threads, batches "
                f"of up to {limits.max_batch}, queue {limits.max_queue}")
    # uvicorn handles SIGTERM and SIGINT while it runs (finishing the requests in flight),
    # then raises the signal again with the handler found before it: this one, so that a
    # graceful stop exits 0 rather than dying of the signal
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        service.close()
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parse_args()))
