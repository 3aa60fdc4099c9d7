"""Inference latency of MnasNet variants on this machine: each variant exported fresh, then
timed at batch 1 and 8 with the deployed predictor's default (`Global.engine: auto`, which
times the engines itself and keeps the fastest: the engine it chose is shown), with each
engine named (Paddle Inference's OpenVINO, oneDNN, ONNX Runtime), in bfloat16 (OpenVINO's,
`use_bf16`; oneDNN's, `use_fp16`) and with Paddle dygraph, beside its parameters,
multiply-adds, published ImageNet top-1 and the floor: the multiply-adds at this machine's
measured peak float32 matrix-multiply rate. With --top1_model, the top-1 of a trained model
in each precision is printed beside the speed. Each backend runs in a process of its own, as
a deployment would (in one process their thread pools spin against each other and slow
whichever runs next); the backends take turns, --rounds processes each, --repeats timed runs
per process and batch size; every figure is the median of all its runs. Writes a Markdown
table, a CSV and a PNG of published accuracy against measured latency.

    python tools/benchmark.py --threads 2 --out_dir log/benchmark
    python tools/benchmark.py --names MnasNet_B1_x1_0 MnasNet_A1_x1_0 --size 224
    python tools/benchmark.py --names MnasNet_B1_x1_0 --top1_model inference/quick_start \
        --top1_images dataset/digits/images/val --top1_list dataset/digits/val_list.txt
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
from ppcls.utils.cli import run  # noqa: E402


def variant_records():
    """The MnasNet variant records (a module). Importing them imports no Paddle, which must
    not be loaded before OMP_NUM_THREADS is set (nor into benchmark_cpu's PyTorch worker)."""
    import ppcls.arch.backbone.model_zoo.mnasnet.variants as variants

    return variants


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", nargs="*", default=[v.name for v in variant_records().VARIANTS])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch_sizes", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="runs per backend per round")
    parser.add_argument("--rounds", type=int, default=3, help="turns (processes) each backend takes")
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "NAME", "MODEL_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--no_dygraph", action="store_true", help="skip the dygraph timing")
    parser.add_argument("--backends", nargs="*", default=None, choices=BACKENDS,
                        help="the columns to time (default: all; the bfloat16 ones only on CPUs with "
                             "bfloat16 instructions)")
    parser.add_argument("--top1_model", help="a trained exported model: its top-1 in each precision")
    parser.add_argument("--top1_images", help="the folder of --top1_list's images")
    parser.add_argument("--top1_list", help="'relative/path.png label' lines")
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


# default: the predictor's deploy defaults (Global.engine auto); paddle: Paddle Inference's
# engine by the keys (OpenVINO); paddle_bf16: use_bf16 (OpenVINO bfloat16); paddle_onednn_bf16:
# use_fp16 on a CPU (oneDNN bfloat16)
BACKENDS = ("default", "paddle", "paddle_onednn", "onnxruntime", "paddle_bf16", "paddle_onednn_bf16",
            "dygraph")
BF16_BACKENDS = ("paddle_bf16", "paddle_onednn_bf16")
DEPLOY_KEYS = {"paddle_onednn": {"use_openvino": False}, "paddle_bf16": {"use_bf16": True},
               "paddle_onednn_bf16": {"use_fp16": True, "use_openvino": False}}


def backend_runner(backend, name, model_dir, args, batch):
    """run(images) -> probabilities for one backend, built in this (worker) process, and the
    engine that runs."""
    from ppcls.inference import DEPLOY_DEFAULTS, RUNNERS

    g = {**DEPLOY_DEFAULTS, "inference_model_dir": model_dir, "cpu_num_threads": args.threads,
         "batch_size": batch, **DEPLOY_KEYS.get(backend, {})}
    if backend == "default":
        from ppcls.engine_choice import build_runner

        return build_runner(g)
    if backend in ("paddle", "paddle_onednn", "paddle_bf16", "paddle_onednn_bf16"):
        runner = RUNNERS["paddle"](g)
        return runner, runner.engine
    if backend == "onnxruntime":
        return RUNNERS["onnxruntime"](g), "onnxruntime"
    import paddle

    from ppcls.export.inference_model import InferenceModel, build_inference_network

    network = InferenceModel(build_inference_network(variant_config(name, args)))

    def run_dygraph(x):
        with paddle.no_grad():
            return network(paddle.to_tensor(x)).numpy()

    return run_dygraph, "dygraph"


