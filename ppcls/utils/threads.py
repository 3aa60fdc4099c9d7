"""CPU threading and math-library defaults. `import ppcls` applies them (ppcls/__init__.py),
so tools, notebooks and users' own scripts get the same speed.

- OMP_NUM_THREADS: the cores this process may use (its CPU affinity and its cgroup's CPU
  quota, as in a container), divided by the training processes on this node
  (`PADDLE_LOCAL_SIZE`, set by paddle.distributed.launch; not the world size, which
  counts every node). Without it, every process of a multi-process CPU run would start one
  thread per core of the host and oversubscribe it. OpenMP reads it when Paddle loads, so
  it is set only when ppcls is imported first.
- MKL_DEBUG_CPU_TYPE=5 on AMD CPUs with AVX2: the MKL build inside Paddle's CPU wheel picks
  its slow generic GEMM on any CPU whose vendor is not Intel; this variable makes it take
  the AVX2 path (it is not needed, and not set, on Intel). Paddle's dygraph convolutions
  and matmuls are MKL GEMMs: on the 2-core AMD EPYC here MnasNet-B1 dygraph inference at
  batch 1 went from about 30 to 16 ms. Paddle loads MKL at its first matrix product and
  MKL reads the variable then, so it still works when Paddle was imported before ppcls;
  if MKL is already loaded without it, one warning says what it costs.
Values already in the environment always win. (GOMP_SPINCOUNT=0 used to be set here: the
depthwise kernel's GNU OpenMP threads spun against MKL's Intel OpenMP threads. The kernel
now runs on MKL's runtime, see ppcls/ops/depthwise_conv, and the variable is not needed.)
"""

import math
import os
import sys
import warnings


def set_default_threads():
    """Applies the defaults above; returns the OpenMP threads this process will use."""
    _select_mkl_code_path()
    if "OMP_NUM_THREADS" in os.environ or "paddle" in sys.modules:
        return int(os.environ.get("OMP_NUM_THREADS") or usable_cores())
    threads = max(1, usable_cores() // processes_on_this_node())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def _select_mkl_code_path():
    if "MKL_DEBUG_CPU_TYPE" in os.environ or not _amd_with_avx2():
        return
    if not mkl_loaded():
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
        return
    warnings.warn("ppcls: Paddle's MKL was loaded before ppcls could set MKL_DEBUG_CPU_TYPE=5, so "
                  "on this AMD CPU its matrix products take a slow generic path (dygraph "
                  "convolutions about 2x slower). Import ppcls before running Paddle operations, "
                  "or set MKL_DEBUG_CPU_TYPE=5 in the environment.", stacklevel=3)


def mkl_loaded(maps="/proc/self/maps"):
    """Whether this process has already loaded MKL (Paddle loads it on first use)."""
    try:
        with open(maps) as f:
            return "libmklml" in f.read()
    except OSError:
        return False


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
