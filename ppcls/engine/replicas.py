"""What the data-parallel processes (ranks) must agree on, in one place.

Data parallelism averages gradients, so the trained weights stay identical on every rank,
but some things would otherwise differ between ranks or be done by all of them at once:
  - the seed, when none is configured (each rank would draw its own): `run_seed`;
  - work one process does for the others: rank 0 creates and locks the output folder,
    one process per machine downloads the weights (`download_once_per_machine`), and
    every rank learns whether that failed (`done_by_one`), so that all stop together;
  - stopping (a signal on one rank, a NaN loss on one rank): `any_rank`;
  - BatchNorm running statistics, which every rank updates from its own shard:
    `average_statistics` replaces them, on every rank, by their mean over the ranks (as
    timm's `distribute_bn` does with reduce=True). The engine calls it before every
    evaluation and every save, so the statistics a rank evaluates are the ones saved.
    Running statistics are updated linearly (`s = m*s + (1-m)*batch_stat`, and the same
    for the EMA copy), so averaging them now and then gives the same statistics as
    averaging them after every step; a resumed run therefore continues exactly;
  - which images were unreadable: `gather_lists` brings them to rank 0's log.
At every epoch end, `check_epoch_coverage` checks the consequence of a common seed (the
ranks' shards together hold every sample once; see ppcls/data/sampler.py for padding) and
`sync_after_epoch` averages the statistics and checks that every rank holds bitwise the
same weights. Every collective is skipped for a single process.
"""

import os

import numpy as np
import paddle
import paddle.distributed as dist

from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, WeightsError
from ppcls.weights import fetch


def start_processes(device):
    """(world size, rank) of this process, on `device`, the processes' group started."""
    if device == "gpu" and not paddle.is_compiled_with_cuda():
        raise ConfigError("Global.device is gpu but this Paddle has no CUDA: install "
                          "paddlepaddle-gpu, or use -o Global.device=cpu")
    paddle.set_device(device)
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size > 1:
        dist.init_parallel_env()
    return world_size, rank


def run_seed(saved_state, configured, world_size):
    """The run's seed, the same on every rank: a resumed checkpoint's, else Global.seed,
    else one drawn now (rank 0's)."""
    if saved_state is not None:
        seed = int(saved_state["seed"])
    elif configured is not None:
        seed = int(configured)
    else:
        seed = int.from_bytes(os.urandom(4), "little") >> 1
    return common_seed(seed, world_size)


def common_seed(seed, world_size):
    """Rank 0's seed, on every rank."""
    if world_size == 1:
        return seed
    value = paddle.to_tensor(np.array([seed], dtype="int64"))
    dist.broadcast(value, src=0)
    return int(value.numpy()[0])


def epoch_coverage(indices, dataset_size, world_size):
    """(distinct samples, samples trained on) over all ranks' `indices` for one epoch."""
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=dataset_size)
    if world_size > 1:
        total = paddle.to_tensor(counts.astype("int32"))
        dist.all_reduce(total)
        counts = total.numpy()
    return int((counts > 0).sum()), int(counts.sum())


def named_state_tensors(model):
    """(name, tensor) of everything a model's state_dict holds (parameters, BN statistics,
    persistable buffers), read from the layers directly: after AMP O2's decorate with
    save_dtype, each state_dict() call runs a hook on every sublayer that casts every
    tensor (about 30,000 casts for B1 x1.0), which per-step code must not pay."""
    named = list(model.named_parameters())
    for prefix, layer in model.named_sublayers(include_self=True):
        for name, buffer in layer._buffers.items():
            if buffer is not None and name not in layer._non_persistable_buffer_names_set:
                named.append((f"{prefix}.{name}" if prefix else name, buffer))
    return named


def running_statistics(model):
    """The floating-point tensors a model updates without gradients: BatchNorm's running
    mean and variance (Paddle keeps them as parameters with stop_gradient) and buffers."""
    stats = [p for p in model.parameters() if p.stop_gradient and paddle.is_floating_point(p)]
    stats += [b for b in model.buffers() if paddle.is_floating_point(b)]
    return stats


