"""Images per second of a config's training loader, beside torchvision's standard pipeline
on the same JPEG files with the same worker count (when an interpreter with torchvision is
given), and the per-batch fetch cost the training process sees.

    python tools/make_jpeg_dataset.py --out dataset/jpeg_bench
    python tools/benchmark_loader.py -c configs/ImageNet/MnasNet/MnasNet_B1_x1_0.yaml \
        --data dataset/jpeg_bench --workers 2 --batch-size 64 --rounds 5 \
        --torchvision_python /tmp/tvvenv/bin/python

Every measurement runs in a fresh process (ours, then torchvision's, alternating round by
round) and times whole epochs, worker start-up included. Printed per pipeline, as medians
over the rounds:
  - images/s: wall-clock throughput with --workers loader workers;
  - images/s per core: images per CPU-second spent by the measuring process and all its
    workers together (user + system time), so a pipeline cannot look fast by using more
    cores than the other.
"ours" is the config's DataLoader.Train (its transform_ops, sampler and batch operators) with
the batches as the training step receives them (normalised, mixed float tensors) on this
machine's CPU device, where the workers normalise and mix, as before. "ours-host" is the
part a GPU run leaves on the CPU: uint8 batches and the mixing plan, normalisation and
Mixup being the GPU's. torchvision's is ImageFolder, PIL, RandomResizedCrop(224),
RandomHorizontalFlip, ToTensor, Normalize (no Mixup).

`--fetch` instead times what train.log calls reader_cost: the microseconds the training
process spends taking a batch the loader already prepared while a `--step-ms` step ran.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from ppcls.utils.cli import run  # noqa: E402
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def cpu_seconds():
    """User + system time of this process and of its children that were waited for."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                      resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_epochs(make_batches, epochs):
    """{images, seconds, cpu} over `epochs` passes; workers end with each pass."""
    images, cpu0, tic = 0, cpu_seconds(), time.perf_counter()
    for epoch in range(1, epochs + 1):
        for batch in make_batches(epoch):
            images += batch[0].shape[0]
    return {"images": images, "seconds": time.perf_counter() - tic, "cpu": cpu_seconds() - cpu0}


def ours_loader(args, normalize_on_device=None):
    sys.path.insert(0, ROOT)
    from ppcls.data import build_dataloader
    from ppcls.utils.config import class_num_of, get_config

    overrides = list(args.override)
    if args.data:
        overrides += [f"DataLoader.Train.dataset.image_root={args.data}",
                      f"DataLoader.Train.dataset.cls_label_path={args.data}/train_list.txt"]
    if args.workers is not None:
        overrides.append(f"DataLoader.Train.loader.num_workers={args.workers}")
    if args.batch_size is not None:
        overrides.append(f"DataLoader.Train.sampler.batch_size={args.batch_size}")
    overrides.append("Global.device=cpu")
    config = get_config(args.config, overrides)
    return build_dataloader(config, "Train", 0, class_num_of(config), normalize_on_device)


def measure_ours(args, host_only=False):
    loader = ours_loader(args, normalize_on_device=host_only or None)
    if host_only:  # what a GPU run leaves on the CPU: normalise and mix are the GPU's
        loader.normalize = None

    def batches(epoch):
        loader.batch_sampler.set_epoch(epoch)
        return loader

    return time_epochs(batches, args.epochs)


def measure_torchvision(args):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import torch
    from make_transform_fixture import import_torchvision

    tv = import_torchvision()
    T = tv.transforms
    transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(MEAN, STD)])
    dataset = tv.datasets.ImageFolder(args.data, transform=transform)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size or 64,
                                         shuffle=True, num_workers=args.workers or 0)
    return time_epochs(lambda epoch: loader, args.epochs)


PIPELINES = {"ours": measure_ours, "ours-host": lambda args: measure_ours(args, host_only=True),
             "torchvision": measure_torchvision}


def time_fetches(loader, epochs, step_seconds):
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


def child_command(args, python, side):
    cmd = [python, os.path.abspath(__file__), "--child", side, "-c", args.config,
           "--epochs", str(args.epochs)]
    for key in ("data", "workers", "batch_size"):
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    for override in args.override:
        cmd += ["-o", override]
    return cmd


def run_child(args, python, side):
    out = subprocess.run(child_command(args, python, side), check=True, capture_output=True,
                         text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(name, runs):
    rate = statistics.median(r["images"] / r["seconds"] for r in runs)
    per_core = statistics.median(r["images"] / r["cpu"] for r in runs)
    rounds = ", ".join(f"{r['images'] / r['seconds']:.0f}" for r in runs)
    print(f"{name:12s} {rate:8.1f} images/s  {per_core:8.1f} images/s per core  "
          f"(images/s by round: {rounds})")
    return rate, per_core


def compare(args):
    sides = [("ours", sys.executable), ("ours-host", sys.executable)]
    if args.torchvision_python:
        sides.append(("torchvision", args.torchvision_python))
    runs = {side: [] for side, _ in sides}
    for round_ in range(args.rounds):
        order = sides if round_ % 2 == 0 else sides[::-1]  # alternate who goes first
        for side, python in order:
            runs[side].append(run_child(args, python, side))
    print(f"{args.epochs} epoch(s) of {runs['ours'][0]['images'] // args.epochs} images, "
          f"batch {args.batch_size}, {args.workers} workers, medians of {args.rounds} rounds; "
          f"{os.cpu_count()} CPUs")
    ours = summarise("ours", runs["ours"])
    host = summarise("ours-host", runs["ours-host"])
    if "torchvision" in runs:
        theirs = summarise("torchvision", runs["torchvision"])
        for name, figures in (("ours", ours), ("ours-host", host)):
            print(f"{name} / torchvision: {figures[0] / theirs[0]:.2f}x images/s, "
                  f"{figures[1] / theirs[1]:.2f}x images/s per core")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--data", help="a folder made by tools/make_jpeg_dataset.py")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torchvision_python", "--torchvision-python",
                        help="an interpreter with torch and torchvision (run without Paddle)")
    parser.add_argument("--fetch", action="store_true", help="time reader_cost instead")
    parser.add_argument("--step-ms", type=float, default=30.0)
    parser.add_argument("--child", choices=tuple(PIPELINES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(PIPELINES[args.child](args)))
    elif args.fetch:
        costs = time_fetches(ours_loader(args), args.epochs, args.step_ms / 1000)
        print(f"fetch: {statistics.fmean(costs) * 1e6:.0f} us mean, "
              f"{statistics.median(costs) * 1e6:.0f} us median ({len(costs)} batches)")
    else:
        if args.torchvision_python and not args.data:
            parser.error("--torchvision_python needs --data (an image folder both can read)")
        compare(args)


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
