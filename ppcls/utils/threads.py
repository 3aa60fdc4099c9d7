"""CPU threading and math-library defaults: the one place they are chosen. `import ppcls`
applies them (ppcls/__init__.py calls `apply_cpu_defaults`), so tools, notebooks and users'
own scripts get the same speed; no other code sets them.

- OpenMP threads: the cores this process may use (its CPU affinity and its cgroup's CPU
  quota, as in a container), divided by the training processes on this node
  (`PADDLE_LOCAL_SIZE`, set by paddle.distributed.launch; not the world size, which
  counts every node). Without it, every process of a multi-process CPU run would start one
  thread per core of the host and oversubscribe it.
- MKL_DEBUG_CPU_TYPE=5 on AMD CPUs with AVX2: the MKL build inside Paddle's CPU wheel picks
  its slow generic GEMM on any CPU whose vendor is not Intel; this variable makes it take
  the AVX2 path (it is not needed, and not set, on Intel). Paddle's dygraph convolutions
  and matmuls are MKL GEMMs: on the 2-core AMD EPYC here MnasNet-B1 dygraph inference at
  batch 1 went from about 30 to 16 ms.

When they are applied, and why then: right after Paddle's own import, before its first
operation. Paddle's import (paddle/base/__init__.py, `__bootstrap__`) prints a warning to
stderr whenever OMP_NUM_THREADS is above 1 at that moment, and sets it to 1 when it is
unset; but OpenMP and MKL read their variables only at their first use, after the import.
So `import ppcls` reads nothing and sets nothing: it arranges (`_AfterPaddleImport`) for
OMP_NUM_THREADS and MKL_DEBUG_CPU_TYPE to be set as soon as `import paddle` completes,
wherever that import happens. If Paddle was imported before ppcls, the MKL variable is
still set (MKL loads at the first matrix product; if it already has, one warning says what
that costs) and the thread count is left as Paddle set it.

Values already in the environment always win. (GOMP_SPINCOUNT=0 used to be set here: the
depthwise kernel's GNU OpenMP threads spun against MKL's Intel OpenMP threads. The kernel
now runs on MKL's runtime, see ppcls/ops/depthwise_conv, and the variable is not needed.)
"""

import importlib.abc
import importlib.util
import math
import os
import sys
import warnings

_arranged = False


def apply_cpu_defaults():
    """What `import ppcls` runs, once: the defaults above, now when Paddle is already
    loaded, else as soon as it is imported. Cheap: reads no file before Paddle comes."""
    global _arranged
    if _arranged:
        return
    _arranged = True
    if "paddle" in sys.modules:
        _select_mkl_code_path()
    else:
        sys.meta_path.insert(0, _AfterPaddleImport())


def set_default_threads():
    """The defaults applied (as `import ppcls` does); returns the OpenMP threads this process
    uses, or will use once Paddle is imported."""
    apply_cpu_defaults()
    return default_threads()


def default_threads():
    """OMP_NUM_THREADS when set, else this node's share of the usable cores."""
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"] or usable_cores())
    return node_share()


def node_share():
    return max(1, usable_cores() // processes_on_this_node())


def _after_paddle_import(omp_given):
    _select_mkl_code_path()
    if not omp_given:  # what is there now is Paddle's own default of 1, not the user's
        os.environ["OMP_NUM_THREADS"] = str(node_share())


class _AfterPaddleImport(importlib.abc.MetaPathFinder):
    """Finds `paddle` with the other finders and runs `_after_paddle_import` once its
    module has executed (one time, then it leaves sys.meta_path). Whether OMP_NUM_THREADS
    was given is noted as the import starts, before Paddle sets it."""

    def find_spec(self, name, path=None, target=None):
        if name != "paddle":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenApply(spec.loader, omp_given="OMP_NUM_THREADS" in os.environ)
        return spec


class _ThenApply(importlib.abc.Loader):
    def __init__(self, loader, omp_given):
        self.loader, self.omp_given = loader, omp_given

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _after_paddle_import(self.omp_given)


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
