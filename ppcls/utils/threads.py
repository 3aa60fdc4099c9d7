"""Default CPU thread count, set before Paddle is imported (OpenMP reads it once).

Without it, every process of a multi-process CPU run would start one thread per core and
they would oversubscribe the machine. An explicit OMP_NUM_THREADS always wins.
"""

import os


def set_default_threads():
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    processes = max(1, int(os.environ.get("PADDLE_TRAINERS_NUM", "1")))
    threads = max(1, (os.cpu_count() or 1) // processes)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
