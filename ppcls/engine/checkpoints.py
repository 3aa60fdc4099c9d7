"""A training run's checkpoint policy: what it resumes from, when it may continue mid-epoch,
which checkpoints it writes and keeps, and that none of them ever holds NaN weights. The
files themselves (the layout, the SHA-256 manifest, the crash-safe save, the allow-list
reader) are ppcls/weights/checkpoint.py's.

    find_resume(wanted, output_dir)  Global.checkpoints (a prefix, or `auto`): what to resume
    Checkpoints.resume(...)          weights, optimizer state (converted to this run's AMP
                                     level), EMA, schedule and scaler; where training goes on
    Checkpoints.save(name, ...)      refuses NaN weights, writes `name`, rotates epoch_N

`latest` is written at every epoch end, every Global.save_latest_steps iterations and when
a stop signal ends training; `best_model` at every better evaluation; `epoch_N` every
Global.save_interval epochs, the newest Global.keep_checkpoint_max of them kept. Each keeps
the run's resolved config in its .pdstates, and `write_run_config` puts it beside them.
"""

import dataclasses
import os
import signal

import paddle

from ppcls.engine import replicas
from ppcls.engine.amp import convert_optimizer_state
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from ppcls.weights import (find_checkpoint, previous_prefix, read_states, remove_checkpoint,
                           resume_checkpoint, save_checkpoint)

# PaddleClas's name for a run's config in its output folder (its train_results.json lists it)
RUN_CONFIG = "config.yaml"
_RUN_CONFIG_HEADER = (
    "# The resolved config (defaults filled in, overrides applied) of the training run that\n"
    "# writes the checkpoints in this folder. Each checkpoint's .pdstates keeps it too:\n"
    "# tools/eval.py, infer.py and export_model.py given -o Global.pretrained_model=<checkpoint>\n"
    "# and no -c use it.\n")


@dataclasses.dataclass
class Progress:
    """Where training goes on: the first epoch and iteration to train, an epoch whose
    evaluation a stop signal interrupted (to run first), and the best evaluation so far."""

    start_epoch: int = 1
    start_iter: int = 0
    pending_eval: int = None
    best: dict = dataclasses.field(default_factory=lambda: {"metric": 0.0, "epoch": 0})


def find_resume(wanted, output_dir):
    """(prefix, its training state) of the checkpoint Global.checkpoints names, or (None,
    None) to start afresh. `auto`: <output_dir>/latest when a save of it exists."""
    if wanted == "auto":
        wanted = os.path.join(output_dir, "latest")
        if not os.path.exists(wanted + ".pdstates") and \
                not os.path.exists(previous_prefix(wanted) + ".pdstates"):
            logger.info("Global.checkpoints is auto and %s does not exist yet: starting "
                        "from scratch", wanted)
            return None, None
    if not wanted:
        return None, None
    prefix = find_checkpoint(wanted)
    return prefix, read_states(prefix)


class Checkpoints:
    """The checkpoints of one run in `output_dir`, written by rank 0."""

    def __init__(self, output_dir, keep, save_interval, rank):
        self.output_dir, self.keep, self.save_interval, self.rank = (
            output_dir, keep, save_interval, rank)
        self.last_saved = None  # (prefix, epoch, iteration) of the newest `latest`

    def resume(self, prefix, saved_level, model, optimizer, ema, lr, scaler, amp, plan):
        """Restore a run from `prefix` (saved at AMP level `saved_level`) into these
        objects; `plan` is this run's data plan (see `check_resume_plan`). Returns the
        Progress to go on from."""
        def convert(opt_state):
            return convert_optimizer_state(opt_state, optimizer, model, amp, saved_level, prefix)

        state = resume_checkpoint(prefix, model, optimizer, ema, convert)
        lr.set_state_dict(state["lr_scheduler"])
        check_resume_plan(prefix, state, plan, lr)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        steps_done = (state.get("plan") or {}).get("steps_per_epoch", plan["steps_per_epoch"])
        finished_epoch = state["iter"] >= steps_done
        progress = Progress(
            start_epoch=state["epoch"] + 1 if finished_epoch else state["epoch"],
            start_iter=0 if finished_epoch else state["iter"], best=dict(state["best"]),
            # stopped while evaluating that epoch
            pending_eval=state["epoch"] if finished_epoch and not state.get("evaluated", True)
            else None)
        self.last_saved = (prefix, state["epoch"], state["iter"])
        logger.info("resumed from %s: epoch %d, iteration %d, best top-1 %.5f (epoch %d)",
                    prefix, progress.start_epoch, progress.start_iter, progress.best["metric"],
                    progress.best["epoch"])
        return progress

    def save(self, name, epoch, iteration, model, optimizer, ema, state):
        """Write checkpoint `name` (rank 0 only) unless the weights hold NaN; `state` is
        what its .pdstates records. Keeps the newest keep_checkpoint_max epoch_N."""
        if self.rank != 0:
            return
        check_weights_finite(model, epoch, iteration, self)
        prefix = os.path.join(self.output_dir, name)
        save_checkpoint(prefix, model, optimizer, ema, state)
        if name == "latest":
            self.last_saved = (prefix, epoch, iteration)
        oldest_kept = epoch - self.keep * self.save_interval
        if name.startswith("epoch_") and self.keep and oldest_kept > 0:
            remove_checkpoint(os.path.join(self.output_dir, f"epoch_{oldest_kept}"))

    def diverged(self, what):
        """The error that ends a run whose loss or weights became NaN or infinite."""
        if self.last_saved is None:
            saved = "No checkpoint was saved yet."
        else:
            path, epoch, iteration = self.last_saved
            saved = (f"The last checkpoint, {path} (epoch {epoch}, iteration {iteration}), is "
                     "unchanged.")
        return TrainingDiverged(f"{what} {saved} Lower Optimizer.lr.learning_rate or set "
                                "Optimizer.clip_global_norm, then resume from it")

    def interrupted(self, stop, signum):
        """The error that ends a run a stop signal interrupted, after `latest` was saved."""
        signum = signum or signal.SIGTERM  # none here: another process had one, all agreed
        latest = os.path.join(self.output_dir, "latest")
        return TrainingInterrupted(
            f"received {signal.Signals(signum).name}: saved {latest} at epoch {stop.epoch}, "
            f"iteration {stop.iteration}; resume with -o Global.checkpoints={latest}", signum)


