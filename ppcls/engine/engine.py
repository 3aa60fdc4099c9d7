"""Training and evaluation, PaddleClas style. Read top to bottom:

    Engine(config, mode)   sets up device, processes, seed, logging, model, data, loss,
                           optimizer, AMP, EMA, then loads weights or resumes
    Engine.train()         epochs of `train_epoch`, evaluation, checkpoints
    Engine.evaluate()      exact metrics over the whole eval set on any number of processes

Randomness: the seed (Global.seed, or drawn once and stored in every checkpoint) fixes the
weight initialisation, the data order and augmentation (through the sampler) and dropout
(re-seeded every iteration from seed, epoch and iteration). A run resumed from a checkpoint
therefore continues exactly as the uninterrupted run would have.

Failures: `latest` is saved at every epoch end and every `Global.save_latest_steps`
iterations, and on SIGINT/SIGTERM after the current iteration (multi-process: after the
next iteration where the ranks agree, at most CHECK_EVERY away); a NaN or infinite loss
stops training before anything is saved; a watchdog reports a worker that dies (see
peer_watchdog.py).

Speed: a step never waits for the device: losses and accuracies are read at log steps,
every CHECK_EVERY iterations and before saves (step_values.py), and per-step work never
calls state_dict() (AMP O2's decorate hooks it with a cast of every tensor; see ema.py).
"""

import contextlib
import copy
import dataclasses
import datetime
import os
import signal

import numpy as np
import paddle
import paddle.distributed as dist

from ppcls.arch import build_model, pretrained_downloads
from ppcls.data import build_dataloader
from ppcls.engine import replicas
from ppcls.engine.amp import (amp_settings, autocast, convert_optimizer_state,
                              evaluates_under_autocast, keep_float32_masters, level_of,
                              master_weight_params)
from ppcls.engine.ema import ModelEMA
from ppcls.engine.peer_watchdog import PeerWatchdog
from ppcls.engine.run_lock import RunLock, make_output_dir
from ppcls.engine.step_values import IntervalTimer, StepValues
from ppcls.engine.stop_signals import StopSignals
from ppcls.loss import build_loss
from ppcls.metric import build_metrics
from ppcls.ops import depthwise_conv
from ppcls.optimizer import build_optimizer
from ppcls.utils import logger
from ppcls.utils.config import class_num_of
from ppcls.utils.errors import ConfigError, TrainingDiverged, TrainingInterrupted, WeightsError
from ppcls.weights import (Download, fetch, find_checkpoint, is_url, load_into,
                           previous_prefix, read_states, remove_checkpoint, resume_checkpoint,
                           save_checkpoint)


@dataclasses.dataclass(frozen=True)
class Stop:
    """Training stops, after a stop signal, with `iteration` iterations of `epoch` done.
    `evaluated`: whether that epoch's evaluation, if due, is done. `agreed`: whether every
    rank knows (when only this one does, no collective may run before saving)."""

    epoch: int
    iteration: int
    evaluated: bool = True
    agreed: bool = True


# A multi-process run agrees on stopping (and a NaN loss) at least every CHECK_EVERY
# iterations: one tiny all-reduce and one read of the device, instead of one per step.
CHECK_EVERY = 10


