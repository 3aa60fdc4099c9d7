import os
import sys

import pytest

# Small, deterministic CPU runs: the suite is sized for 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
from ppcls.utils.threads import set_default_threads  # noqa: E402

set_default_threads()  # the rest of the tools' defaults, before Paddle is imported

QUICK_START = os.path.join(ROOT, "configs", "quick_start", "MnasNet_B1_x0_5_digits.yaml")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The quick-start digits written once, plus small lists for fast runs: 96 training
    images (every class) and an odd-sized validation list of 37."""
    from tools.make_digits_dataset import write_dataset

    root = tmp_path_factory.mktemp("digits")
    write_dataset(str(root), size=32)
    train = (root / "train_list.txt").read_text().splitlines()
    val = (root / "val_list.txt").read_text().splitlines()
    (root / "train_small.txt").write_text("\n".join(train[::15][:96]) + "\n")
    (root / "val_odd.txt").write_text("\n".join(val[::9][:37]) + "\n")
    return root


def config_args(overrides, *more):
    """A tool's arguments: the quick-start config with these overrides."""
    return ["-c", QUICK_START, *(arg for o in [*overrides, *more] for arg in ("-o", o))]


def digits_overrides(root, output_dir, epochs=2, seed=7, extra=()):
    """Overrides that turn the quick-start config into a seconds-long run (`seed=None`
    leaves the seed unset, so each run draws its own)."""
    return [
        f"DataLoader.Train.dataset.image_root={root}",
        f"DataLoader.Train.dataset.cls_label_path={root}/train_small.txt",
        f"DataLoader.Eval.dataset.image_root={root}",
        f"DataLoader.Eval.dataset.cls_label_path={root}/val_odd.txt",
        "DataLoader.Train.sampler.batch_size=16",
        "DataLoader.Eval.sampler.batch_size=8",
        f"Global.output_dir={output_dir}",
        f"Global.epochs={epochs}",
        f"Global.seed={'null' if seed is None else seed}",
        "Global.print_batch_step=1",
        "Global.save_interval=1",
        *extra,
    ]
