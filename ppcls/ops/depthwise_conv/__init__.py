"""A fast CPU depthwise convolution for dygraph training and inference.

Paddle's built-in CPU kernel for depthwise convolutions is several times slower than
PyTorch's, and MnasNet is made of them. `depthwise_conv2d` runs our kernel
(depthwise_conv.cc, a Paddle custom operator) when it applies: dynamic mode, a CPU
tensor, float32, one square filter per channel, no bias. Anything else (GPU, static graphs
and exported models, other shapes) goes to `paddle.nn.functional.conv2d`, so exported
inference models never depend on the custom operator.

The operator is compiled on first use with `paddle.utils.cpp_extension.load` (one log line
says so, one how long it took) and cached in the cache's `ops` folder (ppcls/utils/cache.py,
e.g. ~/.cache/ppcls/ops), keyed by the source, Paddle's version and the compiler flags;
later runs register the cached library with Paddle directly, without Paddle's `load` (which
starts a `setup.py build` child process to check it, about two seconds, every time). If it
cannot be built, one warning says why and the built-in kernel is used.
PPCLS_DEPTHWISE_CONV=builtin turns it off.
"""

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings

import paddle
import paddle.nn.functional as F
from paddle import _C_ops

from ppcls.utils import logger
from ppcls.utils.cache import cache_dir
from ppcls.utils.threads import cpu_info

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "depthwise_conv.cc")
NAME = "ppcls_depthwise_conv"  # the library's
OP_NAME = "ppcls_depthwise_conv2d"  # the operator's (PD_BUILD_OP in depthwise_conv.cc)
BUILD_LAYOUT = "source copied into the build folder"  # part of the cache key

_lock = threading.Lock()
_module = None  # True once the op is registered, False after a failed build
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
        key = hashlib.sha256(f.read() + paddle.__version__.encode() + " ".join(flags).encode()
                             + BUILD_LAYOUT.encode()).hexdigest()[:16]
    return os.path.join(cache_dir("ops"), f"depthwise_conv-{key}")


def _library(directory):
    return os.path.join(directory, NAME, f"{NAME}.so")


def _build_or_load():
    """Compile (once per cache key; processes wait on a file lock) or load the op, which is
    then registered with Paddle under OP_NAME."""
    flags, ldflags = compiler_flags(), link_flags()
    directory = _build_directory(flags + ldflags)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # ranks of one job starting together build once
        if not _registered(_library(directory)):
            _compile(directory, flags, ldflags)
    return True


def _registered(library):
    """Registers a library built before; False when there is none, or it is not loadable
    (a build killed while linking): it is then built again."""
    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op

    if not os.path.isfile(library):
        return False
    try:
        load_op_meta_info_and_register_op(library)
    except Exception:  # noqa: BLE001 - whatever is wrong with it, a rebuild replaces it
        os.remove(library)
        return False
    return True


def _compile(directory, flags, ldflags):
    """Paddle's `load` builds the op in a `setup.py build` child process and registers it.
    The source is copied into the build folder first: Paddle rebuilds whenever the source
    path it recorded changes, which would happen on every switch between two checkouts
    sharing the cache. What Paddle and the child print (its progress line, its logger, the
    child's import warnings) is replaced by our two lines; a failed build's output becomes
    part of the one warning `custom_op` gives."""
    from paddle.utils.cpp_extension import load

    source = _source_copy(directory)
    logger.info("building the fast CPU depthwise convolution kernel in %s (first use with "
                "this Paddle and these compiler flags; later runs load it)", directory)
    start = time.monotonic()
    failure = None
    with _build_output_kept() as output:
        try:
            load(name=NAME, sources=[source], extra_cxx_cflags=flags, extra_ldflags=ldflags,
                 build_directory=directory, verbose=False)
        except Exception as err:  # noqa: BLE001 - whatever failed, the compiler's words say why
            failure = err
    if failure is not None:
        errors = [line.strip() for line in output.getvalue().splitlines() if "error" in line]
        said = f"; the compiler said: {' | '.join(errors[:3])[:500]}" if errors else ""
        raise RuntimeError(f"{str(failure).strip()[:300]}{said}")
    logger.info("built the depthwise convolution kernel in %.1f s", time.monotonic() - start)


@contextlib.contextmanager
def _build_output_kept():
    """Collects what the build writes: to this process's stdout and stderr (file
    descriptors 1 and 2, which the build's child process inherits), through Python's
    sys.stdout, and to Paddle's cpp_extension log."""
    collected = io.StringIO()
    paddle_log = logging.getLogger("utils.cpp_extension")
    level = paddle_log.level
    paddle_log.setLevel(logging.WARNING)
    try:
        with _descriptors_into(collected), contextlib.redirect_stdout(collected):
            yield collected
    finally:
        paddle_log.setLevel(level)


@contextlib.contextmanager
def _descriptors_into(collected):
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no such descriptors to catch (a daemon): nothing reaches a console
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for fd, original in enumerate(saved, start=1):
                os.dup2(original, fd)
                os.close(original)
            sink.seek(0)
            collected.write(sink.read().decode(errors="replace"))


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
    """True once the op is registered, or None (with one warning) when it cannot be built."""
    global _module
    if _module is None:
        with _lock:
            if _module is None:
                try:
                    _module = _build_or_load()
                except Exception as err:  # noqa: BLE001 - any build failure means fallback
                    _module = False
                    warnings.warn(f"ppcls: could not build the fast CPU depthwise convolution "
                                  f"({type(err).__name__}: {str(err).strip()[:800]}); using "
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
        registered = custom_op()
        if registered is not None:
            return _C_ops._run_custom_op(OP_NAME, x, weight, stride, padding, dilation)[0]
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
