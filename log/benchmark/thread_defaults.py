"""Does giving Paddle its threads after its import (issue 24) cost speed? Each round runs two
fresh processes of the same script, `import ppcls` first as the tools do:

    before: OMP_NUM_THREADS=<node share> set before Paddle loads (what ppcls did until
            issue 24; Paddle then prints its "OMP_NUM_THREADS set to 2, not 1" warning)
    after:  nothing set: ppcls sets it right after Paddle's import, before any operation

and prints MnasNet-B1 x1.0 dygraph batch-1 latency at 224 (median of 30 after 5 warm-up
runs, our depthwise kernel on) and training images/s at batch 32 on 32 px (median of 5
steps), plus whether Paddle's warning appeared. Run from the repository root:

    python log/benchmark/thread_defaults.py [--rounds 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def worker():
    sys.path.insert(0, ROOT)
    import ppcls  # noqa: F401  (the defaults, as tools apply them)
    import paddle

    from ppcls.arch import build_model

    model = build_model({"Arch": {"name": "MnasNet_B1_x1_0", "class_num": 1000}})
    model.eval()
    x = paddle.randn([1, 3, 224, 224])
    with paddle.no_grad():
        times = []
        for i in range(35):
            start = time.perf_counter()
            model(x).numpy()
            if i >= 5:
                times.append((time.perf_counter() - start) * 1000)
    model.train()
    optimizer = paddle.optimizer.Momentum(0.01, parameters=model.parameters())
    images, labels = paddle.randn([32, 3, 32, 32]), paddle.randint(0, 1000, [32])
    rates = []
    for i in range(6):
        start = time.perf_counter()
        loss = paddle.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)
        if i:
            rates.append(32 / (time.perf_counter() - start))
    print(f"RESULT {statistics.median(times):.2f} {statistics.median(rates):.1f} "
          f"{os.environ['OMP_NUM_THREADS']}")


def run(mode):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if mode == "before":
        sys.path.insert(0, ROOT)
        from ppcls.utils.threads import node_share

        env["OMP_NUM_THREADS"] = str(node_share())
    done = subprocess.run([sys.executable, __file__, "--worker"], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    latency, rate, threads = line.split()[1:]
    warned = "OMP_NUM_THREADS set to" in done.stderr
    return float(latency), float(rate), threads, warned


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker()
    results = {"before": [], "after": []}
    for round_ in range(1, args.rounds + 1):
        for mode in results:
            latency, rate, threads, warned = run(mode)
            results[mode].append((latency, rate))
            print(f"round {round_} | {mode:6} | OMP_NUM_THREADS={threads} | dygraph b1 "
                  f"{latency:.2f} ms | train b32 @32 {rate:.1f} img/s | Paddle's warning "
                  f"{'printed' if warned else 'not printed'}", flush=True)
    for mode, rows in results.items():
        print(f"median {mode:6} | dygraph b1 {statistics.median(r[0] for r in rows):.2f} ms | "
              f"train b32 @32 {statistics.median(r[1] for r in rows):.1f} img/s")


if __name__ == "__main__":
    main()
