"""The custom CPU depthwise convolution against Paddle's built-in one."""

import os
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ppcls.arch import build_model
from ppcls.ops import depthwise_conv as dw


def test_the_kernel_builds_here():
    assert dw.custom_op() is not None  # this machine has a compiler: no silent fallback


@pytest.mark.skipif(dw.link_flags() == ["-fopenmp"], reason="this Paddle ships no libiomp5")
def test_the_kernels_threads_are_mkls_threads():
    """Its OpenMP calls must reach MKL's runtime (libiomp5), not GNU's libgomp that Paddle
    also loads: two runtimes' threads spin against each other (ppcls/ops/depthwise_conv)."""
    import subprocess
    import sys

    dw.custom_op()  # built here, so the child only loads it
    code = ("import paddle; from ppcls.ops import depthwise_conv as dw; "
            "dw.depthwise_conv2d(paddle.ones([1, 4, 8, 8]), paddle.ones([4, 1, 3, 3]), padding=1, groups=4)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "LD_DEBUG": "bindings"},
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bindings = [line for line in done.stderr.splitlines()
                if "ppcls_depthwise_conv" in line and "`GOMP_parallel'" in line]
    assert bindings and all("libiomp5" in line for line in bindings), bindings


# (batch, channels, height, width, kernel, stride, dilation): the models' 3x3 and 5x5 at
# strides 1 and 2, odd and unequal sizes, a filter wider than the input, dilation 2.
SHAPES = [(2, 3, 7, 9, 3, 1, 1), (2, 5, 11, 10, 5, 2, 1), (3, 4, 8, 8, 3, 2, 1),
          (1, 6, 13, 7, 5, 1, 1), (2, 3, 9, 9, 3, 1, 2), (1, 2, 3, 3, 5, 2, 1),
          (4, 16, 14, 14, 3, 2, 1), (2, 8, 15, 15, 5, 2, 1), (1, 4, 1, 1, 3, 1, 1)]


def conv_and_grads(conv, x, weight, grad_out_seed, **kwargs):
    x, weight = x.detach(), weight.detach()
    x.stop_gradient = weight.stop_gradient = False
    out = conv(x, weight, **kwargs)
    grad_out = paddle.to_tensor(np.random.default_rng(grad_out_seed).standard_normal(
        out.shape).astype("float32"))
    grad_x, grad_w = paddle.grad(out, [x, weight], grad_out)
    return out.numpy(), grad_x.numpy(), grad_w.numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_forward_and_gradients_equal_the_builtin_kernel(shape):
    n, c, h, w, k, stride, dilation = shape
    rng = np.random.default_rng(sum(shape))
    x = paddle.to_tensor(rng.standard_normal((n, c, h, w)).astype("float32"))
    weight = paddle.to_tensor(rng.standard_normal((c, 1, k, k)).astype("float32"))
    kwargs = dict(stride=stride, padding=k // 2 * dilation, dilation=dilation, groups=c)
    assert dw.applies(x, weight, None, **kwargs)
    ours = conv_and_grads(dw.depthwise_conv2d, x, weight, 1, **kwargs)
    builtin = conv_and_grads(F.conv2d, x, weight, 1, **kwargs)
    for name, a, b in zip(("output", "input grad", "filter grad"), ours, builtin):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()),
                                   err_msg=name)