def run_worker(args):
    """One turn of one backend: `repeats` timed runs per batch size, printed as JSON (the
    default builds its runner per batch size, as a deployment of that batch size would)."""
    import json

    import numpy as np

    backend, name, model_dir = args.worker
    times, engines, run = {}, {}, None
    for batch in args.batch_sizes:
        if run is None or backend == "default":
            run, engines[batch] = backend_runner(backend, name, model_dir, args, batch)
        engines[batch] = engines.get(batch) or engines[args.batch_sizes[0]]
        x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
        for _ in range(args.warmup):
            run(x)
        times[batch] = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(x)
            times[batch].append((time.perf_counter() - start) * 1000)
    print("TIMES " + json.dumps(times))
    print("ENGINES " + json.dumps(engines))
    return 0


def time_in_turns(backends, name, model_dir, args, argv):
    """({backend: {batch: median ms}}, {batch: the default's engine}): each round starts one
    process per backend, the order rotating from round to round."""
    import json
    import subprocess

    times = {b: {batch: [] for batch in args.batch_sizes} for b in backends}
    chosen = {}
    for round_ in range(args.rounds):
        for backend in backends[round_ % len(backends):] + backends[:round_ % len(backends)]:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), *argv,
                                   "--worker", backend, name, model_dir],
                                  capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("TIMES ")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise SystemExit(f"error: {backend} on {name} failed: {tail[0]}")
            for batch, values in json.loads(lines[-1][len("TIMES "):]).items():
                times[backend][int(batch)] += values
            if backend == "default":
                engines = [line for line in done.stdout.splitlines() if line.startswith("ENGINES ")]
                for batch, engine in json.loads(engines[-1][len("ENGINES "):]).items():
                    chosen.setdefault(int(batch), set()).add(engine)
    return ({b: {batch: statistics.median(v) for batch, v in per_batch.items()}
             for b, per_batch in times.items()},
            {batch: "/".join(sorted(engines)) for batch, engines in chosen.items()})


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


def variant_config(name, args):
    from ppcls.utils.config import validate

    return validate({"Global": {"image_shape": [3, args.size, args.size], "device": "cpu"},
                     "Arch": {"name": name}})


def measure_variant(name, args, argv, work_dir, gflops):
    from ppcls.export.inference_model import build_inference_network, export_inference_model
    from ppcls.export.onnx_model import export_onnx
    from ppcls.utils.model_stats import count_macs, count_params

    config = variant_config(name, args)
    model_dir = os.path.join(work_dir, name)
    export_inference_model(config, model_dir)
    export_onnx(model_dir)
    forget_engine_decisions(model_dir, args)
    network = build_inference_network(config)
    macs = count_macs(network, args.size)
    row = {"model": name, "params_M": count_params(network) / 1e6, "MACs_M": macs / 1e6}
    backends = chosen_backends(args)
    medians, engines = time_in_turns(backends, name, model_dir, args, argv)
    for batch in args.batch_sizes:
        row[f"floor_b{batch}_ms"] = 2 * macs * batch / (gflops * 1e9) * 1000
        if batch in engines:
            row[f"default_b{batch}_engine"] = engines[batch]
        for backend in backends:
            ms = medians[backend][batch]
            row[f"{backend}_b{batch}_ms"] = ms
            row[f"{backend}_b{batch}_img_s"] = batch * 1000 / ms
    return row


def chosen_backends(args):
    from ppcls.inference import BF16_CPU_FLAGS
    from ppcls.utils.threads import cpu_info

    backends = [b for b in (args.backends or BACKENDS) if not (args.no_dygraph and b == "dygraph")]
    if not set(BF16_CPU_FLAGS) & cpu_info()[1]:
        backends = [b for b in backends if b not in BF16_BACKENDS]
    return [b for b in BACKENDS if b in backends]


