"""The model zoo: registry, variant records, sizes, arguments, shapes, training step and
export."""

import ast
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ppcls.arch import available_models, build_model
from ppcls.arch.backbone.model_zoo import mnasnet
from ppcls.arch.backbone.model_zoo.mnasnet.variants import (
    TIMM, TORCHVISION, VARIANT_BY_NAME, VARIANTS)
from ppcls.arch.registry import get_model_builder
from ppcls.utils.errors import ConfigError
from ppcls.utils.model_stats import count_macs, count_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_VARIANTS = [v.name for v in VARIANTS]


def small_model(name, **kwargs):
    paddle.seed(0)
    return build_model({"Arch": {"name": name, "class_num": 10, **kwargs}})


def test_every_registered_name_resolves_to_its_record():
    assert sorted(VARIANT_BY_NAME) == available_models()
    for name, variant in VARIANT_BY_NAME.items():
        assert get_model_builder(name).variant is variant
        assert getattr(mnasnet, variant.name) is get_model_builder(name)
    assert {v.arch for v in VARIANTS} == set(mnasnet.ARCHITECTURES)
    # Each builder is assigned by name in the source, where editors and type checkers look.
    tree = ast.parse(inspect.getsource(mnasnet))
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert {v.name for v in VARIANTS} <= assigned


def test_variant_records_agree_with_their_sources():
    for v in VARIANTS:
        published = {(p.source, p.model): p for p in v.published}
        for w in v.weights:
            assert w.source in v.twins and w.url.startswith("https://")
            if w.source == "timm":  # hub repository timm/<model>.<tag>, accuracy in timm's csv
                assert w.name.startswith(v.twins["timm"] + ".") and (TIMM, w.name) in published
            else:  # the file name carries the digest's first digits; metadata counts params
                assert f"-{w.sha256_prefix}." in w.url
                assert published[TORCHVISION, v.twins["torchvision"]].params_m * 1e6 == \
                    pytest.approx(v.ref_params)
            assert w.sha256 is None or re.fullmatch("[0-9a-f]{64}", w.sha256)


def test_tools_read_the_records_without_paddle():
    code = ("import sys; from tools.benchmark import variant_records; "
            "assert variant_records().VARIANTS; assert 'paddle' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.ref_params], ids=lambda v: v.name)
def test_parameter_count_equals_reference(variant):
    assert count_params(build_model({"Arch": {"name": variant.name}})) == variant.ref_params


def test_reproduction_names_alias_b1_variants():
    for alias, canonical in [("mnasnet0_5", "MnasNet_B1_x0_5"), ("mnasnet0_75", "MnasNet_B1_x0_75"),
                             ("mnasnet1_0", "MnasNet_B1_x1_0"), ("mnasnet1_3", "MnasNet_B1_x1_3")]:
        assert alias in available_models()
        a = build_model({"Arch": {"name": alias}})
        b = build_model({"Arch": {"name": canonical}})
        assert {k: v.shape for k, v in a.state_dict().items()} == \
               {k: v.shape for k, v in b.state_dict().items()}


def test_unknown_name_lists_available_models():
    with pytest.raises(ConfigError) as err:
        build_model({"Arch": {"name": "MnasNet_B2"}})
    message = str(err.value)
    assert "MnasNet_B2" in message and "MnasNet_A1_x1_0" in message and "mnasnet1_0" in message


def test_unknown_arch_argument_is_named():
    with pytest.raises(ConfigError, match="Arch.clas_num"):
        build_model({"Arch": {"name": "MnasNet_small", "clas_num": 10}})


def test_class_num_sets_classifier_width():
    model = small_model("MnasNet_B1_x0_5")
    assert model.fc.weight.shape == [1280, 10]
    assert model(paddle.randn([2, 3, 64, 64])).shape == [2, 10]


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (96, 80)])
def test_any_input_size(size):
    model = small_model("MnasNet_A1_x0_5")
    model.eval()
    assert model(paddle.randn([1, 3, *size])).shape == [1, 10]