@paddle.no_grad()
def average_statistics(models, world_size):
    """Replace the running statistics of `models` by their mean over the ranks: one
    all-reduce, then a broadcast of rank 0's result so that every rank holds the same bits
    whatever order the reduction summed in."""
    if world_size == 1:
        return
    tensors = [t for model in models for t in running_statistics(model)]
    if not tensors:
        return
    flat = paddle.concat([t.astype("float32").flatten() for t in tensors])
    dist.all_reduce(flat)
    flat = flat / world_size
    dist.broadcast(flat, src=0)
    offset = 0
    for tensor in tensors:
        size = int(np.prod(tensor.shape))
        tensor.set_value(flat[offset:offset + size].reshape(tensor.shape).astype(tensor.dtype))
        offset += size


def state_checksums(models):
    """One float64 sum per tensor of the models' state (weights and statistics)."""
    sums = [t.astype("float64").sum() for model in models for _, t in named_state_tensors(model)
            if paddle.is_floating_point(t)]
    return paddle.stack(sums)


def identical_on_all_ranks(models, world_size):
    """True when every rank holds bitwise the same checksums of the models' state."""
    if world_size == 1:
        return True
    checksum = state_checksums(models)
    gathered = []
    dist.all_gather(gathered, checksum)
    return all(bool((g == gathered[0]).all()) for g in gathered[1:])


def any_rank(flags, world_size):
    """Element-wise OR of boolean flags over the ranks (one tiny all-reduce)."""
    if world_size == 1:
        return tuple(bool(f) for f in flags)
    tensor = paddle.to_tensor(np.array(flags, dtype="int32"))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tuple(bool(f) for f in tensor.numpy())


def sum_over_ranks(values, dtype, world_size):
    tensor = paddle.to_tensor(np.array(values, dtype=dtype))
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor.numpy().tolist()


def gather_lists(items, world_size):
    """Every rank's list, concatenated in rank order (on every rank)."""
    if world_size == 1:
        return list(items)
    gathered = []
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def done_by_one(task, doer, world_size, elsewhere):
    """Run `task` on the processes where `doer` is True while the others wait; then every
    process raises if it failed on any: the doer its own error, the others `elsewhere`
    (an error saying where to look). Returns what `task` returned (None elsewhere)."""
    result, error = None, None
    if doer:
        try:
            result = task()
        except (ConfigError, WeightsError) as err:
            error = err
    if world_size > 1:
        (failed,) = any_rank([error is not None], world_size)
        if failed and error is None:
            raise elsewhere
    if error is not None:
        raise error
    return result


def download_once_per_machine(downloads, world_size, rank):
    """Weights named by URL are downloaded by one process per machine while the others
    wait; then all of them find the file in the cache (no two write one file). A single
    process downloads them when it loads them."""
    if world_size == 1 or not downloads:
        return

    def fetch_all():
        for url, sha256, max_bytes in downloads:
            fetch(url, sha256=sha256, max_bytes=max_bytes)

    done_by_one(fetch_all, int(os.environ.get("PADDLE_LOCAL_RANK", rank)) == 0, world_size,
                WeightsError("downloading the weights failed on another process: see its "
                             "log (workerlog.0 under the launch log_dir)"))


def check_epoch_coverage(sampler, epoch, world_size):
    """The ranks' shards of this epoch hold every sample once, up to the sampler's
    padding; an overlap would mean the ranks planned with different seeds."""
    n = sampler.dataset_size
    distinct, trained = epoch_coverage(sampler.epoch_indices(), n, world_size)
    padding = max(0, sampler.shard_size() * world_size - n)
    if trained - distinct > padding:
        raise RuntimeError(f"epoch {epoch}: the {world_size} processes trained on {trained} "
                           f"samples but only {distinct} distinct ones: their data shards "
                           "overlap (they planned with different seeds)")
    logger.info("[Train][Epoch %d] %d process(es) trained on %d of the %d samples (%d "
                "padding repeats, %d left out by drop_last)", epoch, world_size,
                distinct, n, trained - distinct, n - distinct)


def sync_after_epoch(models, epoch, world_size):
    """At each epoch end: average the statistics, then check that the replicas hold
    bitwise-identical weights, statistics and EMA (a mismatch means they diverged)."""
    if world_size == 1:
        return
    average_statistics(models, world_size)
    if not identical_on_all_ranks(models, world_size):
        raise RuntimeError(f"data-parallel replicas hold different weights after epoch "
                           f"{epoch}; the processes diverged")
    logger.info("[Train][Epoch %d] %d replicas hold identical weights and averaged BN "
                "statistics%s", epoch, world_size, " (model and EMA)" if len(models) > 1 else "")
