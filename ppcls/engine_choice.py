"""Which engine runs an exported model on a CPU (deploy keys `Global.engine`, `Global.backend`).

    engine: auto (default) | openvino | onednn | native | onnxruntime
    backend: auto (default) | paddle | onnxruntime     (PaddleClas's use_onnx: True = onnxruntime)

An engine named by `engine` runs, or is refused in one line when another key contradicts
it. `auto` takes every engine the other keys allow: Paddle Inference's OpenVINO engine
(unless use_openvino: False), oneDNN (enable_mkldnn; Paddle's own kernels when it is
False), and ONNX Runtime when the model folder has inference.onnx (which export writes)
and the backend is not `paddle`. It builds each, times them in turns on a batch of the
configured size, keeps the fastest and logs the figures. No engine is fastest for every
model here: OpenVINO took 1.01-1.23x ONNX Runtime's time on MnasNet but 0.95x on
MnasNet-small at batch 1 (log/benchmark). The decision is kept in the cache's `engines/` folder, per
model content, batch size, threads and library versions, so the next start builds only
the winner; delete the folder (or name an engine) to decide again.

A precision key fixes the engine: use_bf16 is OpenVINO's bfloat16, use_fp16 on a CPU
oneDNN's bfloat16 and use_int8 oneDNN INT8 (or the QDQ model with backend onnxruntime);
on a GPU (use_gpu) the keys decide as before (ppcls/inference.py's gpu_plan).
"""

import hashlib
import json
import os
import statistics
import tempfile
import time

import numpy as np

from ppcls import inference
from ppcls.inference import (RUNNERS, backend_of, check_cpu_keys, cpu_fallback_engine,
                             onnxruntime_runner, openvino_unavailable, paddle_runner)
from ppcls.export.model_files import (LEGACY_ONNX_FILES, LEGACY_PROGRAM, MODEL_FILES, ONNX_FILE,
                                      PARAMS_FILE)
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, shown

ENGINES = ("auto", "openvino", "onednn", "native", "onnxruntime")
PADDLE_CPU_ENGINES = ("openvino", "onednn", "native")

# Timing `auto`'s candidates in one process: in turns, each turn after a pause in which the
# previous engine's thread pools stop spinning (OpenMP's 200 ms block time, ONNX Runtime's
# spin), one untimed run, then RUNS timed ones; ROUNDS turns each, the median decides.
ROUNDS, RUNS, PAUSE_S = 4, 5, 0.25
# ONNX Runtime, when it is a candidate, is kept unless another engine times more than
# PREFER_MARGIN faster. On this repository's 2-core benchmark (log/benchmark/benchmark.md)
# ONNX Runtime was the fastest engine or within 6% of it for every variant and batch size
# but one, while OpenVINO ran up to 1.23x and oneDNN up to 3.6x its time; and the same engine
# timed twice differs by several per cent, so a near tie decided by timing alone is random.
PREFERRED, PREFER_MARGIN = "onnxruntime", 0.05
DECISION_FILE_LIMIT = 64 * 1024  # bytes of a cached decision read back
OPEN_SIZE = 224  # height and width timed for a model that leaves them open


def build_runner(g, sample_shape=None):
    """(ModelRunner, engine name) for a deploy config's Global section. `sample_shape`:
    the (C, H, W) the preprocessing produces, for timing a model that leaves H and W open."""
    model_dir = g["inference_model_dir"]
    if g["use_gpu"]:
        if g["engine"] != "auto":
            raise ConfigError(f"Global.engine {shown(g['engine'])} chooses among CPU engines; with "
                              "use_gpu the GPU keys decide: remove engine")
        backend = backend_of(g)
        runner = RUNNERS["onnxruntime" if backend == "onnxruntime" else "paddle"](g)
        return runner, "onnxruntime" if backend == "onnxruntime" else "gpu"
    candidates = engine_candidates(g, model_dir)
    if len(candidates) == 1:
        return make_runner(g, candidates[0]), candidates[0]
    return fastest(g, candidates, sample_shape)


