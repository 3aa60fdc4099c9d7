"""Compare two runs for the TIPC chains; exit 1, naming the first difference, when they differ.

    python test_tipc/compare_runs.py losses DYGRAPH.log TO_STATIC.log [--rtol 1e-4]
    python test_tipc/compare_runs.py predictions PADDLE.json ONNX.json [--atol 1e-4]

`losses` reads the `loss:` of every `[Train][Epoch e/E][Iter: i/N]` line of two training logs
(train with -o Global.print_batch_step=1 so that every iteration is logged) and compares them
step by step. `predictions` compares two result files of deploy/python/predict_cls.py
(-o Global.save_path=...): the same images, and each image's top-1 score and the scores of the
classes both top-k lists name agree within atol (the top-1 class itself may swap between
near-equal scores of a barely trained model, so classes are compared through their scores).
"""

import argparse
import json
import math
import re
import sys

TRAIN_LINE = re.compile(r"\[Train\]\[Epoch (\d+)/\d+\]\[Iter: (\d+)/\d+\].*?, loss: ([^,\s]+),")


def read_losses(path):
    """[((epoch, iteration), loss)] in log order."""
    steps = []
    with open(path, errors="replace") as f:
        for line in f:
            match = TRAIN_LINE.search(line)
            if match:
                steps.append(((int(match.group(1)), int(match.group(2))), float(match.group(3))))
    return steps


def compare_losses(a_path, b_path, rtol):
    a, b = read_losses(a_path), read_losses(b_path)
    if not a or not b:
        empty = a_path if not a else b_path
        return f"{empty}: no '[Train]...loss:' lines (did the training run?)"
    if [step for step, _ in a] != [step for step, _ in b]:
        return f"the logs have different steps: {len(a)} in {a_path}, {len(b)} in {b_path}"
    for (step, x), (_, y) in zip(a, b):
        print(f"epoch {step[0]} iter {step[1]}: {x:.5f} {y:.5f}")
        if not math.isclose(x, y, rel_tol=rtol, abs_tol=1e-5):  # 1e-5: the log's last digit
            return (f"losses differ at epoch {step[0]} iteration {step[1]}: {x} in {a_path}, "
                    f"{y} in {b_path} (rtol {rtol})")
    print(f"{len(a)} steps: losses agree within rtol {rtol}")
    return None


def compare_predictions(a_path, b_path, atol):
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    if [r.get("file_name") for r in a] != [r.get("file_name") for r in b] or not a:
        return f"{a_path} and {b_path} do not hold results for the same images"
    for x, y in zip(a, b):
        if "error" in x or "error" in y:
            return f"{x['file_name']}: {x.get('error') or y.get('error')}"
        x_scores = dict(zip(x["class_ids"], x["scores"]))
        y_scores = dict(zip(y["class_ids"], y["scores"]))
        pairs = [(x["scores"][0], y["scores"][0])] + [
            (x_scores[c], y_scores[c]) for c in x_scores.keys() & y_scores.keys()]
        worst = max(abs(p - q) for p, q in pairs)
        if worst > atol:
            return (f"{x['file_name']}: scores differ by {worst:.2e} > atol {atol} "
                    f"({a_path}: {x['class_ids']} {x['scores']}; {b_path}: {y['class_ids']} "
                    f"{y['scores']})")
    print(f"{len(a)} images: scores agree within atol {atol}")
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    losses = sub.add_parser("losses")
    losses.add_argument("a")
    losses.add_argument("b")
    losses.add_argument("--rtol", type=float, default=1e-4)
    predictions = sub.add_parser("predictions")
    predictions.add_argument("a")
    predictions.add_argument("b")
    predictions.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.what == "losses":
        problem = compare_losses(args.a, args.b, args.rtol)
    else:
        problem = compare_predictions(args.a, args.b, args.atol)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
