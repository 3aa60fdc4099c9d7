"""Training and evaluation, PaddleClas style: the loop, read top to bottom.

    Engine(config, mode)   processes, output folder, seed, model, data, loss, optimizer, AMP
                           and EMA; then it resumes or loads weights
    Engine.train()         the epochs: `train_epoch`, then evaluation and checkpoints
    Engine.train_epoch()   one epoch, step by step
    Engine.evaluate()      exact metrics over the whole eval set (evaluation.py)

Around the loop, each in its own module: checkpoints.py (resuming; what is saved when; NaN
weights never saved), replicas.py (what the processes agree on), run_log.py (log lines,
VisualDL, unreadable images), amp.py, ema.py, step_values.py, stop_signals.py,
peer_watchdog.py, run_lock.py.

Randomness: the seed (Global.seed, or drawn once and stored in every checkpoint) fixes the
weight initialisation, the data order and augmentation (through the sampler) and dropout
(re-seeded every iteration from seed, epoch and iteration), so a resumed run continues
exactly as the uninterrupted run would have.

Failures: `latest` is saved at every epoch end, every `Global.save_latest_steps` iterations
and on SIGINT/SIGTERM after the current iteration (several processes: after the next one
where they agree, at most CHECK_EVERY away); a NaN or infinite loss stops training before
anything is saved; a watchdog reports a worker that dies (peer_watchdog.py).

Speed: a step never waits for the device: losses and accuracies are read at log steps,
every CHECK_EVERY iterations and before saves (step_values.py), and per-step work never
calls state_dict() (AMP O2's decorate hooks it with a cast of every tensor; see ema.py).
"""

import contextlib
import os

import numpy as np
import paddle

from ppcls.arch import build_model, pretrained_downloads
from ppcls.data import build_dataloader
from ppcls.engine import replicas
from ppcls.engine.amp import (amp_settings, autocast, keep_float32_masters, level_of,
                              master_weight_params)
from ppcls.engine.checkpoints import (Checkpoints, Progress, data_plan, find_resume,
                                      write_run_config)
from ppcls.engine.ema import ModelEMA
from ppcls.engine.evaluation import build_evaluation
from ppcls.engine.peer_watchdog import PeerWatchdog
from ppcls.engine.run_lock import RunLock, make_output_dir
from ppcls.engine.run_log import TrainingLog, report_bad_images, warn_if_global_batch_differs
from ppcls.engine.step_values import IntervalTimer, StepValues
from ppcls.engine.stop_signals import Stop, StopSignals
from ppcls.loss import build_loss
from ppcls.metric import build_metrics
from ppcls.ops import depthwise_conv
from ppcls.optimizer import build_optimizer
from ppcls.utils import logger
from ppcls.utils.config import class_num_of, stored_config_text
from ppcls.utils.errors import ConfigError
from ppcls.weights import CONFIG_KEY, Download, is_url, load_into


# A multi-process run agrees on stopping (and a NaN loss) at least every CHECK_EVERY
# iterations: one tiny all-reduce and one read of the device, instead of one per step.
CHECK_EVERY = 10


