"""Exponential moving average of a model's weights and BN statistics."""

import paddle

from ppcls.engine.replicas import named_state_tensors


class ModelEMA:
    """`model` is a second instance of the network that holds the average:
    ema = decay * ema + (1 - decay) * weights, after every optimizer step.

    The update runs once per step on every tensor, so it is written for a GPU: it pairs the
    tensors once (never calling state_dict(), which AMP O2's decorate hooks with a cast of
    every tensor), and moves each average in place with one lerp kernel,
    ema + (1 - decay) * (weights - ema), whose weight lives on the device (a Python float
    would be copied to the device at every call). O2's float16 weights take one cast more."""

    def __init__(self, model, source, decay):
        self.model, self.decay = model, float(decay)
        self.model.set_state_dict(source.state_dict())
        self.model.eval()
        for param in self.model.parameters():
            param.stop_gradient = True
        self._source, self._pairs, self._copies, self._weight = None, [], [], None

    def _pair_with(self, source):
        """(average, weights) pairs by name; parameters keep their identity when O2's
        decorate casts them, so the pairs hold for the whole run."""
        current = dict(named_state_tensors(source))
        self._pairs, self._copies = [], []
        for name, average in named_state_tensors(self.model):
            pairs = self._pairs if paddle.is_floating_point(average) else self._copies
            pairs.append((average, current[name]))
        self._weight = paddle.full([], 1.0 - self.decay, dtype="float32")
        self._source = source

    @paddle.no_grad()
    def update(self, source):
        if source is not self._source:
            self._pair_with(source)
        for average, value in self._pairs:
            if value.dtype != average.dtype:
                value = value.astype(average.dtype)
            average.lerp_(value, self._weight)
        for average, value in self._copies:
            average.copy_(value, False)

    def state_dict(self):
        return self.model.state_dict()

    def set_state_dict(self, state):
        self.model.set_state_dict(state)