def write_run_config(output_dir, text):
    """<output_dir>/config.yaml, the run's resolved config (UTF-8), for people and for -c.
    Replaced whole (written aside, then renamed over the old one): a reader never sees half."""
    path = os.path.join(output_dir, RUN_CONFIG)
    staged = f"{path}.tmp{os.getpid()}"
    try:
        with open(staged, "w", encoding="utf-8") as f:
            f.write(_RUN_CONFIG_HEADER + text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    except OSError as err:
        if os.path.exists(staged):
            os.remove(staged)
        raise ConfigError(f"cannot write {path} ({err.strerror}): set Global.output_dir to a "
                          "folder you can write to, with room") from None


def data_plan(sampler, world_size):
    """What decides which samples each iteration trains on: a run resumed mid-epoch must
    plan alike (`check_resume_plan`)."""
    return {"world_size": world_size, "batch_size": sampler.batch_size,
            "dataset_size": sampler.dataset_size, "steps_per_epoch": len(sampler)}


def check_resume_plan(path, state, plan, lr):
    """Resuming mid-epoch replays the rest of that epoch's plan, which only the same
    processes, batch size and list can do; at an epoch end the next epoch is planned
    afresh, and a per-iteration schedule continues at the same epoch."""
    saved = state.get("plan")
    if saved is None or saved == plan:
        return
    changes = ", ".join(f"{k} {saved[k]} -> {plan[k]}" for k in plan if saved[k] != plan[k])
    if state["iter"] < saved["steps_per_epoch"]:
        raise ConfigError(
            f"{path} was saved in the middle of epoch {state['epoch']} (iteration "
            f"{state['iter']} of {saved['steps_per_epoch']}), and this run plans the data "
            f"differently ({changes}): resume with {saved['world_size']} process(es) and "
            f"DataLoader.Train.sampler.batch_size {saved['batch_size']}, or from a "
            "checkpoint saved at an epoch end (epoch_N)")
    if not lr.by_epoch:
        lr.step(state["epoch"] * plan["steps_per_epoch"])
    logger.info("resuming at an epoch end with a new data plan (%s): epoch %d onwards is "
                "planned for it; the learning-rate schedule continues at epoch %d",
                changes, state["epoch"] + 1, state["epoch"] + 1)


def check_weights_finite(model, epoch, iteration, checkpoints):
    """Never overwrite a good checkpoint with NaN weights (a finite loss can still produce
    an infinite gradient in its step)."""
    named = [(n, t) for n, t in replicas.named_state_tensors(model)
             if paddle.is_floating_point(t)]
    finite = paddle.stack([paddle.isfinite(t).all() for _, t in named])
    if bool(finite.all()):  # one host sync, not one per tensor
        return
    for (name, _), ok in zip(named, finite.numpy()):
        if not ok:
            raise checkpoints.diverged(f"{name} holds NaN or infinite values after epoch "
                                       f"{epoch}, iteration {iteration}: training stopped "
                                       "without saving.")