def _mix_seed(*parts):
    """A 31-bit seed from integers, stable across processes and Python runs."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0] >> 1)


class Engine:
    def __init__(self, config, mode="train"):
        assert mode in ("train", "eval")
        self.config, self.mode = config, mode
        self.g = config["Global"]
        self.arch_name = config["Arch"]["name"]
        self.output_dir = os.path.join(self.g["output_dir"], self.arch_name)
        self._setup_processes()
        self.run_lock = self._claim_output_dir()
        logger.setup(os.path.join(self.output_dir, f"{mode}.log"))
        if self.run_lock and self.run_lock.notice:
            logger.warning(self.run_lock.notice)
        self.signals, self.last_saved = StopSignals(), None  # handlers installed by train()
        self.checkpoint_state = self._read_resume_state()
        self.seed = replicas.common_seed(self._choose_seed(), self.world_size)
        paddle.seed(self.seed)
        self.class_num = class_num_of(config)

        self._download_weights_once()
        self.model = build_model(config)
        self.amp = amp_settings(config, self.g["device"])
        self.amp_eval = evaluates_under_autocast(self.amp)
        self.ema = self._setup_ema()
        self.weights_kind = "EMA" if self.ema else "model"  # what evaluate() reports
        if mode == "eval" and self.g.get("pretrained_model"):
            self._load_eval_weights(self.g["pretrained_model"])
        self.eval_loader = self._maybe_eval_loader()
        self.eval_loss = build_loss(config, "Eval")
        self.eval_metrics = build_metrics(config, "Eval")
        if mode == "train":
            self._setup_training()

    # ----------------------------------------------------------------- setup
    def _setup_processes(self):
        device = self.g["device"]
        if device == "gpu" and not paddle.is_compiled_with_cuda():
            raise ConfigError("Global.device is gpu but this Paddle has no CUDA: install "
                              "paddlepaddle-gpu, or use -o Global.device=cpu")
        paddle.set_device(device)
        self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        if self.world_size > 1:
            dist.init_parallel_env()

    def _claim_output_dir(self):
        """Rank 0 writes the output directory: it creates it and, to train, locks it for
        this run (run_lock.py). Every rank learns whether it could, so that all stop."""
        lock, error = None, None
        if self.rank == 0:
            try:
                make_output_dir(self.output_dir, self.g["output_dir"])
                if self.mode == "train":
                    lock = RunLock.acquire(self.output_dir)
            except ConfigError as err:
                error = err
        if self.world_size > 1:
            (failed,) = replicas.any_rank([error is not None], self.world_size)
            if failed and error is None:
                raise ConfigError(f"rank 0 could not use {self.output_dir}: see its error "
                                  "(workerlog.0 under the launch log_dir)")
        if error is not None:
            raise error
        return lock

    def _download_weights_once(self):
        """Weights named by URL are downloaded by one process per machine while the others
        wait; then all of them find the file in the cache (no two write one file)."""
        location = self.g.get("pretrained_model")
        urls = ([Download(str(location))] if location and is_url(location) else []) \
            + pretrained_downloads(self.config)
        if self.world_size == 1 or not urls:
            return
        error = None
        if int(os.environ.get("PADDLE_LOCAL_RANK", self.rank)) == 0:
            try:
                for url, sha256, max_bytes in urls:
                    fetch(url, sha256=sha256, max_bytes=max_bytes)
            except WeightsError as err:
                error = err
        (failed,) = replicas.any_rank([error is not None], self.world_size)
        if error is not None:
            raise error
        if failed:
            raise WeightsError("downloading the weights failed on another process: see its "
                               "log (workerlog.0 under the launch log_dir)")

    def _read_resume_state(self):
        wanted = self.g.get("checkpoints") if self.mode == "train" else None
        if wanted == "auto":
            wanted = os.path.join(self.output_dir, "latest")
            if not os.path.exists(wanted + ".pdstates") and \
                    not os.path.exists(previous_prefix(wanted) + ".pdstates"):
                logger.info("Global.checkpoints is auto and %s does not exist yet: starting "
                            "from scratch", wanted)
                return None
        if wanted:
            self.resume_prefix = find_checkpoint(wanted)
            return read_states(self.resume_prefix)
        return None

    def _choose_seed(self):
        if self.checkpoint_state is not None:
            return int(self.checkpoint_state["seed"])
        if self.g.get("seed") is not None:
            return int(self.g["seed"])
        return int.from_bytes(os.urandom(4), "little") >> 1

    def _setup_ema(self):
        if not self.config.get("EMA"):
            return None
        return ModelEMA(build_model(self.config), self.model, self.config["EMA"]["decay"])

    def _maybe_eval_loader(self):
        wanted = self.mode == "eval" or self.g["eval_during_train"]
        if not wanted:
            return None
        config = self.config
        if self.mode == "eval":  # published weights are evaluated as their source did
            config = copy.deepcopy(config)
            dataset = config["DataLoader"]["Eval"]["dataset"]
            dataset["transform_ops"] = self.model.eval_transforms(
                dataset.get("transform_ops"), "DataLoader.Eval.dataset.transform_ops")
        return build_dataloader(config, "Eval", self.seed, self.class_num)

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
        self.optimizer, self.lr = build_optimizer(
            self.config, self.g["epochs"], self.steps_per_epoch, self.model.named_parameters(),
            multi_precision=bool(self.amp and self.amp["level"] == "O2"))
        self.scaler = None
        if self.amp:
            self.scaler = paddle.amp.GradScaler(
                init_loss_scaling=self.amp["scale_loss"],
                use_dynamic_loss_scaling=self.amp["use_dynamic_loss_scaling"])
        self._warn_if_global_batch_differs()

        # Weights and optimizer state are loaded in float32, before AMP O2 casts the model
        # to float16 (Paddle cannot load float32 files into float16 parameters), and the
        # optimizer's float32 master weights start from the loaded values.
        self.start_epoch, self.start_iter, self.pending_eval = 1, 0, None
        self.best = {"metric": 0.0, "epoch": 0}
        if self.checkpoint_state is not None:
            self._resume(self.resume_prefix)
        elif self.g.get("pretrained_model"):
            load_into(self.model, self.g["pretrained_model"])
        if self.amp and self.amp["level"] == "O2":
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
        self.vdl = self._visualdl_writer()

    def _warn_if_global_batch_differs(self):
        """ImageNet configs name the global batch their learning rate was tuned for."""
        tuned = self.g.get("global_batch_size")
        batch = self.train_loader.batch_sampler.batch_size
        if not tuned or batch * self.world_size == tuned:
            return
        lr = (self.config.get("Optimizer") or {}).get("lr") or {}
        base = lr.get("learning_rate")
        scaled = (f" ({base} x {batch * self.world_size}/{tuned} = "
                  f"{base * batch * self.world_size / tuned:.6g})"
                  if isinstance(base, (int, float)) else "")
        logger.warning("this run's global batch is %d process(es) x %d = %d, but the config's "
                       "learning rate is tuned for Global.global_batch_size %d: scale "
                       "Optimizer.lr.learning_rate linearly%s, or run with that global batch",
                       self.world_size, batch, batch * self.world_size, tuned, scaled)

    def _data_plan(self):
        """What decides which samples each iteration trains on."""
        sampler = self.train_loader.batch_sampler
        return {"world_size": self.world_size, "batch_size": sampler.batch_size,
                "dataset_size": sampler.dataset_size, "steps_per_epoch": self.steps_per_epoch}

    def _check_resume_plan(self, path, state):
        """Resuming mid-epoch replays the rest of that epoch's plan, which only the same
        processes, batch size and list can do; at an epoch end the next epoch is planned
        afresh, and a per-iteration schedule continues at the same epoch."""
        saved, plan = state.get("plan"), self._data_plan()
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
        if not self.lr.by_epoch:
            self.lr.step(state["epoch"] * self.steps_per_epoch)
        logger.info("resuming at an epoch end with a new data plan (%s): epoch %d onwards is "
                    "planned for it; the learning-rate schedule continues at epoch %d",
                    changes, state["epoch"] + 1, state["epoch"] + 1)

    def _resume(self, path):
        saved_level = self.checkpoint_state.get("amp_level")  # None before it was recorded

        def convert(opt_state):
            return convert_optimizer_state(opt_state, self.optimizer, self.model, self.amp,
                                           saved_level, path)

        state = resume_checkpoint(path, self.model, self.optimizer, self.ema, convert)
        self.lr.set_state_dict(state["lr_scheduler"])
        self._check_resume_plan(path, state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best = dict(state["best"])
        steps_done = (state.get("plan") or {}).get("steps_per_epoch", self.steps_per_epoch)
        finished_epoch = state["iter"] >= steps_done
        self.start_epoch = state["epoch"] + 1 if finished_epoch else state["epoch"]
        self.start_iter = 0 if finished_epoch else state["iter"]
        if finished_epoch and not state.get("evaluated", True):  # stopped while evaluating
            self.pending_eval = state["epoch"]
        self.last_saved = (path, state["epoch"], state["iter"])
        logger.info("resumed from %s: epoch %d, iteration %d, best top-1 %.5f (epoch %d)",
                    path, self.start_epoch, self.start_iter, self.best["metric"],
                    self.best["epoch"])

    def _load_eval_weights(self, path):
        """Evaluate the weights training evaluated (EMA when configured and saved)."""
        self.weights_kind = load_into(self.model, path, for_eval=True,
                                      prefer_ema=self.ema is not None).kind
        self.ema = None

    def _visualdl_writer(self):
        if not self.g["use_visualdl"] or self.rank != 0:
            return None
        from visualdl import LogWriter

        return LogWriter(logdir=os.path.join(self.output_dir, "vdl"))

    # ------------------------------------------------------------- training
    def train(self):
        """Train; the output directory's lock is released when training ends, however."""
        try:
            return self._train()
        finally:
            if self.run_lock:
                self.run_lock.release()

    def _train(self):
        epochs = self.g["epochs"]
        logger.info("training %s for %d epochs, %d iterations each, seed %d, %d process(es)",
                    self.arch_name, epochs, self.steps_per_epoch, self.seed, self.world_size)
        # Paddle's to_static tracer cannot follow the custom kernel's dispatch: a compiled
        # step keeps Paddle's own depthwise operator.
        kernel = depthwise_conv.enabled(False) if self.g["to_static"] else contextlib.nullcontext()
        with self.signals, PeerWatchdog(self.world_size, self.rank) as watch, kernel:
            stop = self._run_epochs()
            if stop:  # saved before the barrier, in case a rank is gone
                if stop.agreed:
                    self._average_statistics()
                self.save("latest", stop.epoch, stop.iteration, evaluated=stop.evaluated)
            watch.finish()
        if stop:
            raise self._interrupted(stop)
        if self.best["epoch"]:
            logger.info("finished: best top-1 %.5f at epoch %d", self.best["metric"],
                        self.best["epoch"])
        else:
            logger.info("finished %d epochs (no evaluation ran)", epochs)
        if self.vdl:
            self.vdl.close()
        return self.best

    def _run_epochs(self):
        """Train the remaining epochs; a Stop if a stop signal ended them early."""
        epochs, steps = self.g["epochs"], self.steps_per_epoch
        if self.pending_eval and not self._evaluate_and_save(self.pending_eval):
            return Stop(self.pending_eval, steps, evaluated=False)
        for epoch in range(self.start_epoch, epochs + 1):
            stop = self.train_epoch(epoch, self.start_iter if epoch == self.start_epoch else 0)
            if stop:
                return stop
            if self.lr.by_epoch:
                self.lr.step()
            self._sync_replicas(epoch)
            self._report_bad_images(epoch)
            if not self._evaluate_and_save(epoch):
                return Stop(epoch, steps, evaluated=False)
            if epoch < epochs and self._agree(False, self.signals.requested)[1]:
                return Stop(epoch, steps)
        return None

    def _interrupted(self, stop):
        # Without a signal here, another process had one and all agreed to stop.
        signum = self.signals.signum or signal.SIGTERM
        latest = os.path.join(self.output_dir, "latest")
        return TrainingInterrupted(
            f"received {signal.Signals(signum).name}: saved {latest} at epoch {stop.epoch}, "
            f"iteration {stop.iteration}; resume with -o Global.checkpoints={latest}", signum)

    def _replicated_models(self):
        return [self.model] + ([self.ema.model] if self.ema else [])

    def _average_statistics(self):
        """Every rank's BN statistics (and the EMA's) become their mean over the ranks, so
        what any rank evaluates is what rank 0 saves (see replicas.py)."""
        replicas.average_statistics(self._replicated_models(), self.world_size)

    def _check_epoch_coverage(self, epoch):
        """The ranks' shards of this epoch hold every sample once, up to the sampler's
        padding; an overlap would mean the ranks planned with different seeds."""
        sampler = self.train_loader.batch_sampler
        n = sampler.dataset_size
        distinct, trained = replicas.epoch_coverage(sampler.epoch_indices(), n, self.world_size)
        padding = max(0, sampler.shard_size() * self.world_size - n)
        if trained - distinct > padding:
            raise RuntimeError(f"epoch {epoch}: the {self.world_size} processes trained on "
                               f"{trained} samples but only {distinct} distinct ones: their "
                               "data shards overlap (they planned with different seeds)")
        logger.info("[Train][Epoch %d] %d process(es) trained on %d of the %d samples (%d "
                    "padding repeats, %d left out by drop_last)", epoch, self.world_size,
                    distinct, n, trained - distinct, n - distinct)

    def _sync_replicas(self, epoch):
        """At each epoch end: average the statistics, then check that the replicas hold
        bitwise-identical weights, statistics and EMA (a mismatch means they diverged)."""
        self._check_epoch_coverage(epoch)
        if self.world_size == 1:
            return
        self._average_statistics()
        if not replicas.identical_on_all_ranks(self._replicated_models(), self.world_size):
            raise RuntimeError(f"data-parallel replicas hold different weights after epoch "
                               f"{epoch}; the processes diverged")
        logger.info("[Train][Epoch %d] %d replicas hold identical weights and averaged BN "
                    "statistics%s", epoch, self.world_size, " (model and EMA)" if self.ema else "")

    def _step_seed(self, epoch, iteration):
        return _mix_seed(self.seed, epoch, iteration, self.rank)

    def train_epoch(self, epoch, start_iter=0):
        """One epoch from `start_iter`; a Stop if a stop signal ended it early."""
        self.train_loader.batch_sampler.set_epoch(epoch, start_iter)
        self.train_model.train()
        self.step_values = StepValues([n for m in self.train_metrics for n in m.names])
        with contextlib.closing(iter(self.train_loader)) as batches:
            stop = self._train_iterations(epoch, start_iter, batches)
        values = self.step_values
        if values.seen and not stop:
            avg = ", ".join(f"{k}: {v:.5f}" for k, v in values.averages().items())
            logger.info("[Train][Epoch %d/%d][Avg]%s", epoch, self.g["epochs"], avg)
        return stop

    def _train_iterations(self, epoch, start_iter, batches):
        every, print_every = self.g["save_latest_steps"], self.g["print_batch_step"]
        timer = IntervalTimer()
        for iteration in range(start_iter, self.steps_per_epoch):
            batch_data = self._next_batch(batches)
            if batch_data is None:
                return Stop(epoch, iteration, agreed=False)
            images, labels = batch_data
            timer.loaded()
            paddle.seed(self._step_seed(epoch, iteration))
            losses, logits = self._train_step(images, labels)
            self.step_values.add(iteration, images.shape[0], losses,
                                 [m.counts(logits, labels) for m in self.train_metrics])

            last = iteration + 1 == self.steps_per_epoch
            logged = iteration % print_every == 0 or last
            saving = bool(every) and (iteration + 1) % every == 0 and not last
            # Reading the values waits for the device: only at log steps, before saving,
            # and every CHECK_EVERY steps, where the ranks also agree on stopping.
            checked = logged or saving or iteration % CHECK_EVERY == 0
            stop_requested = self._check_progress(epoch, checked)
            if logged:
                self._log_train(epoch, iteration, images.shape[0], *timer.lap())
            if stop_requested and not last:  # at the last step the epoch end comes first
                return Stop(epoch, iteration + 1)
            if saving:
                self._average_statistics()
                self.save("latest", epoch, iteration + 1)
            timer.step_done()
        return None

    def _next_batch(self, batches):
        """The next batch, or None when a stop signal interrupted the loader (Ctrl-C in a
        terminal reaches its worker processes too)."""
        try:
            return next(batches)
        except Exception:
            if self.signals.requested:
                return None
            raise

    def _check_progress(self, epoch, checked):
        """After each step: True when the ranks agree to stop after a stop signal. At a
        `checked` step the values of the steps since the last one are read, and a NaN or
        infinite loss on any rank raises (on every rank alike). A single process reacts
        to a stop signal at any step; several agree at checked steps (one tiny all-reduce)."""
        if not checked:
            return self.world_size == 1 and self.signals.requested
        self.step_values.read()
        diverged, stop = self._agree(self.step_values.first_non_finite is not None,
                                     self.signals.requested)
        if diverged:
            self._raise_diverged(epoch)
        return stop

    def _raise_diverged(self, epoch):
        found = self.step_values.first_non_finite
        where = (f"{found[1]} at epoch {epoch}, iteration {found[0]}" if found else
                 f"NaN or infinite on another process in epoch {epoch}")
        raise TrainingDiverged(
            f"the loss became {where}: training stopped. {self._last_saved_text()} Lower "
            "Optimizer.lr.learning_rate or set Optimizer.clip_global_norm, then resume from it")

    def _agree(self, diverged, stop):
        """All processes stop together: one tiny all-reduce of both flags."""
        return replicas.any_rank([diverged, stop], self.world_size)

    def _last_saved_text(self):
        if self.last_saved is None:
            return "No checkpoint was saved yet."
        path, epoch, iteration = self.last_saved
        return (f"The last checkpoint, {path} (epoch {epoch}, iteration {iteration}), is "
                "unchanged.")

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

    def _log_train(self, epoch, iteration, batch, batch_cost, reader_cost):
        averages = self.step_values.averages()
        metrics = ", ".join(f"{k}: {v:.5f}" for k, v in averages.items())
        remaining = (self.g["epochs"] - epoch) * self.steps_per_epoch + (
            self.steps_per_epoch - iteration - 1)
        eta = datetime.timedelta(seconds=int(remaining * batch_cost))
        logger.info("[Train][Epoch %d/%d][Iter: %d/%d]lr: %.5f, %s, batch_cost: %.5fs, "
                    "reader_cost: %.5fs, ips: %.5f samples/s, eta: %s", epoch, self.g["epochs"],
                    iteration, self.steps_per_epoch, self.optimizer.get_lr(), metrics,
                    batch_cost, reader_cost, batch / batch_cost, eta)
        if self.vdl:
            step = (epoch - 1) * self.steps_per_epoch + iteration
            for key, value in averages.items():
                self.vdl.add_scalar(f"Train/{key}", value, step)
            self.vdl.add_scalar("Train/lr", self.optimizer.get_lr(), step)

    def _state(self, epoch, iteration, evaluated):
        return {"metric": self.best["metric"], "epoch": epoch, "iter": iteration,
                "evaluated": evaluated, "best": dict(self.best), "seed": self.seed,
                "lr_scheduler": self.lr.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "evaluated_weights": "ema" if self.ema else "model",
                "arch": self.arch_name, "plan": self._data_plan(),
                # the optimizer state's layout depends on them (see amp.py)
                "amp_level": level_of(self.amp),
                "master_weights": bool(master_weight_params(self.model, self.amp)),
                **self.model.checkpoint_record()}  # e.g. the topology the weights need

    def save(self, name, epoch, iteration, evaluated=True):
        if self.rank != 0:
            return
        self._check_losses_finite(epoch)
        self._check_weights_finite(epoch, iteration)
        prefix = os.path.join(self.output_dir, name)
        save_checkpoint(prefix, self.model, self.optimizer, self.ema,
                        self._state(epoch, iteration, evaluated))
        if name == "latest":
            self.last_saved = (prefix, epoch, iteration)
        keep = self.g["keep_checkpoint_max"]
        if name.startswith("epoch_") and keep and epoch - keep * self.g["save_interval"] > 0:
            remove_checkpoint(os.path.join(
                self.output_dir, f"epoch_{epoch - keep * self.g['save_interval']}"))

    def _check_losses_finite(self, epoch):
        """The losses of steps not read yet (a stop signal can end an epoch between two
        checked steps) are read before anything is saved."""
        values = getattr(self, "step_values", None)
        if values is not None:
            values.read()
            if values.first_non_finite is not None:
                self._raise_diverged(epoch)

    def _check_weights_finite(self, epoch, iteration):
        """Never overwrite a good checkpoint with NaN weights (a finite loss can still
        produce an infinite gradient in its step)."""
        named = [(n, t) for n, t in replicas.named_state_tensors(self.model)
                 if paddle.is_floating_point(t)]
        finite = paddle.stack([paddle.isfinite(t).all() for _, t in named])
        if bool(finite.all()):  # one host sync, not one per tensor
            return
        for (name, _), ok in zip(named, finite.numpy()):
            if not ok:
                raise TrainingDiverged(
                    f"{name} holds NaN or infinite values after epoch {epoch}, iteration "
                    f"{iteration}: training stopped without saving. {self._last_saved_text()} "
                    "Lower Optimizer.lr.learning_rate or set Optimizer.clip_global_norm, then "
                    "resume from it")

    def _report_bad_images(self, epoch):
        """Rank 0's log names every rank's unreadable images of the epoch."""
        skipped = replicas.gather_lists(self.train_loader.policy.skipped, self.world_size)
        dropped = len(self.train_loader.dataset.dropped)
        if skipped or dropped:
            shown = "; ".join(skipped[:20]) + ("; ..." if len(skipped) > 20 else "")
            logger.warning("[Train][Epoch %d] skipped %d unreadable image(s) this epoch%s; %d "
                           "listed file(s) are missing and were left out from the start", epoch,
                           len(skipped), f": {shown}" if skipped else "", dropped)

    def _evaluate_and_save(self, epoch):
        """Evaluate when due and save; False if a stop signal interrupted the evaluation."""
        g = self.g
        if self.eval_loader is not None and epoch % g["eval_interval"] == 0 \
                and epoch > g["start_eval_epoch"]:
            results = self.evaluate(epoch)
            if results is None:
                return False
            top1 = results["top1"]
            if top1 > self.best["metric"] or self.best["epoch"] == 0:  # first eval always saves
                self.best = {"metric": top1, "epoch": epoch}
                self.save("best_model", epoch, self.steps_per_epoch)
            logger.info("[Eval][Epoch %d][best metric: %.5f]", epoch, self.best["metric"])
        if epoch % g["save_interval"] == 0:
            self.save(f"epoch_{epoch}", epoch, self.steps_per_epoch)
        self.save("latest", epoch, self.steps_per_epoch)
        return True

    # ----------------------------------------------------------- evaluation
    @paddle.no_grad()
    def evaluate(self, epoch=0):
        """Top-k accuracy and loss over every eval sample exactly once: each process
        evaluates its unpadded shard, and the counts are summed across processes. None when
        a stop signal interrupted it (single-process training only)."""
        net = self.ema.model if self.ema else self.model
        net.eval()
        if self.world_size > 1:
            depthwise_conv.prepare()  # every rank, with or without images
        with contextlib.closing(iter(self.eval_loader)) as batches:
            sums = self._eval_batches(net, epoch, batches)
        if sums is None:
            return None
        counts, loss_sum, seen = sums
        keys = sorted(counts)  # known up front: the same on every rank, even one without images
        skipped = len(self.eval_loader.policy.skipped)
        totals = self._sum_over_processes([seen, skipped, *[counts[k] for k in keys]], "int64")
        loss_total = self._sum_over_processes([loss_sum], "float64")[0]
        seen, skipped, *metric_counts = (int(t) for t in totals)
        self._log_eval_count(epoch, seen, skipped)
        results = {"loss": loss_total / seen} if self.eval_loss else {}
        results.update({k: c / seen for k, c in zip(keys, metric_counts)})
        exact = ", ".join(f"{k} {c}/{seen}" for k, c in zip(keys, metric_counts))
        logger.info("[Eval][Epoch %d][Avg]%s (%s correct, %s weights)", epoch,
                    ", ".join(f"{k}: {v:.5f}" for k, v in results.items()), exact,
                    self.weights_kind)
        if self.mode == "train" and self.vdl:
            for key, value in results.items():
                self.vdl.add_scalar(f"Eval/{key}", value, epoch)
        if self.mode == "train":
            self.model.train()
        return results

    def _eval_batches(self, net, epoch, batches):
        names = [n for m in self.eval_metrics for n in m.names]
        values = []  # (batch size, float64 tensor [loss, *counts]) per batch, read at the end
        for iteration, (images, labels) in enumerate(batches):
            logits = self._eval_forward(net, images)
            parts = [m.counts(logits, labels).astype("float64") for m in self.eval_metrics]
            if self.eval_loss:
                parts.insert(0, self.eval_loss(logits, labels)["loss"].reshape([1])
                             .astype("float64"))
            values.append((images.shape[0], paddle.concat(parts or [paddle.zeros([0], "float64")])))
            if iteration % self.g["print_batch_step"] == 0:
                logger.info("[Eval][Epoch %d][Iter: %d/%d]", epoch, iteration,
                            len(self.eval_loader))
            # Stop mid-evaluation in a single process only: evaluation shards may differ in
            # length by a batch, so processes cannot agree per batch; they stop after it.
            if self.world_size == 1 and self.mode == "train" and self.signals.requested:
                return None
        counts, loss_sum, seen = dict.fromkeys(names, 0), 0.0, 0
        rows = paddle.stack([row for _, row in values]).numpy() if values else []
        for (batch, _), row in zip(values, rows):  # the host's sums, as when read per batch
            if self.eval_loss:
                loss_sum += float(row[0]) * batch
                row = row[1:]
            for key, count in zip(names, row):
                counts[key] += int(count)
            seen += batch
        return counts, loss_sum, seen

    def _eval_forward(self, net, images):
        if not self.amp_eval:
            return net(images)
        with autocast(self.amp):
            return net(images).astype("float32")

    def _log_eval_count(self, epoch, seen, skipped):
        """Every listed image is evaluated once, or accounted for as skipped/missing."""
        dataset = self.eval_loader.dataset
        missing = len(dataset.dropped)
        if seen + skipped + missing != dataset.listed:
            raise RuntimeError(f"evaluated {seen} + skipped {skipped} + missing {missing} "
                               f"images, but {dataset.cls_label_path} lists {dataset.listed}")
        if seen == 0:
            raise ConfigError("the evaluation set is empty")
        note = f"; {skipped} unreadable and {missing} missing skipped" if skipped or missing else ""
        logger.info("[Eval][Epoch %d] evaluated %d of the %d images listed in %s%s", epoch, seen,
                    dataset.listed, dataset.cls_label_path, note)

    def _sum_over_processes(self, values, dtype):
        return replicas.sum_over_ranks(values, dtype, self.world_size)