def forget_engine_decisions(model_dir, args):
    """A fresh export, a fresh choice: the default's decisions for this model are dropped so
    that this run times the engines (random weights may repeat from run to run)."""
    from ppcls.engine_choice import decision_path, engine_candidates
    from ppcls.inference import DEPLOY_DEFAULTS

    for batch in args.batch_sizes:
        g = {**DEPLOY_DEFAULTS, "inference_model_dir": model_dir, "cpu_num_threads": args.threads,
             "batch_size": batch}
        path = decision_path(g, engine_candidates(g, model_dir))
        if path and os.path.exists(path):
            os.remove(path)


ORDER = ["default", "paddle", "paddle_onednn", "onnxruntime", "paddle_bf16", "paddle_onednn_bf16",
         "dygraph", "floor"]
NOTE = ("default: the predictor's deploy defaults (Global.engine: auto, which timed the engines at "
        "its first start and kept the fastest: the engine column); paddle: Paddle Inference's engine "
        "by the keys (the OpenVINO engine bundled in Paddle); paddle_onednn: the same with "
        "-o Global.use_openvino=False; onnxruntime: paddle2onnx's conversion in ONNX Runtime (all "
        "graph optimisations); paddle_bf16: -o Global.use_bf16=True (OpenVINO in bfloat16); "
        "paddle_onednn_bf16: -o Global.use_fp16=True (oneDNN's bfloat16 kernels); floor: the "
        "multiply-adds at this machine's peak float32 matrix-multiply rate (measured in the same "
        "run). Published top-1: the highest figure in ppcls/arch/backbone/model_zoo/mnasnet/variants.py, "
        "from its source (not measured here).")


def write_outputs(rows, args, header_note, precision_table=None):
    from ppcls.arch.backbone.model_zoo.mnasnet.variants import best_published_top1

    for row in rows:
        row["published_top1"], row["top1_source"] = best_published_top1(row["model"])
    os.makedirs(args.out_dir, exist_ok=True)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(args.out_dir, "benchmark.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    backends = sorted({k[:-len(f"_b{args.batch_sizes[0]}_ms")] for k in keys
                       if k.endswith(f"_b{args.batch_sizes[0]}_ms")}, key=ORDER.index)
    lead = "default" if "default" in backends else "paddle"
    ratios = [b for b in ("default", "paddle") if b in backends and "onnxruntime" in backends]
    columns = ["model", "params (M)", f"MACs @{args.size} (M)", "published top-1"]
    for batch in args.batch_sizes:
        columns += [f"{b} b{batch} (ms)" for b in backends]
        columns += ([f"default engine b{batch}"] if "default" in backends else [])
        columns += [f"{b} / onnxruntime b{batch}" for b in ratios] + [f"{lead} b{batch} (img/s)"]
    lines = [header_note, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row["model"], f"{row['params_M']:.2f}", f"{row['MACs_M']:.1f}",
                 f"{row['published_top1']}" if row["published_top1"] else "-"]
        for batch in args.batch_sizes:
            cells += [f"{row[f'{b}_b{batch}_ms']:.2f}" for b in backends]
            cells += [row[f"default_b{batch}_engine"]] if "default" in backends else []
            cells += [f"{row[f'{b}_b{batch}_ms'] / row[f'onnxruntime_b{batch}_ms']:.2f}x" for b in ratios]
            cells += [f"{row[f'{lead}_b{batch}_img_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", NOTE]
    if precision_table:
        lines += ["", precision_table]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out_dir, "benchmark.md"), "w") as f:
        f.write(table)
    plot(rows, args, lead)
    return table


