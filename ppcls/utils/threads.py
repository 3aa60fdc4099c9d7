"""CPU threading defaults, set before Paddle is imported (OpenMP reads them once).

- OMP_NUM_THREADS: cores divided by processes. Without it, every process of a
  multi-process CPU run would start one thread per core and oversubscribe the machine.
- GOMP_SPINCOUNT=0: OpenMP threads sleep as soon as a parallel region ends instead of
  spinning. Paddle runs two OpenMP runtimes (GNU for oneDNN and our depthwise kernel, Intel
  for others); spinning threads of one steal the cores the other needs next. Measured on 2
  cores, MnasNet-B1 dygraph inference at batch 1 took 125 ms with spinning, 41 ms without.
Values already in the environment always win.
"""

import os


def set_default_threads():
    os.environ.setdefault("GOMP_SPINCOUNT", "0")
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    processes = max(1, int(os.environ.get("PADDLE_TRAINERS_NUM", "1")))
    threads = max(1, (os.cpu_count() or 1) // processes)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