def _mix_seed(*parts):
    """A 31-bit seed from integers, stable across processes and Python runs."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0] >> 1)


class Engine:
    def __init__(self, config, mode="train"):
        assert mode in ("train", "eval")
        self.config, self.mode, self.g = config, mode, config["Global"]
        self.arch_name = config["Arch"]["name"]
        self.output_dir = os.path.join(self.g["output_dir"], self.arch_name)
        # kept with the checkpoints: the config as resolved, before anything is built from it
        self.config_text = stored_config_text(config) if mode == "train" else None
        self.world_size, self.rank = replicas.start_processes(self.g["device"])
        self.run_lock = replicas.done_by_one(
            self._claim_output_dir, self.rank == 0, self.world_size, ConfigError(
                f"rank 0 could not use {self.output_dir}: see its error (workerlog.0 under "
                "the launch log_dir)"))
        logger.setup(os.path.join(self.output_dir, f"{mode}.log"))
        if self.run_lock and self.run_lock.notice:
            logger.warning(self.run_lock.notice)
        self.signals = StopSignals()  # handlers installed by train()
        self.checkpoints = Checkpoints(self.output_dir, self.g["keep_checkpoint_max"],
                                       self.g["save_interval"], self.rank)
        self.resume_prefix, self.checkpoint_state = find_resume(
            self.g.get("checkpoints") if mode == "train" else None, self.output_dir)
        self.seed = replicas.run_seed(self.checkpoint_state, self.g.get("seed"), self.world_size)
        paddle.seed(self.seed)
        self.class_num = class_num_of(config)

        location = self.g.get("pretrained_model")
        replicas.download_once_per_machine(
            ([Download(str(location))] if location and is_url(location) else [])
            + pretrained_downloads(config), self.world_size, self.rank)
        self.model = build_model(config)
        self.amp = amp_settings(config, self.g["device"])
        self.ema = ModelEMA(build_model(config), self.model, config["EMA"]["decay"]) \
            if config.get("EMA") else None
        self.weights_kind = "EMA" if self.ema else "model"  # what evaluate() reports
        if mode == "eval" and location:  # the weights training evaluated (EMA if saved)
            self.weights_kind = load_into(self.model, location, for_eval=True,
                                          prefer_ema=self.ema is not None).kind
            self.ema = None
        self.evaluation = build_evaluation(config, self.model, mode, self.seed, self.amp,
                                          self.world_size) \
            if mode == "eval" or self.g["eval_during_train"] else None
        if mode == "train":
            self._setup_training()

    # ----------------------------------------------------------------- setup
    def _claim_output_dir(self):
        """Rank 0 writes the output directory: it creates it and, to train, locks it for
        this run (run_lock.py) and writes the run's config.yaml there."""
        make_output_dir(self.output_dir, self.g["output_dir"])
        if self.mode != "train":
            return None
        lock = RunLock.acquire(self.output_dir)
        if self.config_text is not None:
            write_run_config(self.output_dir, self.config_text)
        return lock

    def _setup_training(self):
        self.train_loader = build_dataloader(self.config, "Train", self.seed, self.class_num)
        self.train_loss = build_loss(self.config, "Train")
        if self.train_loss is None:
            raise ConfigError("Loss.Train is missing")
        self.train_metrics = build_metrics(self.config, "Train")
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training set is smaller than one batch with drop_last: "
                              "lower DataLoader.Train.sampler.batch_size")
        self.plan = data_plan(self.train_loader.batch_sampler, self.world_size)
        o2 = bool(self.amp and self.amp["level"] == "O2")
        self.optimizer, self.lr = build_optimizer(
            self.config, self.g["epochs"], self.steps_per_epoch, self.model.named_parameters(),
            multi_precision=o2)
        self.scaler = paddle.amp.GradScaler(
            init_loss_scaling=self.amp["scale_loss"],
            use_dynamic_loss_scaling=self.amp["use_dynamic_loss_scaling"]) if self.amp else None
        warn_if_global_batch_differs(self.config, self.plan["batch_size"], self.world_size)
        # Weights and optimizer state are loaded in float32, before AMP O2 casts the model
        # to float16 (Paddle cannot load float32 files into float16 parameters), and the
        # optimizer's float32 master weights start from the loaded values.
        progress = Progress()
        if self.checkpoint_state is not None:
            progress = self.checkpoints.resume(
                self.resume_prefix, self.checkpoint_state.get("amp_level"), self.model,
                self.optimizer, self.ema, self.lr, self.scaler, self.amp, self.plan)
        elif self.g.get("pretrained_model"):
            load_into(self.model, self.g["pretrained_model"])
        self.start_epoch, self.start_iter = progress.start_epoch, progress.start_iter
        self.pending_eval, self.best = progress.pending_eval, progress.best
        if o2:
            keep_float32_masters(self.optimizer, self.model)
            self.model, self.optimizer = paddle.amp.decorate(
                self.model, self.optimizer, level="O2", save_dtype="float32")
        self.train_model = self.model
        if self.g["to_static"]:  # compiled at the first step, inside train()
            self.train_model = paddle.jit.to_static(self.train_model)
        if self.world_size > 1:
            # Broadcasts rank 0's weights and BN statistics to every rank.
            self.train_model = paddle.DataParallel(self.train_model)
        if self.ema and self.checkpoint_state is None:
            self.ema.set_state_dict(self.model.state_dict())  # the weights every rank holds
        self.log = TrainingLog(self.g["epochs"], self.steps_per_epoch, self.g["use_visualdl"],
                               self.output_dir, self.rank)

    # ------------------------------------------------------------- training
    def train(self):
        """Train the remaining epochs. The output directory's lock is released when
        training ends, however it ends; a stop signal ends it after saving `latest`."""
        logger.info("training %s for %d epochs, %d iterations each, seed %d, %d process(es)",
                    self.arch_name, self.g["epochs"], self.steps_per_epoch, self.seed,
                    self.world_size)
        # Paddle's to_static tracer cannot follow the custom kernel's dispatch: a compiled
        # step keeps Paddle's own depthwise operator.
        kernel = depthwise_conv.enabled(False) if self.g["to_static"] else contextlib.nullcontext()
        try:
            with self.signals, PeerWatchdog(self.world_size, self.rank) as watch, kernel:
                stop = self._train_epochs()
                if stop:  # saved before the barrier, in case a rank is gone
                    if stop.agreed:
                        replicas.average_statistics(self._replicated_models(), self.world_size)
                    self.save("latest", stop.epoch, stop.iteration, evaluated=stop.evaluated)
                watch.finish()
            if stop:
                raise self.checkpoints.interrupted(stop, self.signals.signum)
            self.log.finished(self.best)
            return self.best
        finally:
            if self.run_lock:
                self.run_lock.release()

    def _train_epochs(self):
        """Each remaining epoch: train it, then the epoch end (schedule, processes, bad
        images, evaluation, checkpoints). A Stop if a stop signal ended them early."""
        epochs, steps = self.g["epochs"], self.steps_per_epoch
        if self.pending_eval and not self._evaluate_and_save(self.pending_eval):
            return Stop(self.pending_eval, steps, evaluated=False)
        for epoch in range(self.start_epoch, epochs + 1):
            stop = self.train_epoch(epoch, self.start_iter if epoch == self.start_epoch else 0)
            if stop:
                return stop
            if self.lr.by_epoch:
                self.lr.step()
            replicas.check_epoch_coverage(self.train_loader.batch_sampler, epoch,
                                          self.world_size)
            replicas.sync_after_epoch(self._replicated_models(), epoch, self.world_size)
            report_bad_images(self.train_loader, epoch, self.world_size)
            if not self._evaluate_and_save(epoch):
                return Stop(epoch, steps, evaluated=False)
            if epoch < epochs and replicas.any_rank([self.signals.requested], self.world_size)[0]:
                return Stop(epoch, steps)
        return None

    def train_epoch(self, epoch, start_iter=0):
        """One epoch from `start_iter`; a Stop if a stop signal ended it early."""
        self.train_loader.batch_sampler.set_epoch(epoch, start_iter)
        self.train_model.train()
        self.step_values = StepValues([n for m in self.train_metrics for n in m.names])
        timer, every = IntervalTimer(), self.g["save_latest_steps"]
        with contextlib.closing(iter(self.train_loader)) as batches:
            for iteration in range(start_iter, self.steps_per_epoch):
                batch = self.signals.next_batch(batches)
                if batch is None:
                    return Stop(epoch, iteration, agreed=False)
                images, labels = batch
                timer.loaded()
                paddle.seed(_mix_seed(self.seed, epoch, iteration, self.rank))  # dropout
                losses, logits = self._train_step(images, labels)
                self.step_values.add(iteration, images.shape[0], losses,
                                     [m.counts(logits, labels) for m in self.train_metrics])

                last = iteration + 1 == self.steps_per_epoch
                logged = iteration % self.g["print_batch_step"] == 0 or last
                saving = bool(every) and (iteration + 1) % every == 0 and not last
                # Reading the values waits for the device: only at log steps, before saving,
                # and every CHECK_EVERY steps, where the ranks also agree on stopping.
                stop_requested = self._check_progress(
                    epoch, logged or saving or iteration % CHECK_EVERY == 0)
                if logged:
                    self.log.step(epoch, iteration, images.shape[0], *timer.lap(),
                                  self.step_values.averages(), self.optimizer.get_lr())
                if stop_requested and not last:  # at the last step the epoch end comes first
                    return Stop(epoch, iteration + 1)
                if saving:
                    replicas.average_statistics(self._replicated_models(), self.world_size)
                    self.save("latest", epoch, iteration + 1)
                timer.step_done()
        self.log.epoch_end(epoch, self.step_values)
        return None

    def _train_step(self, images, labels):
        if self.amp:
            with autocast(self.amp):
                logits = self.train_model(images)
                losses = self.train_loss(logits.astype("float32"), labels)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            logits = self.train_model(images)
            losses = self.train_loss(logits, labels)
            losses["loss"].backward()
            self.optimizer.step()
        self.optimizer.clear_grad()
        if not self.lr.by_epoch:
            self.lr.step()
        if self.ema:
            self.ema.update(self.model)
        return losses, logits

    def _check_progress(self, epoch, checked):
        """After each step: True when the ranks agree to stop after a stop signal. At a
        `checked` step the values of the steps since the last one are read, and a NaN or
        infinite loss on any rank raises (on every rank alike). A single process reacts
        to a stop signal at any step; several agree at checked steps (one tiny all-reduce)."""
        if not checked:
            return self.world_size == 1 and self.signals.requested
        self.step_values.read()
        diverged, stop = replicas.any_rank(
            [self.step_values.first_non_finite is not None, self.signals.requested],
            self.world_size)
        if diverged:
            self._raise_diverged(epoch)
        return stop

    def _raise_diverged(self, epoch):
        found = self.step_values.first_non_finite
        where = (f"{found[1]} at epoch {epoch}, iteration {found[0]}" if found else
                 f"NaN or infinite on another process in epoch {epoch}")
        raise self.checkpoints.diverged(f"the loss became {where}: training stopped.")

    def _evaluate_and_save(self, epoch):
        """Evaluate when due and save; False if a stop signal interrupted the evaluation."""
        g = self.g
        if self.evaluation is not None and epoch % g["eval_interval"] == 0 \
                and epoch > g["start_eval_epoch"]:
            results = self.evaluate(epoch)
            if results is None:
                return False
            if results["top1"] > self.best["metric"] or self.best["epoch"] == 0:  # first saves
                self.best = {"metric": results["top1"], "epoch": epoch}
                self.save("best_model", epoch, self.steps_per_epoch)
            self.log.evaluated(epoch, results, self.best)
        if epoch % g["save_interval"] == 0:
            self.save(f"epoch_{epoch}", epoch, self.steps_per_epoch)
        self.save("latest", epoch, self.steps_per_epoch)
        return True

    def save(self, name, epoch, iteration, evaluated=True):
        """Checkpoint `name` (checkpoints.py), by rank 0, after reading the losses of the
        steps not read yet (a stop signal can end an epoch between two checked steps):
        nothing is saved after a NaN loss."""
        if self.rank != 0:
            return
        values = getattr(self, "step_values", None)
        if values is not None:
            values.read()
            if values.first_non_finite is not None:
                self._raise_diverged(epoch)
        self.checkpoints.save(name, epoch, iteration, self.model, self.optimizer, self.ema,
                              self._state(epoch, iteration, evaluated))

    def _state(self, epoch, iteration, evaluated):
        """What a checkpoint's .pdstates records of the run."""
        return {"metric": self.best["metric"], "epoch": epoch, "iter": iteration,
                "evaluated": evaluated, "best": dict(self.best), "seed": self.seed,
                "lr_scheduler": self.lr.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "evaluated_weights": "ema" if self.ema else "model",
                "arch": self.arch_name, "plan": self.plan,
                # the optimizer state's layout depends on them (see amp.py)
                "amp_level": level_of(self.amp),
                "master_weights": bool(master_weight_params(self.model, self.amp)),
                **({CONFIG_KEY: self.config_text} if self.config_text is not None else {}),
                **self.model.checkpoint_record()}  # e.g. the topology the weights need

    def _replicated_models(self):
        """The models every rank holds alike (their BN statistics averaged before every
        evaluation and save, so what any rank evaluates is what rank 0 saves)."""
        return [self.model] + ([self.ema.model] if self.ema else [])

    # ----------------------------------------------------------- evaluation
    def evaluate(self, epoch=0):
        """The evaluation's results (evaluation.py) of the weights training evaluates (the
        EMA's when configured); None when a stop signal interrupted it (single-process
        training only)."""
        results = self.evaluation(
            self.ema.model if self.ema else self.model, epoch, self.weights_kind,
            lambda: self.world_size == 1 and self.mode == "train" and self.signals.requested)
        if self.mode == "train" and results is not None:
            self.model.train()
        return results