def random_cases(count, seed=7):
    """Shapes, kernels 1-7, strides 1-3, dilations 1-2 and paddings 0 to kernel * dilation
    (beyond "same", where the stride-1 input gradient takes its other path)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        k, stride, dilation = int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        pad = int(rng.integers(0, k * dilation + 1))
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        if h + 2 * pad < dilation * (k - 1) + 1 or w + 2 * pad < dilation * (k - 1) + 1:
            continue  # empty output
        cases.append((int(rng.integers(1, 4)), int(rng.integers(1, 9)), h, w, k, stride, pad,
                      dilation))
    return cases


@pytest.mark.parametrize("case", random_cases(16), ids=str)
def test_random_shapes_equal_the_builtin_kernel(case):
    n, c, h, w, k, stride, pad, dilation = case
    rng = np.random.default_rng(sum(case))
    x = paddle.to_tensor(rng.standard_normal((n, c, h, w)).astype("float32"))
    weight = paddle.to_tensor(rng.standard_normal((c, 1, k, k)).astype("float32"))
    kwargs = dict(stride=stride, padding=pad, dilation=dilation, groups=c)
    assert dw.applies(x, weight, None, **kwargs)
    ours = conv_and_grads(dw.depthwise_conv2d, x, weight, 2, **kwargs)
    builtin = conv_and_grads(F.conv2d, x, weight, 2, **kwargs)
    for name, a, b in zip(("output", "input grad", "filter grad"), ours, builtin):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()),
                                   err_msg=name)


def test_filter_gradient_matches_finite_differences():
    """Independent of Paddle's kernel: central differences of sum(out * g)."""
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((2, 3, 6, 5)).astype("float32"))
    weight = rng.standard_normal((3, 1, 3, 3)).astype("float32")
    conv = dict(stride=2, padding=1, groups=3)
    _, _, analytic = conv_and_grads(dw.depthwise_conv2d, x, paddle.to_tensor(weight), 5, **conv)
    g = np.random.default_rng(5).standard_normal((2, 3, 3, 3)).astype("float32")  # as above

    def objective(wt):
        out = dw.depthwise_conv2d(x, paddle.to_tensor(wt), **conv).numpy()
        return float((out.astype("float64") * g).sum())

    eps = 1e-2
    numeric = np.zeros(weight.shape)
    for idx in np.ndindex(weight.shape):
        plus, minus = weight.copy(), weight.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (objective(plus) - objective(minus)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-3)


def test_other_calls_take_the_builtin_path():
    x = paddle.randn([1, 4, 8, 8])
    weight = paddle.randn([4, 1, 3, 3])
    args = dict(stride=1, padding=1, dilation=1, groups=4)
    assert dw.applies(x, weight, None, **args)
    assert not dw.applies(x, weight, paddle.zeros([4]), **args)  # bias
    assert not dw.applies(x.astype("float64"), weight.astype("float64"), None, **args)
    assert not dw.applies(x, paddle.randn([4, 1, 3, 5]), None, **args)  # not square
    assert not dw.applies(paddle.randn([1, 8, 8, 8]), paddle.randn([8, 2, 3, 3]), None,
                          **dict(args, groups=4))  # grouped, not depthwise
    assert not dw.applies(x, weight, None, **dict(args, stride=[1, 2]))
    with dw.enabled(False):
        assert not dw.applies(x, weight, None, **args)
    assert dw.applies(x, weight, None, **args)  # back on after the block


