"""Counts what per-step work launches on MnasNet-B1 x1.0, with the state_dict hooks that AMP
O2's `paddle.amp.decorate(..., save_dtype="float32")` registers on every sublayer (added here
as decorate adds them: on a CPU decorate itself returns without acting). Each operator is a
kernel launch on a GPU. Uses Paddle's profiler on CPU. Run from the repository root:

    python log/benchmark/ema_operators.py
"""
import collections
import os
import sys

import paddle
import paddle.profiler as profiler
from paddle.amp.auto_cast import StateDictHook

sys.path.insert(0, os.getcwd())
from ppcls.arch import build_model  # noqa: E402
from ppcls.engine.ema import ModelEMA  # noqa: E402


def operators(work):
    """Operator name -> how many times `work()` ran it."""
    counts = collections.Counter()

    def walk(node):
        for child in node.children_node:
            if child.type == profiler.TracerEventType.Operator:
                counts[child.name.replace(" dygraph", "")] += 1
            else:
                walk(child)

    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda p: None)
    prof.start()
    work()
    prof.stop()
    for root in prof.profiler_result.get_data().values():
        walk(root)
    return counts


def show(what, counts):
    print(f"{what}: {sum(counts.values())} operators {dict(counts.most_common(4))}")


arch = {"Arch": {"name": "MnasNet_B1_x1_0", "class_num": 1000}}
model = build_model(arch)
ema = ModelEMA(build_model(arch), model, 0.9999)
for layer in model.sublayers(include_self=True):
    layer.register_state_dict_hook(StateDictHook("float32"))
ema.update(model)  # pairs the tensors once


@paddle.no_grad()
def update_before_issue_23():
    """ModelEMA.update as it was: state_dict() of both models, then a formula per tensor."""
    current = model.state_dict()
    for name, average in ema.model.state_dict().items():
        value = current[name]
        average.set_value(average * ema.decay + value.astype(average.dtype) * (1 - ema.decay))


show("one state_dict() of the hooked model", operators(model.state_dict))
show("one EMA update before issue 23", operators(update_before_issue_23))
show("one EMA update now (ppcls/engine/ema.py)", operators(lambda: ema.update(model)))
