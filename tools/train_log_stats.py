"""Summarise the per-iteration timings of a training log (`<output_dir>/<Arch>/train.log`).

    python tools/train_log_stats.py output/quick_start/MnasNet_B1_x0_5/train.log

Prints the mean and median `batch_cost` and `reader_cost` over every logged iteration,
leaving out each epoch's first one (it includes the loader's start-up). Use
`-o Global.print_batch_step=1` when training so that every iteration is logged.

    python tools/train_log_stats.py --ips --skip_steps 2 --device_num 1 train.log

prints the training speed as PaddleClas's TIPC benchmark reports it (test_tipc/benchmark_train.sh):
the mean of the logged `ips:` values after the first `skip_steps` logged iterations, times the
number of processes (each rank logs its own samples/s), and with --speed_log_file writes it
with the run's last loss as JSON.
"""

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.cli import run  # noqa: E402

LINE = re.compile(r"\[Train\]\[Epoch (\d+)/\d+\]\[Iter: (\d+)/\d+\].*batch_cost: ([\d.]+)s, "
                  r"reader_cost: ([\d.]+)s")


def read_timings(path):
    """(batch_cost, reader_cost) pairs of every logged iteration but each epoch's first."""
    timings = []
    with open(path) as f:
        for line in f:
            match = LINE.search(line)
            if match and int(match.group(2)) > 0:
                timings.append((float(match.group(3)), float(match.group(4))))
    if not timings:
        raise SystemExit(f"error: {path} has no [Train] iteration lines after the first of "
                         "an epoch (train with -o Global.print_batch_step=1)")
    return timings


IPS_LINE = re.compile(r"\[Train\]\[Epoch \d+/\d+\]\[Iter: \d+/\d+\].*?, loss: ([^,\s]+),.*ips: ([\d.]+)")


def speed(path, skip_steps, device_num):
    """PaddleClas's benchmark figure: mean logged ips after skip_steps, for all processes."""
    with open(path, errors="replace") as f:
        steps = [(float(m.group(1)), float(m.group(2))) for m in map(IPS_LINE.search, f) if m]
    kept = steps[skip_steps:]
    if not kept:
        raise SystemExit(f"error: {path} has {len(steps)} logged iterations, none after the first "
                         f"{skip_steps} (train longer, with -o Global.print_batch_step=1)")
    return {"ips": statistics.fmean(ips for _, ips in kept) * device_num, "speed_unit": "samples/s",
            "iterations": len(kept), "skip_steps": skip_steps, "device_num": device_num,
            "convergence_key": "loss:", "convergence_value": steps[-1][0]}


def summarise(timings):
    batch, reader = zip(*timings)
    return {"iterations": len(timings),
            "batch_cost_mean": statistics.fmean(batch),
            "batch_cost_median": statistics.median(batch),
            "reader_cost_mean": statistics.fmean(reader),
            "reader_cost_median": statistics.median(reader)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", help="train.log files")
    parser.add_argument("--ips", action="store_true", help="print the benchmark's ips instead")
    parser.add_argument("--skip_steps", type=int, default=2)
    parser.add_argument("--device_num", type=int, default=1, help="processes that trained")
    parser.add_argument("--speed_log_file", help="with --ips: also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.ips:
        for path in args.logs:
            result = speed(path, args.skip_steps, args.device_num)
            print(f"ips: {result['ips']:.5f} samples/s ({path}: mean of {result['iterations']} "
                  f"logged iterations after the first {args.skip_steps}, x{args.device_num} "
                  f"process(es)); last loss: {result['convergence_value']}")
            if args.speed_log_file:
                with open(args.speed_log_file, "w") as f:
                    json.dump(dict(result, log=path), f, indent=1)
        return
    print("| log | iterations | batch_cost mean / median (s) | reader_cost mean / median (s) |")
    print("| --- | --- | --- | --- |")
    for path in args.logs:
        s = summarise(read_timings(path))
        print(f"| {path} | {s['iterations']} | {s['batch_cost_mean']:.5f} / "
              f"{s['batch_cost_median']:.5f} | {s['reader_cost_mean']:.6f} / "
              f"{s['reader_cost_median']:.6f} |")


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
