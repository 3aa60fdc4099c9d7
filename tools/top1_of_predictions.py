"""Top-1 of saved predictions (Global.save_path / Infer.save_path JSON) against a label list.

    python tools/top1_of_predictions.py --results results.json --label_list dataset/digits/val_list.txt
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.text import read_lines  # noqa: E402


def top1(results, label_list):
    """Fraction of the label list's images whose first predicted class is their label;
    an image of the list without a result counts as wrong."""
    labels = {os.path.normpath(line.split()[0]): int(line.split()[1])
              for _, line in read_lines(label_list) if line.strip()}
    predicted = {}
    for result in results:
        for rel in labels:  # results name files by the path given to the predictor
            if "class_ids" in result and os.path.normpath(result["file_name"]).endswith(rel):
                predicted[rel] = result["class_ids"][0]
    return sum(predicted.get(rel) == label for rel, label in labels.items()) / len(labels)


def main(args):
    with open(args.results, encoding="utf-8") as f:
        value = top1(json.load(f), args.label_list)
    print(f"top-1 {value * 100:.2f} ({args.results})")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True)
    parser.add_argument("--label_list", required=True, help="'relative/path.png label' lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(main, parse_args()))
