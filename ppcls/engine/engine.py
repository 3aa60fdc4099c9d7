"""Training and evaluation, PaddleClas style. Read top to bottom:

    Engine(config, mode)   sets up device, processes, seed, logging, model, data, loss,
                           optimizer, AMP, EMA, then loads weights or resumes
    Engine.train()         epochs of `train_epoch`, evaluation, checkpoints
    Engine.evaluate()      exact metrics over the whole eval set on any number of processes

Randomness: the seed (Global.seed, or drawn once and stored in every checkpoint) fixes the
weight initialisation, the data order and augmentation (through the sampler) and dropout
(re-seeded every iteration from seed, epoch and iteration). A run resumed from a checkpoint
therefore continues exactly as the uninterrupted run would have.
"""

import datetime
import math
import os
import time

import numpy as np
import paddle
import paddle.distributed as dist

from ppcls.arch import build_model
from ppcls.data import build_dataloader
from ppcls.engine.checkpoint import (load_checkpoint, load_weights, read_states,
                                     save_checkpoint, strip_params_suffix)
from ppcls.engine.ema import ModelEMA
from ppcls.loss import build_loss
from ppcls.metric import build_metrics
from ppcls.optimizer import build_optimizer
from ppcls.utils import logger
from ppcls.utils.config import class_num_of
from ppcls.utils.errors import ConfigError
from ppcls.utils.save_load import load_pretrained_weights


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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
        logger.setup(os.path.join(self.output_dir, f"{mode}.log"))
        self.checkpoint_state = self._read_resume_state()
        self.seed = self._choose_seed()
        paddle.seed(self.seed)
        self.class_num = class_num_of(config)

        self.model = build_model(config)
        self.amp = self._setup_amp()
        self.ema = self._setup_ema()
        self.eval_loader = self._maybe_eval_loader()
        self.eval_loss = build_loss(config, "Eval")
        self.eval_metrics = build_metrics(config, "Eval")
        self.weights_kind = "EMA" if self.ema else "model"  # what evaluate() reports
        if mode == "train":
            self._setup_training()
        elif self.g.get("pretrained_model"):
            self._load_eval_weights(self.g["pretrained_model"])

    # ----------------------------------------------------------------- setup
    def _setup_processes(self):
        device = self.g["device"]
        if device == "gpu" and not paddle.is_compiled_with_cuda():
            raise ConfigError("Global.device is gpu but this Paddle has no CUDA: install "
                              "paddlepaddle-gpu, or use -o Global.device=cpu")
        if device not in ("cpu", "gpu"):
            raise ConfigError(f"Global.device must be cpu or gpu, got {device!r}")
        paddle.set_device(device)
        self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        if self.world_size > 1:
            dist.init_parallel_env()

    def _read_resume_state(self):
        if self.mode == "train" and self.g.get("checkpoints"):
            state = read_states(strip_params_suffix(self.g["checkpoints"]))
            if state is None:
                raise ConfigError(f"Global.checkpoints={self.g['checkpoints']}: no .pdstates "
                                  "beside it; it is not a checkpoint written by training")
            return state
        return None

    def _choose_seed(self):
        if self.checkpoint_state is not None:
            return int(self.checkpoint_state["seed"])
        if self.g.get("seed") is not None:
            return int(self.g["seed"])
        return int.from_bytes(os.urandom(4), "little") >> 1

    def _setup_amp(self):
        amp = self.config.get("AMP")
        if not amp or not amp["use_amp"]:
            return None
        if amp["level"] not in ("O1", "O2"):
            raise ConfigError(f"AMP.level must be O1 or O2, got {amp['level']!r}")
        if self.g["device"] != "gpu":
            logger.warning("AMP needs a GPU: training in float32 on %s instead", self.g["device"])
            return None
        return amp

    def _setup_ema(self):
        if not self.config.get("EMA"):
            return None
        return ModelEMA(build_model(self.config), self.model, self.config["EMA"]["decay"])

    def _maybe_eval_loader(self):
        wanted = self.mode == "eval" or self.g["eval_during_train"]
        if not wanted:
            return None
        return build_dataloader(self.config, "Eval", self.seed, self.class_num)

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
            if self.amp["level"] == "O2":
                self.model, self.optimizer = paddle.amp.decorate(
                    self.model, self.optimizer, level="O2", save_dtype="float32")

        self.start_epoch, self.start_iter = 1, 0
        self.best = {"metric": 0.0, "epoch": 0}
        if self.checkpoint_state is not None:
            self._resume(self.g["checkpoints"])
        elif self.g.get("pretrained_model"):
            load_pretrained_weights(self.model, self.g["pretrained_model"])
            if self.ema:
                self.ema.set_state_dict(self.model.state_dict())

        self.train_model = self.model
        if self.g["to_static"]:
            self.train_model = paddle.jit.to_static(self.train_model)
        if self.world_size > 1:
            self.train_model = paddle.DataParallel(self.train_model)
        self.vdl = self._visualdl_writer()

    def _resume(self, path):
        state = load_checkpoint(path, self.model, self.optimizer, self.ema)
        self.lr.set_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best = dict(state["best"])
        finished_epoch = state["iter"] >= self.steps_per_epoch
        self.start_epoch = state["epoch"] + 1 if finished_epoch else state["epoch"]
        self.start_iter = 0 if finished_epoch else state["iter"]
        logger.info("resumed from %s: epoch %d, iteration %d, best top-1 %.5f (epoch %d)",
                    path, self.start_epoch, self.start_iter, self.best["metric"],
                    self.best["epoch"])

    def _load_eval_weights(self, path):
        """Evaluate the weights training evaluated (EMA when configured and saved)."""
        self.weights_kind = load_weights(self.model, path, prefer_ema=self.ema is not None)
        self.ema = None

    def _visualdl_writer(self):
        if not self.g["use_visualdl"] or self.rank != 0:
            return None
        from visualdl import LogWriter

        return LogWriter(logdir=os.path.join(self.output_dir, "vdl"))

    # ------------------------------------------------------------- training
    def train(self):
        epochs = self.g["epochs"]
        logger.info("training %s for %d epochs, %d iterations each, seed %d, %d process(es)",
                    self.arch_name, epochs, self.steps_per_epoch, self.seed, self.world_size)
        for epoch in range(self.start_epoch, epochs + 1):
            start_iter = self.start_iter if epoch == self.start_epoch else 0
            self.train_epoch(epoch, start_iter)
            if self.lr.by_epoch:
                self.lr.step()
            self._check_replicas_in_sync(epoch)
            self._evaluate_and_save(epoch)
        logger.info("finished: best top-1 %.5f at epoch %d", self.best["metric"],
                    self.best["epoch"])
        if self.vdl:
            self.vdl.close()
        return self.best

    def _check_replicas_in_sync(self, epoch):
        """Data-parallel replicas must hold bitwise-identical weights (BN statistics are
        per process and may differ). A mismatch means the processes diverged."""
        if self.world_size == 1:
            return
        params = [p for p in self.model.parameters() if not p.stop_gradient]
        checksum = paddle.stack([p.astype("float64").sum() for p in params])
        gathered = []
        dist.all_gather(gathered, checksum)
        if any(not bool((g == gathered[0]).all()) for g in gathered[1:]):
            raise RuntimeError(f"data-parallel replicas hold different weights after epoch "
                               f"{epoch}; the processes diverged")
        logger.info("[Train][Epoch %d] %d replicas hold identical weights", epoch,
                    self.world_size)

    def _step_seed(self, epoch, iteration):
        return _mix_seed(self.seed, epoch, iteration, self.rank)

    def train_epoch(self, epoch, start_iter=0):
        self.train_loader.batch_sampler.set_epoch(epoch, start_iter)
        self.train_model.train()
        sums, seen = {}, 0
        tic = time.time()
        for iteration, (images, labels) in enumerate(self.train_loader, start=start_iter):
            reader_cost = time.time() - tic
            paddle.seed(self._step_seed(epoch, iteration))
            losses, logits = self._train_step(images, labels)

            batch = images.shape[0]
            values = {k: float(v) for k, v in losses.items()}
            if not math.isfinite(values["loss"]):
                raise TrainingDiverged(f"loss is {values['loss']} at epoch {epoch}, iteration "
                                       f"{iteration}; the last good checkpoint is unchanged")
            for metric in self.train_metrics:
                values.update({k: c / batch for k, c in metric.counts(logits, labels).items()})
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * batch
            seen += batch
            batch_cost = time.time() - tic
            if iteration % self.g["print_batch_step"] == 0 or iteration == self.steps_per_epoch - 1:
                self._log_train(epoch, iteration, sums, seen, batch, batch_cost, reader_cost)
            tic = time.time()
        if seen:
            avg = ", ".join(f"{k}: {v / seen:.5f}" for k, v in sums.items())
            logger.info("[Train][Epoch %d/%d][Avg]%s", epoch, self.g["epochs"], avg)

    def _train_step(self, images, labels):
        if self.amp:
            with paddle.amp.auto_cast(level=self.amp["level"],
                                      use_promote=self.amp["use_promote"]):
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

    def _log_train(self, epoch, iteration, sums, seen, batch, batch_cost, reader_cost):
        metrics = ", ".join(f"{k}: {v / seen:.5f}" for k, v in sums.items())
        remaining = (self.g["epochs"] - epoch) * self.steps_per_epoch + (
            self.steps_per_epoch - iteration - 1)
        eta = datetime.timedelta(seconds=int(remaining * batch_cost))
        logger.info("[Train][Epoch %d/%d][Iter: %d/%d]lr: %.5f, %s, batch_cost: %.5fs, "
                    "reader_cost: %.5fs, ips: %.5f samples/s, eta: %s", epoch, self.g["epochs"],
                    iteration, self.steps_per_epoch, self.optimizer.get_lr(), metrics,
                    batch_cost, reader_cost, batch / batch_cost, eta)
        if self.vdl:
            step = (epoch - 1) * self.steps_per_epoch + iteration
            for key, value in sums.items():
                self.vdl.add_scalar(f"Train/{key}", value / seen, step)
            self.vdl.add_scalar("Train/lr", self.optimizer.get_lr(), step)

    def _state(self, epoch, iteration):
        return {"metric": self.best["metric"], "epoch": epoch, "iter": iteration,
                "best": dict(self.best), "seed": self.seed, "lr_scheduler": self.lr.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "evaluated_weights": "ema" if self.ema else "model",
                "arch": self.arch_name}

    def save(self, name, epoch, iteration):
        if self.rank != 0:
            return
        save_checkpoint(os.path.join(self.output_dir, name), self.model, self.optimizer,
                        self.ema, self._state(epoch, iteration))

    def _evaluate_and_save(self, epoch):
        g = self.g
        if self.eval_loader is not None and epoch % g["eval_interval"] == 0 \
                and epoch > g["start_eval_epoch"]:
            top1 = self.evaluate(epoch)["top1"]
            if top1 > self.best["metric"] or self.best["epoch"] == 0:  # first eval always saves
                self.best = {"metric": top1, "epoch": epoch}
                self.save("best_model", epoch, self.steps_per_epoch)
            logger.info("[Eval][Epoch %d][best metric: %.5f]", epoch, self.best["metric"])
        if epoch % g["save_interval"] == 0:
            self.save(f"epoch_{epoch}", epoch, self.steps_per_epoch)
        self.save("latest", epoch, self.steps_per_epoch)

    # ----------------------------------------------------------- evaluation
    @paddle.no_grad()
    def evaluate(self, epoch=0):
        """Top-k accuracy and loss over every eval sample exactly once: each process
        evaluates its unpadded shard, and the counts are summed across processes."""
        net = self.ema.model if self.ema else self.model
        net.eval()
        counts, loss_sum, seen = {}, 0.0, 0
        batches = len(self.eval_loader)
        for iteration, (images, labels) in enumerate(self.eval_loader):
            logits = net(images)
            batch = images.shape[0]
            if self.eval_loss:
                loss_sum += float(self.eval_loss(logits, labels)["loss"]) * batch
            for metric in self.eval_metrics:
                for key, value in metric.counts(logits, labels).items():
                    counts[key] = counts.get(key, 0) + value
            seen += batch
            if iteration % self.g["print_batch_step"] == 0:
                logger.info("[Eval][Epoch %d][Iter: %d/%d]", epoch, iteration, batches)
        keys = sorted(counts)
        totals = self._sum_over_processes([seen, *[counts[k] for k in keys]], "int64")
        loss_total = self._sum_over_processes([loss_sum], "float64")[0]
        seen = int(totals[0])
        if seen == 0:
            raise ConfigError("the evaluation set is empty")
        results = {"loss": loss_total / seen} if self.eval_loss else {}
        results.update({k: int(c) / seen for k, c in zip(keys, totals[1:])})
        exact = ", ".join(f"{k} {int(c)}/{seen}" for k, c in zip(keys, totals[1:]))
        logger.info("[Eval][Epoch %d][Avg]%s (%s correct, %s weights)", epoch,
                    ", ".join(f"{k}: {v:.5f}" for k, v in results.items()), exact,
                    self.weights_kind)
        if self.mode == "train" and self.vdl:
            for key, value in results.items():
                self.vdl.add_scalar(f"Eval/{key}", value, epoch)
        if self.mode == "train":
            self.model.train()
        return results

    def _sum_over_processes(self, values, dtype):
        tensor = paddle.to_tensor(np.array(values, dtype=dtype))
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor.numpy().tolist()
