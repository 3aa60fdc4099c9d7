"""CPU speed of training and dygraph inference: Paddle's built-in kernels, ours (the custom
depthwise convolution, ppcls/ops/depthwise_conv) and, when torch is installed, PyTorch
eager on the same architecture (torchvision's MNASNet, or timm's for the variants
torchvision lacks). One run, one Markdown table with ratios.

    python tools/benchmark_cpu.py --threads 2 --out log/benchmark/cpu_speed.md
    python tools/benchmark_cpu.py --names MnasNet_B1_x1_0 --skip_kernels
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.cli import run  # noqa: E402
from tools.benchmark import median_ms, variant_records  # noqa: E402

# Our name -> (library, constructor name) of the same architecture in PyTorch: torchvision's
# MNASNet where it has the variant, else timm's.
TORCH_TWINS = {v.name: next((lib, v.twins[lib]) for lib in ("torchvision", "timm") if lib in v.twins)
               for v in variant_records().VARIANTS}
# The depthwise cases: (label, N, C, H, W, kernel, stride, with backward).
KERNEL_CASES = [
    ("dw 5x5, 32x240x28x28, forward", 32, 240, 28, 28, 5, 1, False),
    ("dw 5x5, 32x240x28x28, forward + backward", 32, 240, 28, 28, 5, 1, True),
    ("dw 3x3, 32x144x56x56, forward + backward", 32, 144, 56, 56, 3, 1, True),
    ("dw 3x3 stride 2, 32x96x112x112, forward + backward", 32, 96, 112, 112, 3, 2, True),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", nargs="*", default=list(TORCH_TWINS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--train_sizes", type=int, nargs="*", default=[224, 32],
                        help="image sizes for training at batch 32 (32: the quick start's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the frameworks' processes this many times; each case "
                             "reports the median over the rounds")
    parser.add_argument("--skip_kernels", action="store_true")
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--torch_python", default=sys.executable,
                        help="interpreter with torch, torchvision and timm for the PyTorch column "
                             "(default: this one)")
    parser.add_argument("--out", default=None, help="also write the table here")
    parser.add_argument("--worker", choices=["paddle", "torch"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def median_seconds(fn, steps):
    """Median of `steps` timed calls after one warm-up."""
    return median_ms(fn, warmup=1, repeats=steps) / 1000


class PaddleBench:
    def __init__(self):
        import paddle

        from ppcls.ops import depthwise_conv

        self.paddle, self.dw = paddle, depthwise_conv
        paddle.set_device("cpu")
        if depthwise_conv.custom_op() is None:
            raise SystemExit("error: the custom depthwise kernel did not build; see the warning")

    def kernel(self, n, c, h, w, k, stride, backward):
        paddle, dw = self.paddle, self.dw
        x = paddle.randn([n, c, h, w])
        weight = paddle.randn([c, 1, k, k])
        x.stop_gradient = weight.stop_gradient = not backward

        def run():
            out = dw.depthwise_conv2d(x, weight, stride=stride, padding=k // 2, groups=c)
            if backward:
                out.sum().backward()
        return run  # CPU kernels are synchronous: no copy to numpy, as on the torch side

    def model(self, name):
        from ppcls.arch import build_model

        return build_model({"Arch": {"name": name, "class_num": 1000}})

    def train_step(self, model, batch, size):
        paddle = self.paddle
        model.train()
        opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=model.parameters())
        images = paddle.randn([batch, 3, size, size])
        labels = paddle.randint(0, 1000, [batch])

        def run():
            loss = paddle.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
            opt.clear_grad()
            float(loss)
        return run

    def infer(self, model, size):
        paddle = self.paddle
        model.eval()
        image = paddle.randn([1, 3, size, size])

        def run():
            with paddle.no_grad():
                model(image).numpy()
        return run


class TorchBench:
    def __init__(self, threads):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)

    def kernel(self, n, c, h, w, k, stride, backward):
        torch = self.torch
        x = torch.randn(n, c, h, w, requires_grad=backward)
        weight = torch.randn(c, 1, k, k, requires_grad=backward)

        def run():
            out = torch.nn.functional.conv2d(x, weight, stride=stride, padding=k // 2, groups=c)
            if backward:
                out.sum().backward()
        return run

    def model(self, name):
        library, ctor = TORCH_TWINS[name]
        from tools.make_transform_fixture import import_torchvision

        torchvision = import_torchvision()  # timm imports it too
        if library == "torchvision":
            return getattr(torchvision.models, ctor)(weights=None)
        import timm

        return timm.create_model(ctor, pretrained=False)

    def train_step(self, model, batch, size):
        torch = self.torch
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, 1000, (batch,))

        def run():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            float(loss)
        return run

    def infer(self, model, size):
        torch = self.torch
        model.eval()
        image = torch.randn(1, 3, size, size)

        def run():
            with torch.no_grad():
                model(image)
        return run


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def fmt(value, unit):
    return f"{value:.1f} {unit}" if value else "-"


def measure(bench, args, variants):
    """{case label: figure}; kernels in ms, models in img/s. `variants` maps a column
    name to a context in which to measure it (e.g. our kernel on or off)."""
    results = {}
    if not args.skip_kernels:
        for label, *case in KERNEL_CASES:
            for column, context in variants.items():
                with context():
                    results[f"{column}|{label}"] = median_seconds(bench.kernel(*case),
                                                                  args.steps) * 1e3
    for name in args.names:
        model = bench.model(name)
        cases = [(f"train b{args.batch} @{s}", "train", s) for s in args.train_sizes]
        cases.append(("dygraph infer b1 @224", "infer", 224))
        for label, kind, size in cases:
            for column, context in variants.items():
                with context():
                    if kind == "train":
                        fn, images, steps = (bench.train_step(model, args.batch, size),
                                             args.batch, args.steps)
                    else:
                        fn, images, steps = bench.infer(model, size), 1, 20
                    results[f"{column}|{name}, {label}"] = images / median_seconds(fn, steps)
    return results


def run_worker(args):
    """Measure one framework in this process and print its results as JSON."""
    import json

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before the framework is imported
    if args.worker == "torch":
        bench = TorchBench(args.threads)
        variants = {"torch": contextlib.nullcontext}
    else:
        bench = PaddleBench()
        variants = {"builtin": lambda: bench.dw.enabled(False),
                    "ours": lambda: bench.dw.enabled(True)}
    results = measure(bench, args, variants)
    if args.worker == "paddle":
        import paddle

        results["version"] = paddle.__version__
    else:
        results["torch_version"] = bench.torch.__version__
    print("RESULTS " + json.dumps(results), flush=True)


def worker_results(backend, argv):
    """Each framework runs in its own process: their OpenMP runtimes would otherwise
    compete for the cores (measured: torch's backward 4x slower beside Paddle)."""
    import json
    import subprocess

    python = parse_args(argv).torch_python if backend == "torch" else sys.executable
    proc = subprocess.run([python, os.path.abspath(__file__), *argv, "--worker", backend],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"{backend} measurements failed: {tail[0]}", file=sys.stderr)
        return {}
    return json.loads(lines[-1][len("RESULTS "):])


def median_over_rounds(rounds):
    """One result per case: the median of its rounds' figures (each already the median of
    its steps). Text entries (versions) keep their first value."""
    merged = {}
    for key in dict.fromkeys(k for results in rounds for k in results):
        values = [results[key] for results in rounds if key in results]
        merged[key] = statistics.median(values) if isinstance(values[0], float) else values[0]
    return merged


def torch_available(python=sys.executable):
    import subprocess

    return subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0


def table_rows(results, args):
    rows = []
    labels = [] if args.skip_kernels else [c[0] for c in KERNEL_CASES]
    kernel_labels = set(labels)
    for name in args.names:
        labels += [f"{name}, train b{args.batch} @{s}" for s in args.train_sizes]
        labels.append(f"{name}, dygraph infer b1 @224")
    for label in labels:
        builtin, ours, torch_value = (results.get(f"{c}|{label}")
                                      for c in ("builtin", "ours", "torch"))
        if label in kernel_labels:  # times: how many times faster ours is
            rows.append([label, fmt(builtin, "ms"), fmt(ours, "ms"), fmt(torch_value, "ms"),
                         ratio(builtin, ours), ratio(torch_value, ours)])
        else:  # throughputs
            rows.append([label, fmt(builtin, "img/s"), fmt(ours, "img/s"),
                         fmt(torch_value, "img/s"), ratio(ours, builtin), ratio(ours, torch_value)])
    return rows


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    with_torch = not args.no_torch and torch_available(args.torch_python)
    if not args.no_torch and not with_torch:
        print("torch is not installed: the PyTorch column stays empty", file=sys.stderr)
    rounds = []
    for _ in range(args.rounds):
        paddle_results = worker_results("paddle", argv)
        if not paddle_results:
            raise SystemExit("error: the Paddle measurements failed (see above)")
        rounds.append(paddle_results)
        if with_torch:
            rounds.append(worker_results("torch", argv))
    results = median_over_rounds(rounds)
    versions = f"paddlepaddle {results.pop('version', '')}".strip()
    if with_torch:
        versions += f", torch {results.pop('torch_version', '?')}"
    header = ["case", "Paddle built-in", "ours", "PyTorch", "ours vs built-in",
              "ours vs PyTorch"]
    lines = [f"`python tools/benchmark_cpu.py {' '.join(argv)}` on {platform.machine()}, "
             f"{os.cpu_count()} cores, {args.threads} threads; {versions}. Each framework "
             f"runs in its own process; the processes alternate for {args.rounds} round(s) "
             "and each case is the median over the rounds of the median of its steps. Ratios above 1 "
             "mean ours is faster (kernels: time; models: images per second).", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results, args)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
