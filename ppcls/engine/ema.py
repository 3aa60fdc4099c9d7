"""Exponential moving average of a model's weights and BN statistics."""

import paddle


class ModelEMA:
    """`model` is a second instance of the network that holds the average:
    ema = decay * ema + (1 - decay) * weights, after every optimizer step."""

    def __init__(self, model, source, decay):
        self.model, self.decay = model, float(decay)
        self.model.set_state_dict(source.state_dict())
        self.model.eval()
        for param in self.model.parameters():
            param.stop_gradient = True

    @paddle.no_grad()
    def update(self, source):
        current = source.state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name]
            if paddle.is_floating_point(average):
                average.set_value(average * self.decay + value.astype(average.dtype) * (1 - self.decay))
            else:
                average.set_value(value)

    def state_dict(self):
        return self.model.state_dict()

    def set_state_dict(self, state):
        self.model.set_state_dict(state)
