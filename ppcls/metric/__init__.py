"""Metrics by PaddleClas name. A metric returns per-batch *counts* (e.g. correct top-k
predictions), so that evaluation can sum them exactly over batches and processes."""

import paddle

from ppcls.utils.factory import create_list


class TopkAcc:
    def __init__(self, topk: list = (1, 5)):
        self.topk = [topk] if isinstance(topk, int) else list(topk)

    @property
    def names(self):
        """The counts' names, known before any batch (so that every process, even one
        without a batch to evaluate, sums the same values)."""
        return [f"top{k}" for k in self.topk]

    def counts(self, logits, label):
        """The number of correct top-k predictions of this batch for each k of `names`, as
        an int64 tensor on the logits' device: reading it is left to the caller, so that a
        training step does not wait for the device."""
        if label.ndim == 2 and label.shape[-1] == logits.shape[-1]:
            label = label.argmax(axis=-1)  # soft Mixup/CutMix targets: the dominant class
        label = label.reshape([-1, 1]).astype("int64")
        k_max = min(max(self.topk), logits.shape[-1])
        top = paddle.topk(logits, k=k_max, axis=-1)[1]
        hits = (top == label).astype("int64")
        return paddle.stack([hits[:, :min(k, k_max)].sum() for k in self.topk])


METRICS = {"TopkAcc": TopkAcc}


def build_metrics(config, mode):
    specs = (config.get("Metric") or {}).get(mode)
    return create_list(METRICS, specs, f"Metric.{mode}", kind="metric")
