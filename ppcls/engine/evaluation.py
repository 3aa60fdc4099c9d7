"""Evaluation: top-k accuracy and loss over every eval sample exactly once, on any number of
processes. Each process evaluates its unpadded shard (ppcls/data/sampler.py) and the
counts are summed over the processes; every listed image is evaluated once or accounted
for as unreadable or missing. Values stay on the device until the end (one read)."""

import contextlib
import copy

import paddle

from ppcls.data import build_dataloader
from ppcls.engine import replicas
from ppcls.engine.amp import autocast, evaluates_under_autocast
from ppcls.loss import build_loss
from ppcls.metric import build_metrics
from ppcls.ops import depthwise_conv
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError


def build_evaluation(config, model, mode, seed, amp, world_size):
    """The evaluation of DataLoader.Eval by Loss.Eval and Metric.Eval. To evaluate weights
    alone (eval mode), the model's own eval transforms replace the configured ones when its
    weights were published with theirs (the model's `eval_transforms` hook)."""
    if mode == "eval":
        config = copy.deepcopy(config)
        dataset = ((config.get("DataLoader") or {}).get("Eval") or {}).get("dataset")
        if isinstance(dataset, dict):
            dataset["transform_ops"] = model.eval_transforms(
                dataset.get("transform_ops"), "DataLoader.Eval.dataset.transform_ops")
    loader = build_dataloader(config, "Eval", seed, config["Global"]["class_num"])
    return Evaluation(loader, build_loss(config, "Eval"), build_metrics(config, "Eval"),
                      amp if evaluates_under_autocast(amp) else None, world_size,
                      config["Global"]["print_batch_step"])


class Evaluation:
    """`amp`: the AMP settings to evaluate under autocast, else None (float32)."""

    def __init__(self, loader, loss, metrics, amp, world_size, print_every):
        self.loader, self.loss, self.metrics, self.amp = loader, loss, metrics, amp
        self.world_size, self.print_every = world_size, print_every

    @paddle.no_grad()
    def __call__(self, net, epoch, weights_kind, interrupted=lambda: False):
        """The results ({"loss", "top1", ...}) of `net`, logged; None when `interrupted()`
        became true between two batches (a stop signal in single-process training)."""
        net.eval()
        if self.world_size > 1:
            depthwise_conv.prepare()  # every rank, with or without images
        with contextlib.closing(iter(self.loader)) as batches:
            sums = self._batches(net, epoch, batches, interrupted)
        if sums is None:
            return None
        counts, loss_sum, seen = sums
        keys = sorted(counts)  # known up front: the same on every rank, even one without images
        skipped = len(self.loader.policy.skipped)
        totals = replicas.sum_over_ranks([seen, skipped, *[counts[k] for k in keys]], "int64",
                                         self.world_size)
        loss_total = replicas.sum_over_ranks([loss_sum], "float64", self.world_size)[0]
        seen, skipped, *metric_counts = (int(t) for t in totals)
        self._log_count(epoch, seen, skipped)
        results = {"loss": loss_total / seen} if self.loss else {}
        results.update({k: c / seen for k, c in zip(keys, metric_counts)})
        exact = ", ".join(f"{k} {c}/{seen}" for k, c in zip(keys, metric_counts))
        logger.info("[Eval][Epoch %d][Avg]%s (%s correct, %s weights)", epoch,
                    ", ".join(f"{k}: {v:.5f}" for k, v in results.items()), exact, weights_kind)
        return results

    def _batches(self, net, epoch, batches, interrupted):
        names = [n for m in self.metrics for n in m.names]
        values = []  # (batch size, float64 tensor [loss, *counts]) per batch, read at the end
        for iteration, (images, labels) in enumerate(batches):
            if self.amp is None:
                logits = net(images)
            else:
                with autocast(self.amp):
                    logits = net(images).astype("float32")
            parts = [m.counts(logits, labels).astype("float64") for m in self.metrics]
            if self.loss:
                parts.insert(0, self.loss(logits, labels)["loss"].reshape([1]).astype("float64"))
            values.append((images.shape[0], paddle.concat(parts or [paddle.zeros([0], "float64")])))
            if iteration % self.print_every == 0:
                logger.info("[Eval][Epoch %d][Iter: %d/%d]", epoch, iteration, len(self.loader))
            # Stop mid-evaluation in a single process only: evaluation shards may differ in
            # length by a batch, so processes cannot agree per batch; they stop after it.
            if interrupted():
                return None
        counts, loss_sum, seen = dict.fromkeys(names, 0), 0.0, 0
        rows = paddle.stack([row for _, row in values]).numpy() if values else []
        for (batch, _), row in zip(values, rows):  # the host's sums, as when read per batch
            if self.loss:
                loss_sum += float(row[0]) * batch
                row = row[1:]
            for key, count in zip(names, row):
                counts[key] += int(count)
            seen += batch
        return counts, loss_sum, seen

    def _log_count(self, epoch, seen, skipped):
        """Every listed image is evaluated once, or accounted for as skipped/missing."""
        dataset = self.loader.dataset
        missing = len(dataset.dropped)
        if seen + skipped + missing != dataset.listed:
            raise RuntimeError(f"evaluated {seen} + skipped {skipped} + missing {missing} "
                               f"images, but {dataset.cls_label_path} lists {dataset.listed}")
        if seen == 0:
            raise ConfigError("the evaluation set is empty")
        note = f"; {skipped} unreadable and {missing} missing skipped" if skipped or missing else ""
        logger.info("[Eval][Epoch %d] evaluated %d of the %d images listed in %s%s", epoch, seen,
                    dataset.listed, dataset.cls_label_path, note)
