"""What happens when an image cannot be read: the dataset's `on_bad_image` policy, applied
in the training (or evaluation) process to the samples a loader worker marked bad."""

from ppcls.utils import logger
from ppcls.utils.errors import DataError


class BadImagePolicy:
    """Counts, logs and judges unreadable images over one pass through the data.

    `pass_size` is how many samples this process reads per pass (its shard)."""

    def __init__(self, dataset, where, pass_size):
        self.dataset, self.where, self.pass_size = dataset, where, max(1, pass_size)
        self.skipped = []

    def start_pass(self):
        self.skipped = []

    def handle(self, reasons, batch_size):
        """`reasons`: one line per unreadable sample of the batch, naming file and list line."""
        setting = f"{self.where}.dataset.on_bad_image"
        if self.dataset.on_bad_image == "fail":
            raise DataError(f"cannot use image {reasons[0]}. Fix or unlist it, or set "
                            f"{setting}: skip to leave such images out")
        for reason in reasons:
            logger.warning("skipping unreadable image %s", reason)
        self.skipped.extend(reasons)
        if len(reasons) == batch_size:
            raise DataError(f"every image of a batch of {batch_size} is unreadable (first: "
                            f"{reasons[0]}); the dataset or its disk looks broken")
        fraction = (len(self.skipped) / self.pass_size
                    + len(self.dataset.dropped) / self.dataset.listed)
        if fraction > self.dataset.max_bad_fraction:
            raise DataError(
                f"{len(self.skipped)} unreadable image(s) this pass, plus "
                f"{len(self.dataset.dropped)} missing from the start: more than "
                f"{self.where}.dataset.max_bad_fraction ({self.dataset.max_bad_fraction}) "
                f"allows. Last: {reasons[-1]}. Repair the dataset, or raise the fraction")
