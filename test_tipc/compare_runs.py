"""Compare two runs for the TIPC chains; exit 1, naming the first difference, when they differ.

    python test_tipc/compare_runs.py losses DYGRAPH.log TO_STATIC.log [--rtol 1e-4] [--resumed]
    python test_tipc/compare_runs.py predictions PADDLE.json ONNX.json [--atol 1e-4] [--same_top1]
    python test_tipc/compare_runs.py evals TRAIN.log EVAL.log [--max_diff 0]

`losses` reads the `loss:` of every `[Train][Epoch e/E][Iter: i/N]` line of two training logs
(train with -o Global.print_batch_step=1 so that every iteration is logged) and compares them
step by step. `predictions` compares two result files of deploy/python/predict_cls.py
(-o Global.save_path=...): the same images, and each image's top-1 score and the scores of the
classes both top-k lists name agree within atol (the top-1 class itself may swap between
near-equal scores of a barely trained model, so classes are compared through their scores;
--same_top1 requires the same top-1 class as well). `losses --resumed` compares the whole epochs a
resumed run logged with the same steps of the uninterrupted run (the logged loss is the epoch's
running average, which the resumed run restarts mid-epoch). `evals` compares the last
`[Eval]...[Avg]` line of two logs (a training's last evaluation, tools/eval.py's) as exact
fractions, `top1 k/n`, and which weights (EMA or model) were evaluated; --max_diff allows that
many images either way in each count.
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


def compare_losses(a_path, b_path, rtol, resumed=False):
    a, b = read_losses(a_path), read_losses(b_path)
    if not a or not b:
        empty = a_path if not a else b_path
        return f"{empty}: no '[Train]...loss:' lines (did the training run?)"
    if resumed:
        # The log's loss is the epoch's running average, which a resumed run restarts at its
        # first step: only its whole epochs compare with the uninterrupted run.
        whole = {epoch for (epoch, iteration), _ in b if iteration == 0}
        b = [(step, loss) for step, loss in b if step[0] in whole]
        if not b:
            return f"{b_path}: the resumed run logged no whole epoch to compare"
        steps = [step for step, _ in b]
        a = [(step, loss) for step, loss in a if step in steps]
    if [step for step, _ in a] != [step for step, _ in b]:
        return f"the logs have different steps: {len(a)} in {a_path}, {len(b)} in {b_path}"
    for (step, x), (_, y) in zip(a, b):
        print(f"epoch {step[0]} iter {step[1]}: {x:.5f} {y:.5f}")
        if not math.isclose(x, y, rel_tol=rtol, abs_tol=1e-5):  # 1e-5: the log's last digit
            return (f"losses differ at epoch {step[0]} iteration {step[1]}: {x} in {a_path}, "
                    f"{y} in {b_path} (rtol {rtol})")
    print(f"{len(a)} steps: losses agree within rtol {rtol}")
    return None


EVAL_LINE = re.compile(r"\[Eval\]\[Epoch \d+\]\[Avg\].*\((.*) correct, (\w+) weights\)")


def read_last_eval(path):
    """{'top1': (k, n), ...} and the weights kind of the last [Eval] average in a log."""
    last = None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                last = EVAL_LINE.search(line) or last
    except FileNotFoundError:
        return None, None
    if last is None:
        return None, None
    fractions = {}
    for item in last.group(1).split(", "):
        key, _, fraction = item.rpartition(" ")
        k, n = fraction.split("/")
        fractions[key] = (int(k), int(n))
    return fractions, last.group(2)


def compare_evals(a_path, b_path, max_diff):
    (a, a_kind), (b, b_kind) = read_last_eval(a_path), read_last_eval(b_path)
    for path, found in ((a_path, a), (b_path, b)):
        if found is None:
            return f"{path}: no '[Eval]...[Avg]' line (did the evaluation run?)"
    if a_kind != b_kind:
        return f"{a_path} evaluated the {a_kind} weights, {b_path} the {b_kind} weights"
    if a.keys() != b.keys() or any(a[k][1] != b[k][1] for k in a):
        return f"the evaluations differ in metrics or image counts: {a} in {a_path}, {b} in {b_path}"
    for key in a:
        if abs(a[key][0] - b[key][0]) > max_diff:
            return (f"{key} differs: {a[key][0]}/{a[key][1]} in {a_path}, {b[key][0]}/{b[key][1]} "
                    f"in {b_path} (allowed: {max_diff} images)")
    shown = ", ".join(f"{k} {a[k][0]}/{a[k][1]}" for k in a)
    print(f"evaluations agree ({a_kind} weights): {shown}" + (f" (within {max_diff})" if max_diff else ""))
    return None


def compare_predictions(a_path, b_path, atol, same_top1=False):
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    if [r.get("file_name") for r in a] != [r.get("file_name") for r in b] or not a:
        return f"{a_path} and {b_path} do not hold results for the same images"
    for x, y in zip(a, b):
        if "error" in x or "error" in y:
            return f"{x['file_name']}: {x.get('error') or y.get('error')}"
        if same_top1 and x["class_ids"][0] != y["class_ids"][0]:
            return (f"{x['file_name']}: top-1 class {x['class_ids'][0]} in {a_path}, "
                    f"{y['class_ids'][0]} in {b_path}")
        x_scores = dict(zip(x["class_ids"], x["scores"]))
        y_scores = dict(zip(y["class_ids"], y["scores"]))
        pairs = [(x["scores"][0], y["scores"][0])] + [
            (x_scores[c], y_scores[c]) for c in x_scores.keys() & y_scores.keys()]
        worst = max(abs(p - q) for p, q in pairs)
        if worst > atol:
            return (f"{x['file_name']}: scores differ by {worst:.2e} > atol {atol} "
                    f"({a_path}: {x['class_ids']} {x['scores']}; {b_path}: {y['class_ids']} "
                    f"{y['scores']})")
    print(f"{len(a)} images: scores agree within atol {atol}" + (", same top-1" if same_top1 else ""))
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    losses = sub.add_parser("losses")
    losses.add_argument("a")
    losses.add_argument("b")
    losses.add_argument("--rtol", type=float, default=1e-4)
    losses.add_argument("--resumed", action="store_true")
    predictions = sub.add_parser("predictions")
    predictions.add_argument("a")
    predictions.add_argument("b")
    predictions.add_argument("--atol", type=float, default=1e-4)
    predictions.add_argument("--same_top1", action="store_true")
    evals = sub.add_parser("evals")
    evals.add_argument("a")
    evals.add_argument("b")
    evals.add_argument("--max_diff", type=int, default=0)
    args = parser.parse_args(argv)
    if args.what == "losses":
        problem = compare_losses(args.a, args.b, args.rtol, args.resumed)
    elif args.what == "evals":
        problem = compare_evals(args.a, args.b, args.max_diff)
    else:
        problem = compare_predictions(args.a, args.b, args.atol, args.same_top1)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
