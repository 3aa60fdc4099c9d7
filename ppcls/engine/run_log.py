"""What a training run tells its user: the log lines of steps, epochs and evaluations (their
format is PaddleClas's, which tools/train_log_stats.py and TIPC parse), VisualDL scalars
with Global.use_visualdl, the epoch's unreadable images and a learning rate tuned for
another global batch."""

import datetime
import os

from ppcls.engine import replicas
from ppcls.utils import logger


class TrainingLog:
    """Log lines and, on rank 0 with Global.use_visualdl, VisualDL scalars of one run."""

    def __init__(self, epochs, steps_per_epoch, use_visualdl, output_dir, rank):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.vdl = None
        if use_visualdl and rank == 0:
            from visualdl import LogWriter

            self.vdl = LogWriter(logdir=os.path.join(output_dir, "vdl"))

    def step(self, epoch, iteration, batch, batch_cost, reader_cost, averages, lr):
        metrics = ", ".join(f"{k}: {v:.5f}" for k, v in averages.items())
        remaining = (self.epochs - epoch) * self.steps + (self.steps - iteration - 1)
        eta = datetime.timedelta(seconds=int(remaining * batch_cost))
        logger.info("[Train][Epoch %d/%d][Iter: %d/%d]lr: %.5f, %s, batch_cost: %.5fs, "
                    "reader_cost: %.5fs, ips: %.5f samples/s, eta: %s", epoch, self.epochs,
                    iteration, self.steps, lr, metrics, batch_cost, reader_cost,
                    batch / batch_cost, eta)
        if self.vdl:
            step = (epoch - 1) * self.steps + iteration
            for key, value in averages.items():
                self.vdl.add_scalar(f"Train/{key}", value, step)
            self.vdl.add_scalar("Train/lr", lr, step)

    def epoch_end(self, epoch, values):
        if values.seen:
            avg = ", ".join(f"{k}: {v:.5f}" for k, v in values.averages().items())
            logger.info("[Train][Epoch %d/%d][Avg]%s", epoch, self.epochs, avg)

    def evaluated(self, epoch, results, best):
        if self.vdl:
            for key, value in results.items():
                self.vdl.add_scalar(f"Eval/{key}", value, epoch)
        logger.info("[Eval][Epoch %d][best metric: %.5f]", epoch, best["metric"])

    def finished(self, best):
        if best["epoch"]:
            logger.info("finished: best top-1 %.5f at epoch %d", best["metric"], best["epoch"])
        else:
            logger.info("finished %d epochs (no evaluation ran)", self.epochs)
        if self.vdl:
            self.vdl.close()


def report_bad_images(loader, epoch, world_size):
    """Rank 0's log names every rank's unreadable images of the epoch."""
    skipped = replicas.gather_lists(loader.policy.skipped, world_size)
    dropped = len(loader.dataset.dropped)
    if skipped or dropped:
        shown = "; ".join(skipped[:20]) + ("; ..." if len(skipped) > 20 else "")
        logger.warning("[Train][Epoch %d] skipped %d unreadable image(s) this epoch%s; %d "
                       "listed file(s) are missing and were left out from the start", epoch,
                       len(skipped), f": {shown}" if skipped else "", dropped)


def warn_if_global_batch_differs(config, batch, world_size):
    """ImageNet configs name the global batch their learning rate was tuned for."""
    tuned = config["Global"].get("global_batch_size")
    if not tuned or batch * world_size == tuned:
        return
    lr = (config.get("Optimizer") or {}).get("lr") or {}
    base = lr.get("learning_rate")
    scaled = (f" ({base} x {batch * world_size}/{tuned} = {base * batch * world_size / tuned:.6g})"
              if isinstance(base, (int, float)) else "")
    logger.warning("this run's global batch is %d process(es) x %d = %d, but the config's "
                   "learning rate is tuned for Global.global_batch_size %d: scale "
                   "Optimizer.lr.learning_rate linearly%s, or run with that global batch",
                   world_size, batch, batch * world_size, tuned, scaled)
