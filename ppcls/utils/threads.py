"""CPU threading and math-library defaults, set before Paddle is imported (OpenMP and MKL
read them once, when they load).

- OMP_NUM_THREADS: the cores this process may use (its CPU affinity and its cgroup's CPU
  quota, as in a container), divided by the training processes on this node
  (`PADDLE_LOCAL_SIZE`, set by paddle.distributed.launch; not the world size, which
  counts every node). Without it, every process of a multi-process CPU run would start one
  thread per core of the host and oversubscribe it.
- GOMP_SPINCOUNT=0: OpenMP threads sleep as soon as a parallel region ends instead of
  spinning. Paddle runs two OpenMP runtimes (GNU for oneDNN and our depthwise kernel, Intel
  for others); spinning threads of one steal the cores the other needs next. Measured on 2
  cores, MnasNet-B1 dygraph inference at batch 1 took 125 ms with spinning, 41 ms without.
- MKL_DEBUG_CPU_TYPE=5 on AMD CPUs with AVX2: the MKL build inside Paddle's CPU wheel picks
  its slow generic GEMM on any CPU whose vendor is not Intel; this variable makes it take
  the AVX2 path (it is not needed, and not set, on Intel). Paddle's dygraph convolutions
  and matmuls are MKL GEMMs: on the 2-core AMD EPYC here a 336x784x56 GEMM went from
  about 24 to 80 GFLOP/s on one thread, and MnasNet-B1 x1.3 batch-1 inference from 48 to
  33 ms.
Values already in the environment always win.
"""

import math
import os


def set_default_threads():
    os.environ.setdefault("GOMP_SPINCOUNT", "0")
    if _amd_with_avx2():
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    threads = max(1, usable_cores() // processes_on_this_node())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def processes_on_this_node(environ=os.environ):
    """Training processes sharing this machine: launch's PADDLE_LOCAL_SIZE; launchers that
    only set the world size (PADDLE_TRAINERS_NUM) run one node."""
    size = environ.get("PADDLE_LOCAL_SIZE") or environ.get("PADDLE_TRAINERS_NUM") or "1"
    return max(1, int(size))


def usable_cores(cgroup_root="/sys/fs/cgroup"):
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota
    (`docker --cpus`, Kubernetes limits), rounded up to whole cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_cpu_quota(root):
    """CPUs allowed by the cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us`); None when unlimited or unknown."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def cpu_info(path="/proc/cpuinfo"):
    """(vendor_id, set of flags) of the first processor listed in cpuinfo; ("", set())
    where there is no such file (not Linux)."""
    vendor, flags = "", None
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "flags" and flags is None:
                    flags = set(value.split())
                if vendor and flags is not None:
                    break
    except OSError:
        pass
    return vendor, flags or set()


def _amd_with_avx2(cpuinfo="/proc/cpuinfo"):
    """True on an AMD x86 CPU that has AVX2 (elsewhere MKL keeps its own choice)."""
    vendor, flags = cpu_info(cpuinfo)
    return vendor == "AuthenticAMD" and "avx2" in flags