def make_runner(g, engine):
    return onnxruntime_runner(g) if engine == "onnxruntime" else paddle_runner(g, engine)


def engine_candidates(g, model_dir):
    """The CPU engines the keys allow, one when they fix it (an explicit engine, a precision,
    backend onnxruntime); a one-line refusal for keys that contradict each other."""
    engine, backend = g["engine"], backend_of(g)
    if engine not in ENGINES:
        raise ConfigError(f"Global.engine must be one of {', '.join(ENGINES)}, got {shown(engine)}")
    if engine != "auto":
        check_named_engine(g, engine, backend, model_dir)
        return [engine]
    if backend == "onnxruntime":
        return ["onnxruntime"]
    check_cpu_keys(g)  # a key every Paddle engine refuses is refused once, here
    first = inference.cpu_engine(g, model_dir)  # says why OpenVINO cannot run, when it cannot
    if g["use_bf16"] or g["use_fp16"] or g["use_int8"]:
        return [first]  # the one engine that runs the precision
    paddle = [first] + ([cpu_fallback_engine(g)] if first == "openvino" else [])
    if backend == "paddle":
        return paddle
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in (ONNX_FILE, *LEGACY_ONNX_FILES)):
        logger.info(f"engine auto: ONNX Runtime not tried (no {ONNX_FILE} in {model_dir}: "
                    f"python tools/export_onnx.py --model_dir {model_dir} writes it)")
        return paddle
    return paddle + ["onnxruntime"]


def check_named_engine(g, engine, backend, model_dir):
    """One line for a key that contradicts an engine named by Global.engine."""
    def refuse(why):
        raise ConfigError(f"Global.engine {engine}: {why}")

    if engine == "onnxruntime":
        if backend == "paddle":
            refuse("it is not Paddle Inference's, and Global.backend is paddle")
        return  # onnxruntime_runner refuses the precisions it does not run
    if backend == "onnxruntime":
        refuse("Global.backend is onnxruntime (or use_onnx is True): choose one")
    if g["use_bf16"] and engine != "openvino":
        refuse("use_bf16 runs on the openvino engine")
    if (g["use_fp16"] or g["use_int8"]) and engine != "onednn":
        refuse("use_fp16 and use_int8 run on the onednn engine")
    if engine == "openvino":
        if not g["use_openvino"]:
            refuse("use_openvino is False")
        reason = openvino_unavailable(g, model_dir)
        if reason:
            refuse(f"OpenVINO cannot run here: {reason}")
    if engine == "onednn" and not g["enable_mkldnn"]:
        refuse("enable_mkldnn is False")


def fastest(g, candidates, sample_shape):
    """The fastest candidate's (runner, engine), from the cache or timed now."""
    path = decision_path(g, candidates)
    decision = read_decision(path, candidates) if path else None
    if decision:
        logger.info(f"engine auto: {decision['engine']} ({describe(decision)}; decided before, "
                    f"kept in {path})")
        return make_runner(g, decision["engine"]), decision["engine"]
    runners, failed = {}, {}
    for engine in candidates:
        try:
            runners[engine] = make_runner(g, engine)
        except (ConfigError, RuntimeError, OSError) as err:
            failed[engine] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for engine, reason in failed.items():
        logger.info(f"engine auto: {engine} could not start ({reason}); "
                    + (f"running {next(iter(runners))}" if len(runners) == 1 else "not timed"))
    if not runners:
        raise ConfigError(f"no engine could run {g['inference_model_dir']} (tried "
                          f"{', '.join(candidates)}; their reasons are logged above)")
    if len(runners) == 1:  # nothing to compare, and nothing to keep: the others may start next time
        return next(iter(runners.values())), next(iter(runners))
    batch = int(g["batch_size"])
    shape = [batch, *(d or OPEN_SIZE for d in (sample_shape or next(iter(runners.values())).input_shape))]
    decision = {"engine": None, "ms": time_in_turns(runners, shape), "batch_size": batch,
                "threads": int(g["cpu_num_threads"]), "model_dir": os.path.abspath(g["inference_model_dir"])}
    decision["engine"] = pick(decision["ms"])
    logger.info(f"engine auto: {decision['engine']} ({describe(decision)})")
    if path:
        write_decision(path, decision)
    return runners[decision["engine"]], decision["engine"]


