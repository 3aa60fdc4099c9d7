"""Print every MnasNet variant's parameters and multiply-adds beside the published figures.

    python tools/model_summary.py [--size 224] [--names MnasNet_B1_x1_0 MnasNet_A1_x1_0]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from ppcls.arch import build_model  # noqa: E402
from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANT_BY_NAME, VARIANTS  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.model_stats import count_macs, count_params  # noqa: E402


def fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def summary_rows(names, size):
    for name in names:
        model = build_model({"Arch": {"name": name}})
        params, macs = count_params(model), count_macs(model, size)
        published = VARIANT_BY_NAME[name].published or [(None, "-", None, None, None, None)]
        for i, (source, ref_name, top1, _top5, ref_params, ref_macs) in enumerate(published):
            ours = (f"{params / 1e6:.3f}", f"{macs / 1e6:.1f}") if i == 0 else ("", "")
            yield (name if i == 0 else "", *ours, ref_name, fmt(top1, 2), fmt(ref_params, 2),
                   fmt(ref_macs, 1), source or "-")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--names", nargs="*", default=[v.name for v in VARIANTS])
    args = parser.parse_args(argv)
    header = ("model", "params (M)", f"MACs @{args.size} (M)", "reference", "ref top-1",
              "ref params (M)", "ref MACs @224 (M)", "source")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in summary_rows(args.names, args.size):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
