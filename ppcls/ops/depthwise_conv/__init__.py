"""A fast CPU depthwise convolution for dygraph training and inference.

Paddle's built-in CPU kernel for depthwise convolutions is several times slower than
PyTorch's, and MnasNet is made of them. `depthwise_conv2d` runs our kernel
(depthwise_conv.cc, a Paddle custom operator) when it applies: dynamic mode, a CPU
tensor, float32, one square filter per channel, no bias. Anything else (GPU, static graphs
and exported models, other shapes) goes to `paddle.nn.functional.conv2d`, so exported
inference models never depend on the custom operator.

The operator is compiled on first use with `paddle.utils.cpp_extension.load` and cached
in the cache's `ops` folder (ppcls/utils/cache.py, e.g. ~/.cache/ppcls/ops), keyed by the
source, Paddle's version and the compiler flags. If it cannot be built, one warning says
why and the built-in kernel is used. PPCLS_DEPTHWISE_CONV=builtin turns it off.
"""

import fcntl
import hashlib
import contextlib
import os
import platform
import shutil
import threading
import warnings

import paddle
import paddle.nn.functional as F

from ppcls.utils.cache import cache_dir
from ppcls.utils.threads import cpu_info

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "depthwise_conv.cc")
OP_NAME = "ppcls_depthwise_conv2d"

_lock = threading.Lock()
_module = None  # the loaded op module, False after a failed build
_enabled = os.environ.get("PPCLS_DEPTHWISE_CONV", "custom") != "builtin"


def compiler_flags():
    """-O3 and OpenMP, plus AVX2/FMA when this x86-64 CPU has them (NEON is on by default
    for aarch64). The flags are part of the cache key, so a cache shared between machines
    never runs code a CPU lacks."""
    flags = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=fast"]
    if platform.machine() in ("x86_64", "AMD64"):
        if {"avx2", "fma"} <= cpu_info()[1]:
            flags += ["-mavx2", "-mfma"]
    return flags


def link_flags():
    """Link the kernel's OpenMP to the runtime Paddle's MKL uses (Intel's libiomp5, shipped
    in Paddle's x86 wheels) so that both share one pool of threads. Linked to GNU's libgomp
    instead, its threads and MKL's would spin-wait against each other after every operator:
    on 2 cores MnasNet-B1 dygraph inference took 120-300 ms instead of 17 ms unless
    GOMP_SPINCOUNT=0 was set before Paddle loaded. Builds without libiomp5 use libgomp."""
    libs = os.path.join(os.path.dirname(paddle.__file__), "libs")
    if os.path.isfile(os.path.join(libs, "libiomp5.so")):
        # Listed first, so the kernel's GOMP_* calls bind to libiomp5's compatible entry
        # points before the loader looks in libpaddle's libgomp.
        return [f"-L{libs}", "-Wl,--no-as-needed", "-l:libiomp5.so", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


def _build_directory(flags):
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + paddle.__version__.encode()
                             + " ".join(flags).encode()).hexdigest()[:16]
    return os.path.join(cache_dir("ops"), f"depthwise_conv-{key}")


def _build():
    """Compile (once per cache key; processes wait on a file lock) and load the op."""
    from paddle.utils.cpp_extension import load

    flags, ldflags = compiler_flags(), link_flags()
    directory = _build_directory(flags + ldflags)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # ranks of one job starting together build once
        source = _source_copy(directory)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No ccache found")
            return load(name="ppcls_depthwise_conv", sources=[source],
                        extra_cxx_cflags=flags, extra_ldflags=ldflags,
                        build_directory=directory, verbose=False)


def _source_copy(directory):
    """The source copied into its build directory, compiled from there: Paddle's `load`
    rebuilds whenever the source path differs from the last build's, so the repository
    and an installed copy (or two checkouts) compiling SOURCE in place would take turns
    rebuilding the shared cache entry. The directory's key is the source's content, so
    the copy there never changes once written."""
    copy = os.path.join(directory, os.path.basename(SOURCE))
    if not os.path.isfile(copy):
        shutil.copyfile(SOURCE, copy + ".tmp")
        os.replace(copy + ".tmp", copy)  # a crash mid-copy leaves no truncated source
    return copy


def custom_op():
    """The compiled op module, or None (with one warning) when it cannot be built."""
    global _module
    if _module is None:
        with _lock:
            if _module is None:
                try:
                    _module = _build()
                except Exception as err:  # noqa: BLE001 - any build failure means fallback
                    _module = False
                    warnings.warn(f"ppcls: could not build the fast CPU depthwise convolution "
                                  f"({type(err).__name__}: {str(err).strip()[:300]}); using "
                                  "Paddle's built-in kernel, which is several times slower",
                                  stacklevel=3)
    return _module or None


def prepare():
    """Build or load the kernel now if this process will run it (CPU, not turned off),
    instead of at the first convolution. A process of a multi-process job without images
    to evaluate goes straight to the evaluation's all-reduce, and gloo gives up on a
    collective after a short time: it must not wait there while another process compiles."""
    if _enabled and paddle.get_device() == "cpu":
        custom_op()


@contextlib.contextmanager
def enabled(on):
    """Use (True) or bypass (False) the custom kernel inside the block; the setting before
    it comes back afterwards, however the block ends."""
    global _enabled
    previous, _enabled = _enabled, bool(on)
    try:
        yield
    finally:
        _enabled = previous


def applies(x, weight, bias, stride, padding, dilation, groups):
    """Whether our kernel covers this call; everything else takes the built-in path.
    (Plain ifs: Paddle's bytecode tracer for to_static mis-handles a long `and` chain.)"""
    if not _enabled or not paddle.in_dynamic_mode():
        return False
    if not x.place.is_cpu_place() or x.dtype != paddle.float32:
        return False
    if weight.dtype != paddle.float32 or x.ndim != 4 or bias is not None:
        return False
    if not groups == x.shape[1] == weight.shape[0]:
        return False
    if weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        return False
    return all(isinstance(v, int) for v in (stride, padding, dilation))


def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`F.conv2d` for NCHW inputs, through our kernel where it applies."""
    if applies(x, weight, bias, stride, padding, dilation, groups):
        module = custom_op()
        if module is not None:
            return getattr(module, OP_NAME)(x, weight, stride, padding, dilation)
    return F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                    groups=groups)


class DepthwiseConv2D(paddle.nn.Conv2D):
    """A bias-free K x K depthwise `nn.Conv2D` ("same" padding) that runs through
    `depthwise_conv2d`. Same parameters and state-dict keys as the plain layer."""

    def __init__(self, channels, kernel, stride=1):
        super().__init__(channels, channels, kernel, stride=stride, padding=kernel // 2,
                         groups=channels, bias_attr=False)
        self.stride_, self.padding_ = stride, kernel // 2

    def forward(self, x):
        return depthwise_conv2d(x, self.weight, None, self.stride_, self.padding_, 1,
                                self._groups)
