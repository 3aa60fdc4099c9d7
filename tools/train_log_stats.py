"""Summarise the per-iteration timings of a training log (`<output_dir>/<Arch>/train.log`).

    python tools/train_log_stats.py output/quick_start/MnasNet_B1_x0_5/train.log

Prints the mean and median `batch_cost` and `reader_cost` over every logged iteration,
leaving out each epoch's first one (it includes the loader's start-up). Use
`-o Global.print_batch_step=1` when training so that every iteration is logged.
"""

import argparse
import re
import statistics

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


def summarise(timings):
    batch, reader = zip(*timings)
    return {"iterations": len(timings),
            "batch_cost_mean": statistics.fmean(batch),
            "batch_cost_median": statistics.median(batch),
            "reader_cost_mean": statistics.fmean(reader),
            "reader_cost_median": statistics.median(reader)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", help="train.log files")
    args = parser.parse_args()
    print("| log | iterations | batch_cost mean / median (s) | reader_cost mean / median (s) |")
    print("| --- | --- | --- | --- |")
    for path in args.logs:
        s = summarise(read_timings(path))
        print(f"| {path} | {s['iterations']} | {s['batch_cost_mean']:.5f} / "
              f"{s['batch_cost_median']:.5f} | {s['reader_cost_mean']:.6f} / "
              f"{s['reader_cost_median']:.6f} |")


if __name__ == "__main__":
    main()