def pick(ms):
    """The engine to keep, from {engine: median ms}: the fastest, or PREFERRED within
    PREFER_MARGIN of it."""
    fastest_engine = min(ms, key=ms.get)
    if PREFERRED in ms and ms[PREFERRED] * (1 - PREFER_MARGIN) <= ms[fastest_engine]:
        return PREFERRED
    return fastest_engine


def decision_path(g, candidates):
    """Where the decision for these settings is kept; None without a cache folder."""
    try:
        from ppcls.utils.cache import cache_dir

        return os.path.join(cache_dir("engines"), decision_key(g, candidates) + ".json")
    except (OSError, RuntimeError):  # no home folder to cache in: decide every time
        return None


def describe(decision):
    figures = ", ".join(f"{engine} {ms:.2f} ms" for engine, ms in sorted(decision["ms"].items(),
                                                                          key=lambda item: item[1]))
    return (f"per batch of {decision['batch_size']} on {decision['threads']} threads: {figures}, "
            f"median of {ROUNDS * RUNS} runs each")


def time_in_turns(runners, shape):
    """{engine: median ms} of each runner on one random batch of `shape`."""
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for run in runners.values():
        run(batch)  # the first run builds and compiles
    times = {engine: [] for engine in runners}
    order = list(runners)
    for round_ in range(ROUNDS):
        for engine in order[round_ % len(order):] + order[:round_ % len(order)]:
            time.sleep(PAUSE_S)
            runners[engine](batch)
            for _ in range(RUNS):
                start = time.perf_counter()
                runners[engine](batch)
                times[engine].append((time.perf_counter() - start) * 1000)
    return {engine: statistics.median(values) for engine, values in times.items()}


def decision_key(g, candidates):
    """A digest of everything the timing depends on: the model's files (content), the
    candidates, batch size, threads, IR optimisation, library versions and the CPU."""
    from ppcls.utils.threads import cpu_info

    digest = hashlib.sha256()
    model_dir = g["inference_model_dir"]
    for name in (*MODEL_FILES, LEGACY_PROGRAM, PARAMS_FILE, ONNX_FILE, *LEGACY_ONNX_FILES):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            digest.update(name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    vendor, flags = cpu_info()
    settings = {"candidates": list(candidates), "batch_size": int(g["batch_size"]),
                "threads": int(g["cpu_num_threads"]), "ir_optim": bool(g["ir_optim"]),
                "versions": library_versions(), "cpu": [vendor, sorted(flags), os.cpu_count()]}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def library_versions():
    import paddle

    versions = {"paddle": paddle.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def read_decision(path, candidates):
    """A decision written by write_decision, or None when there is none or it does not
    fit (unreadable, too large, another shape, an engine that is not a candidate)."""
    try:
        if os.path.getsize(path) > DECISION_FILE_LIMIT:
            return None
        with open(path, encoding="utf-8") as f:
            decision = json.load(f)
    except (OSError, ValueError):
        return None
    valid = (isinstance(decision, dict) and decision.get("engine") in candidates
             and isinstance(decision.get("ms"), dict)
             and all(e in candidates and isinstance(ms, (int, float)) for e, ms in decision["ms"].items())
             and isinstance(decision.get("batch_size"), int) and isinstance(decision.get("threads"), int))
    return decision if valid else None


def write_decision(path, decision):
    """Written whole or not at all (processes may decide at the same time)."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False,
                                         encoding="utf-8") as f:
            json.dump(decision, f, indent=1)
        os.replace(f.name, path)
    except OSError as err:
        logger.info(f"engine auto: could not keep the decision in {folder} ({err}); it is "
                    "timed again next time")
