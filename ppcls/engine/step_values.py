"""Per-step losses and metric counts stay on the device until the host needs them.

Reading a tensor on the host (`float(t)`, `int(t)`, `.numpy()`) makes the host wait until
the device has finished all the work queued before it. On a GPU, reading each step's loss
and accuracy leaves the device idle while the host prepares the next step: a small model
like MnasNet is launch-bound, so those waits cost real throughput. Here each step's values
become one small float64 tensor, and all the steps since the last read come back in one
transfer (at log steps, at the bounded intervals the ranks agree on stopping, and before
every save, so a NaN loss is still found before anything is written).

The host then does exactly the arithmetic it did when it read every step (float32 losses
and integer counts are exact in float64), so the logged averages are unchanged.
"""

import math
import time

import paddle


class StepValues:
    """The named values of the training steps not read yet, and the sums of those read."""

    def __init__(self, count_names):
        self.loss_names, self.count_names = [], list(count_names)
        self._pending = []  # (iteration, batch size, float64 tensor) per step
        self.sums, self.seen = {}, 0
        self.first_non_finite = None  # (iteration, loss value) of the first such step read

    def add(self, iteration, batch, losses, counts):
        """Queue one step: `losses` the loss's dict of scalar tensors (it always names the
        same losses in the same order), `counts` one int64 tensor per metric (its entries
        named by `count_names`)."""
        self.loss_names = list(losses)
        parts = [losses[name].reshape([1]).astype("float64") for name in self.loss_names]
        parts += [c.reshape([-1]).astype("float64") for c in counts]
        self._pending.append((iteration, batch, paddle.concat(parts)))

    def read(self):
        """Bring every queued step to the host in one transfer and add it to the sums."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = paddle.stack([row for _, _, row in pending]).numpy()
        for (iteration, batch, _), row in zip(pending, rows):
            values = dict(zip(self.loss_names, (float(v) for v in row)))
            loss = values["loss"]
            if not math.isfinite(loss) and self.first_non_finite is None:
                self.first_non_finite = (iteration, loss)
            count_row = row[len(self.loss_names):]
            values.update({k: int(c) / batch for k, c in zip(self.count_names, count_row)})
            for key, value in values.items():
                self.sums[key] = self.sums.get(key, 0.0) + value * batch
            self.seen += batch

    def averages(self):
        return {k: v / self.seen for k, v in self.sums.items()}


class IntervalTimer:
    """Mean batch_cost and reader_cost per iteration since the last lap. A step's time is
    known only once the host has waited for the device, at a log step, so timings are
    averages over the steps between two log lines."""

    def __init__(self):
        self.start = self.step_end = time.time()
        self.steps, self.reading = 0, 0.0

    def loaded(self):
        """A step's batch is here: the step counts in the current interval."""
        self.reading += time.time() - self.step_end
        self.steps += 1

    def step_done(self):
        self.step_end = time.time()

    def lap(self):
        """(batch_cost, reader_cost) per step since the last lap, this step included."""
        now, steps = time.time(), max(self.steps, 1)
        costs = ((now - self.start) / steps, self.reading / steps)
        self.start, self.steps, self.reading = now, 0, 0.0
        return costs
