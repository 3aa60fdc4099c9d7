"""A user's own script, as plain as it gets: import paddle first, then ppcls, no variables
set in the shell. Prints MnasNet-B1 x1.0 dygraph batch-1 latency (median of 30) and training
images/s (5 steps of batch 16 at 224). Run from the repository root:

    python log/benchmark/library_path.py
"""
import os
import statistics
import sys
import time

import paddle

sys.path.insert(0, os.getcwd())
from ppcls.arch import build_model  # noqa: E402

model = build_model({"Arch": {"name": "MnasNet_B1_x1_0", "class_num": 1000}})
model.eval()
x = paddle.randn([1, 3, 224, 224])
with paddle.no_grad():
    for _ in range(5):
        model(x)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        model(x).numpy()
        times.append((time.perf_counter() - start) * 1000)
print(f"dygraph b1: {statistics.median(times):.1f} ms")

model.train()
optimizer = paddle.optimizer.Momentum(0.01, parameters=model.parameters())
images, labels = paddle.randn([16, 3, 224, 224]), paddle.randint(0, 1000, [16])


def step():
    loss = paddle.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()


step()
step()
start = time.perf_counter()
for _ in range(5):
    step()
print(f"train b16: {16 * 5 / (time.perf_counter() - start):.1f} img/s")