def _first_block_output(model, x):
    """Outputs of the first block's projection BN and of the block itself."""
    seen = {}
    block = model.blocks[0][0]
    hooks = [block.project.bn.register_forward_post_hook(lambda l, i, o: seen.__setitem__("bn", o)),
             block.register_forward_post_hook(lambda l, i, o: seen.__setitem__("block", o))]
    model(x)
    for hook in hooks:
        hook.remove()
    return seen["bn"].numpy(), seen["block"].numpy()


@pytest.mark.parametrize("name", ["MnasNet_B1_x0_5", "MnasNet_A1_x0_5"])
def test_stem_relu_follows_the_stem_projection_bn(name):
    x = paddle.randn([2, 3, 32, 32])
    with_relu = small_model(name, stem_relu=True)
    without = small_model(name, stem_relu=False)
    without.set_state_dict(with_relu.state_dict())
    with_relu.eval(), without.eval()

    bn_out, block_out = _first_block_output(with_relu, x)
    assert (bn_out < 0).any()  # so the ReLU has something to remove
    np.testing.assert_array_equal(block_out, np.maximum(bn_out, 0))

    bn_out, block_out = _first_block_output(without, x)
    np.testing.assert_array_equal(block_out, bn_out)
    a, b = with_relu(x).numpy(), without(x).numpy()  # tiny at init: compare relatively
    assert np.abs(a - b).max() > 1e-2 * np.abs(b).max()


def test_bn_momentum_and_epsilon_reach_every_batchnorm():
    model = small_model("MnasNet_small", bn_momentum=0.99, bn_epsilon=1e-3)
    bns = [l for l in model.sublayers() if isinstance(l, paddle.nn.BatchNorm2D)]
    assert len(bns) > 40
    assert all(bn._momentum == 0.99 and bn._epsilon == 1e-3 for bn in bns)
    # Functionally: one training forward moves the stem's running mean by 1 - momentum.
    model.train()
    x = paddle.randn([4, 3, 32, 32])
    stem_out = model.stem.bn
    seen = {}
    hook = model.stem.conv.register_forward_post_hook(lambda l, i, o: seen.__setitem__("c", o))
    model(x)
    hook.remove()
    batch_mean = seen["c"].numpy().mean(axis=(0, 2, 3))
    np.testing.assert_allclose(stem_out._mean.numpy(), 0.01 * batch_mean, rtol=1e-4, atol=1e-6)


def test_dropout_argument_reaches_classifier():
    assert small_model("MnasNet_B1_x0_5", dropout=0.5).dropout.p == 0.5


def test_initialisation_follows_torchvision():
    model = build_model({"Arch": {"name": "MnasNet_B1_x1_0"}})
    head = model.head.conv.weight.numpy()  # [1280, 320, 1, 1]: std sqrt(2 / 1280)
    assert abs(head.std() - np.sqrt(2 / 1280)) / np.sqrt(2 / 1280) < 0.02
    bound = np.sqrt(3 / 1000)
    fc = model.fc.weight.numpy()
    assert np.abs(fc).max() <= bound and np.abs(fc).max() > 0.95 * bound
    assert not model.fc.bias.numpy().any()


def test_macs_match_torchvision_figure():
    # torchvision reports 0.314 GFLOPS (multiply-adds) for mnasnet1_0 at 224.
    macs = count_macs(build_model({"Arch": {"name": "MnasNet_B1_x1_0"}}), 224)
    assert abs(macs / 1e6 - 314) < 1


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_trains_and_exports_with_dynamic_batch(name, tmp_path):
    model = small_model(name)
    model.train()
    optimizer = paddle.optimizer.Momentum(0.01, parameters=model.parameters())
    x = paddle.randn([4, 3, 64, 64])
    labels = paddle.to_tensor([0, 1, 2, 3])
    loss = paddle.nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    grads = [p.grad for p in model.parameters() if not p.stop_gradient]
    assert all(g is not None for g in grads)
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    optimizer.step()

    model.eval()
    path = str(tmp_path / "inference")
    paddle.jit.save(model, path, input_spec=[
        paddle.static.InputSpec([None, 3, 64, 64], "float32", name="x")])
    loaded = paddle.jit.load(path)
    for batch in (1, 3):
        x = paddle.randn([batch, 3, 64, 64])
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
