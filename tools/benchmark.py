"""Inference latency of MnasNet variants on this machine: each variant exported fresh, then
timed at batch 1 and 8 with Paddle Inference as the deployed predictor runs it (OpenVINO
engine) and with oneDNN, ONNX Runtime and Paddle dygraph, beside its parameters,
multiply-adds, published ImageNet top-1 and the floor: the multiply-adds at this machine's
measured peak float32 matrix-multiply rate. The backends take turns (--rounds rounds of
--repeats runs each); every figure is the median of all its runs. Writes a Markdown table,
a CSV and a PNG of published accuracy against measured latency.

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
    parser.add_argument("--repeats", type=int, default=10, help="runs per backend per round")
    parser.add_argument("--rounds", type=int, default=5, help="turns each backend takes")
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


def time_alternating(backends, x, args):
    """Median ms per backend: after warm-up, the backends take turns, `repeats` runs each,
    for `rounds` rounds, so a slow spell of the machine falls on all of them."""
    for run in backends.values():
        for _ in range(args.warmup):
            run(x)
    times = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, run in backends.items():
            for _ in range(args.repeats):
                start = time.perf_counter()
                run(x)
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_gflops(threads, size=1024, repeats=10):
    """This machine's float32 matrix-multiply rate (ONNX Runtime's MatMul, as many threads as
    the models get): the rate a perfectly efficient model would run at."""
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    feeds = {"a": a, "b": a}
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def measure_variant(name, args, work_dir, gflops):
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
    backends = {"paddle": RUNNERS["paddle"](g),
                "paddle_onednn": RUNNERS["paddle"]({**g, "use_openvino": False}),
                "onnxruntime": RUNNERS["onnxruntime"](g)}
    network = build_inference_network(config)
    if not args.no_dygraph:
        dygraph = InferenceModel(network)

        def run_dygraph(x):
            with paddle.no_grad():
                return dygraph(paddle.to_tensor(x)).numpy()

        backends["dygraph"] = run_dygraph
    macs = count_macs(network, args.size)
    row = {"model": name, "params_M": count_params(network) / 1e6, "MACs_M": macs / 1e6}
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        x = rng.standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
        row[f"floor_b{batch}_ms"] = 2 * macs * batch / (gflops * 1e9) * 1000
        for backend, ms in time_alternating(backends, x, args).items():
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
    order = ["paddle", "paddle_onednn", "onnxruntime", "dygraph", "floor"]
    backends = sorted({b.rsplit("_b", 1)[0] for b in backends}, key=order.index)
    columns = ["model", "params (M)", f"MACs @{args.size} (M)", "published top-1"]
    for batch in args.batch_sizes:
        columns += [f"{b} b{batch} (ms)" for b in backends]
        columns += [f"paddle / onnxruntime b{batch}", f"paddle b{batch} (img/s)"]
    lines = [header_note, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row["model"], f"{row['params_M']:.2f}", f"{row['MACs_M']:.1f}",
                 f"{row['published_top1']}" if row["published_top1"] else "-"]
        for batch in args.batch_sizes:
            cells += [f"{row[f'{b}_b{batch}_ms']:.2f}" for b in backends]
            cells += [f"{row[f'paddle_b{batch}_ms'] / row[f'onnxruntime_b{batch}_ms']:.2f}x",
                      f"{row[f'paddle_b{batch}_img_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "paddle: Paddle Inference as deploy/python/predict_cls.py runs it (the OpenVINO "
              "engine bundled in Paddle); paddle_onednn: the same with -o Global.use_openvino=False; "
              "onnxruntime: paddle2onnx's conversion in ONNX Runtime (all graph optimisations); "
              "floor: the multiply-adds at this machine's peak float32 matrix-multiply rate "
              "(measured in the same run). Published top-1: the highest figure in "
              "ppcls/arch/backbone/model_zoo/mnasnet_variants.py, from its source (not measured here)."]
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

    gflops = peak_gflops(args.threads)
    print(f"peak float32 matrix multiply: {gflops:.0f} GFLOP/s on {args.threads} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for name in args.names:
            rows.append(measure_variant(name, args, work_dir, gflops))
            print(f"measured {name}", flush=True)
    note = (f"`python tools/benchmark.py {' '.join(sys.argv[1:] if argv is None else argv)}` on "
            f"{os.cpu_count()} CPU cores ({platform.machine()}, {cpu_name()}), "
            f"{args.threads} threads, paddlepaddle {paddle.__version__}; backends alternating, "
            f"{args.rounds} rounds of {args.repeats} runs each after {args.warmup} warm-up runs, "
            f"median of all runs; random weights, input {args.size}x{args.size}; peak float32 "
            f"matrix multiply {gflops:.0f} GFLOP/s.")
    print(write_outputs(rows, args, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
