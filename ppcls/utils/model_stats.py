"""Parameter and multiply-add counts, the way torchvision and the TF release count them:
convolution and fully connected multiply-adds; BN, activations and additions excluded."""

import numpy as np
import paddle
import paddle.nn as nn


def count_params(model):
    """Trainable parameters (Paddle keeps BN running statistics as non-trainable ones)."""
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


def count_macs(model, size=224, channels=3):
    """Multiply-adds of one forward pass on a 1 x channels x size x size input."""
    total = [0]

    def conv_hook(layer, inputs, output):
        _, _, kh, kw = layer.weight.shape  # [out, in / groups, kh, kw]
        total[0] += int(np.prod(output.shape[1:])) * layer.weight.shape[1] * kh * kw

    def linear_hook(layer, inputs, output):
        total[0] += int(np.prod(layer.weight.shape))

    hooks = []
    for layer in model.sublayers():
        if isinstance(layer, nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([1, channels, size, size]))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total[0]