def plot(rows, args, lead="paddle"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = args.batch_sizes[0]
    points = [r for r in rows if r["published_top1"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, marker in (("B1", "o"), ("A1", "s"), ("small", "^")):
        chosen = [r for r in points if f"_{family}" in r["model"]]
        ax.scatter([r[f"{lead}_b{batch}_ms"] for r in chosen], [r["published_top1"] for r in chosen],
                   marker=marker, label=f"MnasNet-{family}")
        for r in chosen:
            ax.annotate(r["model"].replace("MnasNet_", ""), (r[f"{lead}_b{batch}_ms"], r["published_top1"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"deployed predictor latency ({lead}), batch {batch}, {args.size}px, {args.threads} threads "
                  "(ms, measured)")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before Paddle is imported
    if args.worker:
        return run_worker(args)
    import platform

    import paddle

    gflops = peak_gflops(args.threads)
    print(f"peak float32 matrix multiply: {gflops:.0f} GFLOP/s on {args.threads} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for name in args.names:
            rows.append(measure_variant(name, args, argv, work_dir, gflops))
            print(f"measured {name}", flush=True)
    precision_table = precision_top1(args, rows) if args.top1_model else None
    note = (f"`python tools/benchmark.py {' '.join(argv)}` on "
            f"{os.cpu_count()} CPU cores ({platform.machine()}, {cpu_name()}), "
            f"{args.threads} threads, paddlepaddle {paddle.__version__}; each backend in its own "
            f"process, the backends taking turns for {args.rounds} rounds, {args.repeats} timed runs "
            f"per process after {args.warmup} warm-up runs, median of all runs; random weights, "
            f"input {args.size}x{args.size}; peak float32 "
            f"matrix multiply {gflops:.0f} GFLOP/s.")
    print(write_outputs(rows, args, note, precision_table))
    return 0


PRECISIONS = [("fp32", "default", []),
              ("bf16, OpenVINO", "paddle_bf16", ["Global.use_bf16=True"]),
              ("bf16, oneDNN", "paddle_onednn_bf16", ["Global.use_fp16=True", "Global.use_openvino=False"])]


def precision_top1(args, rows):
    """A Markdown table: the top-1 of --top1_model over --top1_list in each precision (each run
    by deploy/python/predict_cls.py in a process of its own), beside the latency of the
    precision in this run's table (B1 x1.0 when it was measured)."""
    import json
    import subprocess

    from tools.top1_of_predictions import top1

    if not (args.top1_images and args.top1_list):
        raise SystemExit("error: --top1_model needs --top1_images and --top1_list")
    row = next((r for r in rows if r["model"] == "MnasNet_B1_x1_0"), rows[0] if rows else None)
    lines = ["| precision | deploy keys | top-1 (%) | change (points) | "
             + " | ".join(f"{row['model'] if row else '-'} b{b} (ms)" for b in args.batch_sizes) + " |",
             "|" + "---|" * (4 + len(args.batch_sizes))]
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, backend, keys in PRECISIONS:
            if backend not in chosen_backends(args) and backend != "default":
                continue
            out = os.path.join(tmp, f"{backend}.json")
            command = [sys.executable, os.path.join(ROOT, "deploy", "python", "predict_cls.py"), "-c",
                       os.path.join(ROOT, "deploy", "configs", "inference_cls.yaml"),
                       "-o", f"Global.inference_model_dir={args.top1_model}",
                       "-o", f"Global.infer_imgs={args.top1_images}", "-o", f"Global.save_path={out}",
                       "-o", "Global.batch_size=16", "-o", f"Global.cpu_num_threads={args.threads}"]
            for key in keys:
                command += ["-o", key]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"error: {name} on {args.top1_model} failed: {done.stderr.strip()[-500:]}")
            with open(out, encoding="utf-8") as f:
                value = top1(json.load(f), args.top1_list) * 100
            first = value if first is None else first
            ms = [f"{row[f'{backend}_b{b}_ms']:.2f}" if row and f"{backend}_b{b}_ms" in row else "-"
                  for b in args.batch_sizes]
            lines.append(f"| {name} | {' '.join(keys) or '(defaults)'} | {value:.2f} | "
                         f"{value - first:+.2f} | " + " | ".join(ms) + " |")
    return (f"Top-1 of {args.top1_model} over {args.top1_list} ({args.top1_images}) in each precision, "
            "beside this run's latency:\n\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
