"""Inference latency of MnasNet variants on this machine: each variant exported fresh, then
timed at batch 1 and 8 with Paddle Inference, ONNX Runtime and Paddle dygraph, beside its
parameters, multiply-adds and published ImageNet top-1. Writes a Markdown table, a CSV and a
PNG of published accuracy against measured latency (the trade-off MnasNet was searched for).

    python tools/benchmark.py --threads 2 --out_dir log/benchmark
    python tools/benchmark.py --names MnasNet_B1_x1_0 MnasNet_A1_x1_0 --size 224
"""

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)


def variant_records():
    """ppcls/arch/backbone/model_zoo/mnasnet_variants.py, loaded from its file: importing it
    through the ppcls.arch package would import Paddle before OMP_NUM_THREADS is set (and
    into benchmark_cpu's PyTorch worker). It imports nothing of ppcls, so this is safe."""
    import importlib.util

    path = os.path.join(ROOT, "ppcls", "arch", "backbone", "model_zoo", "mnasnet_variants.py")
    spec = importlib.util.spec_from_file_location("mnasnet_variants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", nargs="*", default=[v.name for v in variant_records().VARIANTS])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch_sizes", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no_dygraph", action="store_true", help="skip the dygraph timing")
    parser.add_argument("--out_dir", default="output/benchmark",
                        help="where the table, CSV and plot go (the committed run is in log/benchmark)")
    return parser.parse_args(argv)


def median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_variant(name, args, work_dir):
    import numpy as np
    import paddle

    from ppcls.engine.export import InferenceModel, build_inference_network, export_inference_model
    from ppcls.inference import DEPLOY_DEFAULTS, RUNNERS
    from ppcls.utils.config import validate
    from ppcls.utils.model_stats import count_macs, count_params
    from tools.export_onnx import export_onnx

    config = validate({"Global": {"image_shape": [3, args.size, args.size], "device": "cpu"},
                       "Arch": {"name": name}})
    model_dir = os.path.join(work_dir, name)
    export_inference_model(config, model_dir)
    export_onnx(model_dir)
    g = {**DEPLOY_DEFAULTS, "inference_model_dir": model_dir, "cpu_num_threads": args.threads}
    backends = {"paddle": RUNNERS["paddle"](g), "onnxruntime": RUNNERS["onnxruntime"](g)}
    network = build_inference_network(config)
    if not args.no_dygraph:
        dygraph = InferenceModel(network)

        def run_dygraph(x):
            with paddle.no_grad():
                return dygraph(paddle.to_tensor(x)).numpy()

        backends["dygraph"] = run_dygraph
    row = {"model": name, "params_M": count_params(network) / 1e6,
           "MACs_M": count_macs(network, args.size) / 1e6}
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        x = rng.standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
        for backend, run in backends.items():
            ms = median_ms(lambda: run(x), args.warmup, args.repeats)
            row[f"{backend}_b{batch}_ms"] = ms
            row[f"{backend}_b{batch}_img_s"] = batch * 1000 / ms
    return row


def write_outputs(rows, args, header_note):
    from ppcls.arch.backbone.model_zoo.mnasnet_variants import best_published_top1

    for row in rows:
        row["published_top1"], row["top1_source"] = best_published_top1(row["model"])
    os.makedirs(args.out_dir, exist_ok=True)
    keys = list(rows[0])
    with open(os.path.join(args.out_dir, "benchmark.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    backends = [k[:-6] for k in keys if k.endswith(f"_b{args.batch_sizes[0]}_ms")]
    backends = sorted({b.rsplit("_b", 1)[0] for b in backends}, key=["paddle", "onnxruntime", "dygraph"].index)
    columns = ["model", "params (M)", f"MACs @{args.size} (M)", "published top-1"]
    for batch in args.batch_sizes:
        columns += [f"{b} b{batch} (ms)" for b in backends]
        columns += [f"paddle b{batch} (img/s)"]
    lines = [header_note, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row["model"], f"{row['params_M']:.2f}", f"{row['MACs_M']:.1f}",
                 f"{row['published_top1']}" if row["published_top1"] else "-"]
        for batch in args.batch_sizes:
            cells += [f"{row[f'{b}_b{batch}_ms']:.2f}" for b in backends]
            cells += [f"{row[f'paddle_b{batch}_img_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Published top-1: the highest figure in ppcls/arch/backbone/model_zoo/"
              "mnasnet_variants.py, from its source (not measured here)."]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out_dir, "benchmark.md"), "w") as f:
        f.write(table)
    plot(rows, args)
    return table


def plot(rows, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = args.batch_sizes[0]
    points = [r for r in rows if r["published_top1"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, marker in (("B1", "o"), ("A1", "s"), ("small", "^")):
        chosen = [r for r in points if f"_{family}" in r["model"]]
        ax.scatter([r[f"paddle_b{batch}_ms"] for r in chosen], [r["published_top1"] for r in chosen],
                   marker=marker, label=f"MnasNet-{family}")
        for r in chosen:
            ax.annotate(r["model"].replace("MnasNet_", ""), (r[f"paddle_b{batch}_ms"], r["published_top1"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"Paddle Inference latency, batch {batch}, {args.size}px, {args.threads} threads (ms, measured)")
    ax.set_ylabel("ImageNet top-1 (%, published by the sources)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "accuracy_vs_latency.png"), dpi=120)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown CPU"


def main(argv=None):
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before Paddle is imported
    from ppcls.utils.threads import set_default_threads

    set_default_threads()
    import platform

    import paddle

    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for name in args.names:
            rows.append(measure_variant(name, args, work_dir))
            print(f"measured {name}", flush=True)
    note = (f"`python tools/benchmark.py {' '.join(sys.argv[1:] if argv is None else argv)}` on "
            f"{os.cpu_count()} CPU cores ({platform.machine()}, {cpu_name()}), "
            f"{args.threads} threads, paddlepaddle {paddle.__version__}; median of {args.repeats} "
            f"runs after {args.warmup} warm-up runs, random weights, input {args.size}x{args.size}.")
    print(write_outputs(rows, args, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
