"""What the data-parallel processes (ranks) must agree on, in one place.

Data parallelism averages gradients, so the trained weights stay identical on every rank,
but three things would otherwise differ between ranks:
  - the seed, when none is configured (each rank would draw its own): `common_seed`;
  - BatchNorm running statistics, which every rank updates from its own shard:
    `average_statistics` replaces them, on every rank, by their mean over the ranks (as
    timm's `distribute_bn` does with reduce=True). The engine calls it before every
    evaluation and every save, so the statistics a rank evaluates are the ones saved.
    Running statistics are updated linearly (`s = m*s + (1-m)*batch_stat`, and the same
    for the EMA copy), so averaging them now and then gives the same statistics as
    averaging them after every step; a resumed run therefore continues exactly;
  - which images were unreadable: `gather_lists` brings them to rank 0's log.
`epoch_coverage` checks the consequence of a common seed at every epoch end: the ranks'
shards together hold every sample once (see ppcls/data/sampler.py for padding).
Every function is a no-op for a single process.
"""

import numpy as np
import paddle
import paddle.distributed as dist


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
