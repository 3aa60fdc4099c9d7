"""Time a config's DataLoader.Train without the model.

    python tools/benchmark_loader.py -c configs/quick_start/MnasNet_B1_x0_5_digits.yaml

Prints two figures over `--epochs` passes:
  - drain: milliseconds per batch when batches are taken as fast as the loader makes them
    (its throughput: decoding and augmentation);
  - fetch: microseconds the training process spends taking a batch the loader already
    prepared while a `--step-ms` training step ran (what train.log calls reader_cost).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.threads import set_default_threads  # noqa: E402

set_default_threads()  # before Paddle is imported

from ppcls.data import build_dataloader  # noqa: E402
from ppcls.utils.config import class_num_of, get_config  # noqa: E402


def time_batches(loader, epochs, step_seconds):
    """Seconds to obtain each batch, the first of every epoch left out (start-up)."""
    costs = []
    for epoch in range(1, epochs + 1):
        loader.batch_sampler.set_epoch(epoch)
        batches = iter(loader)
        first = True
        while True:
            time.sleep(step_seconds)
            tic = time.perf_counter()
            try:
                next(batches)
            except StopIteration:
                break
            if not first:
                costs.append(time.perf_counter() - tic)
            first = False
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--step-ms", type=float, default=30.0)
    args = parser.parse_args()
    config = get_config(args.config, args.override)
    loader = build_dataloader(config, "Train", 0, class_num_of(config))
    drain = time_batches(loader, args.epochs, 0.0)
    fetch = time_batches(loader, args.epochs, args.step_ms / 1000)
    print(f"drain: {statistics.fmean(drain) * 1e3:.3f} ms/batch mean, "
          f"{statistics.median(drain) * 1e3:.3f} median ({len(drain)} batches)")
    print(f"fetch: {statistics.fmean(fetch) * 1e6:.0f} us mean, "
          f"{statistics.median(fetch) * 1e6:.0f} us median ({len(fetch)} batches)")


if __name__ == "__main__":
    main()