def test_a_failed_build_warns_once_and_uses_the_builtin_kernel(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(dw, "SOURCE", str(broken))
    monkeypatch.setattr(dw, "_module", None)
    monkeypatch.setenv("PPCLS_CACHE_DIR", str(tmp_path / "cache"))
    x, weight = paddle.randn([1, 4, 6, 6]), paddle.randn([4, 1, 3, 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = dw.depthwise_conv2d(x, weight, stride=1, padding=1, groups=4)
        dw.depthwise_conv2d(x, weight, stride=1, padding=1, groups=4)
    ours = [w for w in caught if "could not build the fast CPU depthwise" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    np.testing.assert_array_equal(first.numpy(), F.conv2d(x, weight, padding=1, groups=4).numpy())


def test_copies_of_the_package_at_other_paths_share_one_build(tmp_path):
    """The repository and an installed copy (or two checkouts) share the cache's build: the
    key is the source's content, not where it lies. (Paddle's `load` recompiles whenever the
    source path it is given differs from the last one built in that folder, so the
    repository and site-packages used to rebuild it in turn, about 10 s each.) Each build
    runs in a process of its own, as two checkouts would: one process cannot load two
    libraries that register the same operator."""
    import subprocess
    import sys

    env = {**os.environ, "PPCLS_CACHE_DIR": str(tmp_path / "cache")}
    build = "import sys; from ppcls.ops import depthwise_conv as dw; dw.SOURCE = sys.argv[1]; dw._build_or_load()"
    stats = []
    for name in ("checkout", "site-packages"):
        copy = tmp_path / name / "depthwise_conv.cc"
        copy.parent.mkdir()
        copy.write_bytes(open(dw.SOURCE, "rb").read())
        subprocess.run([sys.executable, "-c", build, str(copy)], env=env, check=True,
                       capture_output=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        built = list((tmp_path / "cache").rglob("ppcls_depthwise_conv.so"))
        assert len(built) == 1
        stats.append((os.stat(built[0]).st_ino, os.stat(built[0]).st_mtime_ns))
    assert stats[1] == stats[0]


def train_step_grads(model, images, labels):
    paddle.seed(11)  # the same dropout mask both times
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()
             if p.grad is not None}
    model.clear_gradients()
    return float(loss), grads


@pytest.mark.parametrize("name", ["MnasNet_B1_x0_5", "MnasNet_A1_x0_5"])
def test_a_training_step_gives_the_same_loss_and_gradients(name):
    paddle.seed(3)
    model = build_model({"Arch": {"name": name, "class_num": 10}})
    model.train()
    images = paddle.randn([4, 3, 64, 64])
    labels = paddle.to_tensor([1, 4, 7, 9])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ours = train_step_grads(model, images, labels)
    model.set_state_dict(state)  # BN running statistics moved; the step itself did not
    with dw.enabled(False):
        builtin = train_step_grads(model, images, labels)
    assert ours[0] == pytest.approx(builtin[0], rel=1e-5)
    assert ours[1].keys() == builtin[1].keys()
    # Float32 sums in another order, amplified through ~50 layers and BatchNorm over a
    # batch of 4: within 0.1% overall (L2), and per tensor within 1% or 0.1% of the
    # largest gradient (some, like BN biases before another BN, are rounding noise near 0).
    flat_ours = np.concatenate([ours[1][k].ravel() for k in builtin[1]])
    flat_builtin = np.concatenate([g.ravel() for g in builtin[1].values()])
    scale = np.abs(flat_builtin).max()
    for key, grad in builtin[1].items():
        np.testing.assert_allclose(ours[1][key], grad, rtol=1e-2, atol=1e-3 * scale,
                                   err_msg=key)
    assert np.linalg.norm(flat_ours - flat_builtin) < 1e-3 * np.linalg.norm(flat_builtin)


def test_exported_models_use_only_builtin_operators(tmp_path):
    model = build_model({"Arch": {"name": "MnasNet_B1_x0_5", "class_num": 10}})
    model.eval()
    path = str(tmp_path / "inference")
    paddle.jit.save(paddle.jit.to_static(
        model, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")]), path)
    program = open(path + ".json").read() if os.path.isfile(path + ".json") else \
        open(path + ".pdmodel", "rb").read().decode(errors="replace")
    assert "depthwise_conv2d" in program and dw.OP_NAME not in program


def test_cpu_benchmark_reports_the_median_round_not_the_best():
    from tools.benchmark_cpu import KERNEL_CASES, median_over_rounds

    kernel = f"ours|{KERNEL_CASES[0][0]}"
    rounds = [{kernel: 30.0, "ours|small": 100.0, "version": "3"},
              {kernel: 50.0, "ours|small": 140.0, "version": "3"},
              {kernel: 40.0, "ours|small": 120.0, "torch_version": "2"}]
    assert median_over_rounds(rounds) == {kernel: 40.0, "ours|small": 120.0, "version": "3",
                                          "torch_version": "2"}


def test_cpu_benchmark_prints_a_table_of_both_paddle_columns(tmp_path, capsys):
    from tools import benchmark_cpu

    out = tmp_path / "cpu.md"
    benchmark_cpu.main(["--names", "MnasNet_small", "--train_sizes", "32", "--batch", "2",
                        "--steps", "1", "--rounds", "1", "--skip_kernels", "--no_torch",
                        "--threads", "2", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| MnasNet_small")]
    assert [row.split(" | ")[0] for row in rows] == ["| MnasNet_small, train b2 @32",
                                                     "| MnasNet_small, dygraph infer b1 @224"]
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert cells[1].endswith(" img/s") and cells[2].endswith(" img/s")
        assert float(cells[4]) > 0 and cells[3] == "-" and cells[5] == "-"
