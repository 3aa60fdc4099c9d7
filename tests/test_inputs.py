"""Inputs a careless or hostile user controls, each fed for real: image bombs, YAML aliases,
huge and non-finite numbers, overlong values, text files that are not UTF-8. Each gives one
line naming the file, key or value, and costs bounded memory and time."""

import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import (QUICK_START, ROOT, config_args, copy_listed_images, digits_overrides,
                      write_png_bomb)
from ppcls.data.dataloader import ImageNetDataset
from ppcls.data.postprocess import read_class_id_map
from ppcls.data.preprocess import build_transforms
from ppcls.utils.cli import run
from ppcls.utils.config import parse_args
from ppcls.utils.yaml_file import load_yaml
from ppcls.utils.errors import ConfigError, DataError
from tools import eval as eval_tool
from tools import train as train_tool


def run_cli(tool, args, capsys):
    code = run(tool.main, parse_args(args))
    return code, capsys.readouterr()


def one_line_error(out):
    """The tool's error line: stderr's last line, the only one starting with 'error: '
    (a warning may come before it), and no traceback."""
    lines = out.err.splitlines()
    assert lines and lines[-1].startswith("error: ") and out.err.count("error: ") == 1, out.err
    assert "Traceback" not in out.err, out.err
    return lines[-1]


# -------------------------------------------------------------- pixel cap
@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_a_png_bomb_is_refused_from_its_header(tmp_path, backend):
    data = open(write_png_bomb(tmp_path / "bomb.png"), "rb").read()
    assert len(data) < 300_000
    decode = build_transforms([{"DecodeImage": {"backend": backend}}], "ops")[0]
    with pytest.raises(ValueError, match=r"12000x12000 pixels .*over the pixel cap of 134217728 "
                                         r".*DecodeImage\.max_pixels.*PPCLS_MAX_IMAGE_PIXELS"):
        decode(data)
    # the cap is the operator's argument, else the environment's, else 2**27
    small = build_transforms([{"DecodeImage": {"backend": backend, "max_pixels": 1000}}], "ops")[0]
    digit = cv2.imencode(".png", np.zeros((40, 30, 3), np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="30x40 pixels .*over the pixel cap of 1000"):
        small(digit)
    assert build_transforms([{"DecodeImage": {"max_pixels": 1200}}], "ops")[0](digit).shape == (40, 30, 3)


def test_the_pixel_cap_comes_from_the_environment_and_bad_values_are_named(monkeypatch):
    from ppcls.data.preprocess import DecodeImage

    monkeypatch.setenv("PPCLS_MAX_IMAGE_PIXELS", "1000")
    assert DecodeImage().max_pixels == 1000
    assert DecodeImage(max_pixels=5000).max_pixels == 5000
    for bad in ("lots", "0", "-3", "1e9"):
        monkeypatch.setenv("PPCLS_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(ConfigError, match="PPCLS_MAX_IMAGE_PIXELS must be an integer"):
            DecodeImage()
    monkeypatch.delenv("PPCLS_MAX_IMAGE_PIXELS")
    with pytest.raises(ConfigError, match="max_pixels must be an integer from 1 to 1073741824"):
        build_transforms([{"DecodeImage": {"max_pixels": 0}}], "ops")


def decode_peak_rss_mb(path, backend):
    """Peak memory of a process that decodes `path` with DecodeImage (any error caught)."""
    code = (f"import resource\n"
            f"from ppcls.data.preprocess.ops.operators import DecodeImage\n"
            f"decode = DecodeImage(backend={backend!r})\n"
            f"try:\n    decode(open({str(path)!r}, 'rb').read())\n"
            f"except ValueError as err:\n    print(err)\n"
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1]) / 1024, done.stdout


@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_refusing_a_bomb_costs_no_memory(tmp_path, backend):
    """A 12000x12000 PNG decodes to 432 MB of RGB; refused from its header, the process
    that read it peaks within a few MB of one that read a 32x32 PNG."""
    bomb = write_png_bomb(tmp_path / "bomb.png")
    small = write_png_bomb(tmp_path / "small.png", 32, 32)
    bomb_mb, said = decode_peak_rss_mb(bomb, backend)
    small_mb, _ = decode_peak_rss_mb(small, backend)
    assert "over the pixel cap" in said
    assert bomb_mb - small_mb < 100, (bomb_mb, small_mb)


@pytest.fixture
def val_with_bomb(digits, tmp_path):
    """20 val images and, listed 6th, a PNG bomb."""
    root = tmp_path / "data"
    lines = (digits / "val_odd.txt").read_text().splitlines()[:20]
    copy_listed_images(digits, lines, root)
    write_png_bomb(root / "bomb.png")
    listed = tmp_path / "val.txt"
    listed.write_text("\n".join(lines[:5] + ["bomb.png 3"] + lines[5:]) + "\n")
    return root, listed


def test_evaluation_stops_at_a_png_bomb_in_one_line(val_with_bomb, tmp_path, capsys):
    root, listed = val_with_bomb
    code, out = run_cli(eval_tool, config_args(digits_overrides(
        root, tmp_path / "out", extra=[f"DataLoader.Eval.dataset.cls_label_path={listed}"])), capsys)
    assert code == 2
    assert re.search(r"^error: cannot use image .*val.txt:6: .*bomb.png: 12000x12000 pixels .*over "
                     r"the pixel cap .*on_bad_image: skip", one_line_error(out)), out.err


def test_evaluation_skips_a_png_bomb_when_told_to(val_with_bomb, tmp_path, capsys):
    root, listed = val_with_bomb
    code, out = run_cli(eval_tool, config_args(digits_overrides(
        root, tmp_path / "out", extra=[f"DataLoader.Eval.dataset.cls_label_path={listed}",
                                       "DataLoader.Eval.dataset.on_bad_image=skip",
                                       "DataLoader.Eval.dataset.max_bad_fraction=0.1"])), capsys)
    assert code == 0, out.err
    assert re.search(r"skipping unreadable image .*val.txt:6: .*bomb.png: 12000x12000 pixels", out.out)
    assert "evaluated 20 of the 21 images listed" in out.out


def test_an_elongated_image_cannot_resize_past_the_pixel_cap(monkeypatch):
    """A 4 x 4000 strip is 16,000 pixels; its short side resized to 256 would be 256,000."""
    monkeypatch.setenv("PPCLS_MAX_IMAGE_PIXELS", "100000")
    resize = build_transforms([{"ResizeImage": {"resize_short": 256}}], "ops")[0]
    with pytest.raises(ValueError, match=r"resizing 4000x4 to 256000x256 .*over the pixel cap of 100000"):
        resize(np.zeros((4, 4000, 3), np.uint8))


# -------------------------------------------------------- operator values
@pytest.mark.parametrize("spec,message", [
    ({"ResizeImage": {"size": 0}}, "ResizeImage: size must be a positive integer or [width, height]"),
    ({"ResizeImage": {"size": [32, -1]}}, "ResizeImage: size must be a positive integer or [width, height]"),
    ({"ResizeImage": {"resize_short": 0}}, "ResizeImage: resize_short must be a positive integer"),
    ({"CropImage": {"size": 0}}, "CropImage: size must be a positive integer"),
    ({"RandCropImage": {"size": -3}}, "RandCropImage: size must be a positive integer"),
    ({"NormalizeImage": {"scale": "1e400"}}, "NormalizeImage: scale must be a finite number, got '1e400'"),
    ({"NormalizeImage": {"scale": float("inf")}}, "NormalizeImage: scale must be a finite number, got inf"),
    ({"NormalizeImage": {"scale": "1/0"}}, "NormalizeImage: scale: '1/0' divides by zero"),
    ({"NormalizeImage": {"scale": 0}}, "NormalizeImage: scale must be positive"),
    ({"NormalizeImage": {"scale": "lots"}}, "NormalizeImage: scale must be a finite number, got 'lots'"),
    ({"NormalizeImage": {"std": [0, 0, 0]}}, "NormalizeImage: std must be 3 finite non-zero numbers"),
    ({"NormalizeImage": {"std": [1e-50, 1, 1]}}, "NormalizeImage: std must be 3 finite non-zero numbers"),
    ({"NormalizeImage": {"mean": [float("nan"), 0, 0]}}, "NormalizeImage: mean must be 3 finite numbers"),
    ({"NormalizeImage": {"mean": ["a", 0, 0]}}, "NormalizeImage: mean must be 3 finite numbers"),
    ({"NormalizeImage": {"scale": 1e38}}, "NormalizeImage: scale 1e+38, mean and std turn pixel values"),
])
def test_operators_refuse_values_that_give_wrong_answers(spec, message):
    with pytest.raises(ConfigError) as caught:
        build_transforms([spec], "ops")
    assert message in str(caught.value), str(caught.value)


def test_a_scale_with_a_huge_exponent_is_refused_at_once():
    """'1e99999999' once meant a 100-million-digit Fraction: minutes of work."""
    with pytest.raises(ConfigError, match="scale must be a finite number, got '1e99999999'"):
        build_transforms([{"NormalizeImage": {"scale": "1e99999999"}}], "ops")
    op = build_transforms([{"NormalizeImage": {"scale": "1.0/255.0"}}], "ops")[0]
    assert op.scale == 1 / 255


# ---------------------------------------------------------- config values
BAD_VALUES = [
    ("Global.epochs=99999999999999999999999", "Global.epochs must be at most 1000000, got an "
     "integer of 23 digits"),
    ("Global.epochs=1" + "0" * 5000, "an integer of 5001 digits is too long"),
    ("Global.save_interval=4294967296", "Global.save_interval must be at most 2147483647"),
    ("Global.seed=-1", "Global.seed must be at least 0"),
    ("Global.seed=99999999999", "Global.seed must be at most 4294967295"),
    ("Global.image_shape=[3,-5,0]", "Global.image_shape must be [3, H, W] with H and W from 1 to "
     "4096, got [3, -5, 0]"),
    ("Global.image_shape=[3,32]", "Global.image_shape must be [3, H, W]"),
    ("Global.image_shape=[1,32,32]", "Global.image_shape must be [3, H, W]"),
    ("Global.image_shape=[3,32,1e9]", "Global.image_shape must be [3, H, W]"),
    ("Arch.class_num=99999999999", "Arch.class_num must be at most 1000000"),
    ("Optimizer.lr.learning_rate=.inf", "Optimizer.lr.learning_rate must be a finite number, got inf"),
    ("Optimizer.lr.learning_rate=1e400", "Optimizer.lr.learning_rate must be a finite number, got inf"),
    ("DataLoader.Train.sampler.batch_size=1" + "0" * 30, "DataLoader.Train.sampler.batch_size: an "
     "integer of 31 digits is too large"),
    ("DataLoader.Eval.dataset.transform_ops.1.NormalizeImage.scale='1e400'",
     "DataLoader.Eval.dataset.transform_ops.1.NormalizeImage: scale must be a finite number"),
    ("DataLoader.Eval.dataset.transform_ops.1.NormalizeImage.scale='1e99999999'",
     "DataLoader.Eval.dataset.transform_ops.1.NormalizeImage: scale must be a finite number"),
    ("DataLoader.Eval.dataset.transform_ops.1.NormalizeImage.scale=.inf",
     "DataLoader.Eval.dataset.transform_ops.1.NormalizeImage.scale must be a finite number"),
    ("DataLoader.Eval.dataset.transform_ops.1.NormalizeImage.std=[0,0,0]",
     "DataLoader.Eval.dataset.transform_ops.1.NormalizeImage: std must be 3 finite non-zero numbers"),
    ("Infer.transforms.1={ResizeImage: {size: 0}}", "Infer.transforms.1.ResizeImage: size must be a "
     "positive integer"),
    ("Global.epochs=" + "x" * 10000, "Global.epochs must be int, got 'xxxxxxxx"),
    ("Globl" + "x" * 10000 + ".epochs=1", "unknown section 'Globlxxxx"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[b[0][:48] for b in BAD_VALUES])
def test_bad_config_values_are_one_short_line(digits, tmp_path, capsys, override, message):
    code, out = run_cli(train_tool, config_args(digits_overrides(digits, tmp_path), override), capsys)
    assert code == 2
    line = one_line_error(out)
    assert message in line, line
    assert len(line) < 400, line  # echoed values are cut to a readable length


def test_overlong_values_are_cut_in_messages():
    from ppcls.utils.errors import shown

    assert shown("abc") == "'abc'"
    long = shown("x" * 10000)
    assert long.startswith("'xxxx") and "(10000 characters)" in long and len(long) < 100
    assert shown(10 ** 30) == "an integer of 31 digits"
    nested = [[[list(range(1000))] * 1000] * 1000] * 1000  # 10**12 numbers if walked
    assert len(shown(nested)) < 100


# -------------------------------------------------------------------- YAML
def laughs(levels, width=10):
    """A billion-laughs document: each level's list holds `width` aliases of the one below."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines)


def test_yaml_aliases_that_expand_past_the_budget_are_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs(6) + "\nGlobal:\n  epochs: *l5\n")  # a million 'lol's
    with pytest.raises(ConfigError, match=r"bomb.yaml: too large once its YAML aliases are written "
                                          r"out \(more than 100000 values\)"):
        load_yaml(str(bomb))
    # a few aliases, as someone might reuse a list, still load
    fine = tmp_path / "fine.yaml"
    fine.write_text("a: &m [0.5, 0.5, 0.5]\nb: *m\n")
    assert load_yaml(str(fine)) == {"a": [0.5] * 3, "b": [0.5] * 3}


def test_a_config_with_a_billion_laughs_is_one_line(tmp_path, capsys):
    """The anchors sit in a first Infer section (the file's second one replaces it), so that
    without a budget Global.epochs' type error would echo a million-item value."""
    config = tmp_path / "config.yaml"
    anchors = "".join(f"  {line}\n" for line in laughs(6).splitlines())
    config.write_text("Infer:\n" + anchors + open(QUICK_START).read().replace("  epochs: 20\n",
                                                                              "  epochs: *l5\n"))
    code, out = run_cli(train_tool, ["-c", str(config)], capsys)
    assert code == 2
    line = one_line_error(out)
    assert "too large once its YAML aliases are written out (more than 100000 values)" in line and len(line) < 400, line[:1000]


@pytest.mark.parametrize("text,message", [
    ("Global: " + "[" * 100000, "nested too deeply"),
    ("Global:\n  epochs: 1" + "0" * 5000 + "\n", "an integer of 5001 digits is too long"),
    ("Global: {epochs: 3\n", "not valid YAML (line 2, column 1"),
    (b"Global:\n  output_dir: caf\xe9\n", "not UTF-8"),
])
def test_unreadable_yaml_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    with pytest.raises(ConfigError) as caught:
        load_yaml(str(path))
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value), caught.value
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_a_config_file_larger_than_any_config_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * (17 << 20) + b"\n")
    with pytest.raises(ConfigError, match=r"huge.yaml is 17.0 MiB: a config or inference.yml is "
                                          r"at most 16 MiB"):
        load_yaml(str(path))


# --------------------------------------------------------------- encodings
def test_label_lists_are_utf8_with_or_without_bom(tmp_path):
    (tmp_path / "caf\u00e9").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "caf\u00e9" / name), np.zeros((8, 8, 3), np.uint8))
    listed = tmp_path / "list.txt"
    listed.write_bytes("\ufeffcaf\u00e9/a.png 0\ncaf\u00e9/b.png 1\n".encode("utf-8"))
    dataset = ImageNetDataset(str(tmp_path), str(listed))
    assert [os.path.basename(p) for p in dataset.images] == ["a.png", "b.png"]


@pytest.mark.parametrize("encoding,message", [
    ("latin-1", r"list.txt: line 2, byte 4 is not UTF-8: re-save the file as UTF-8"),
    ("utf-16", r"list.txt: line 1, byte 1 is not UTF-8 \(it looks like UTF-16\): re-save the file "
               r"as UTF-8"),
])
def test_a_label_list_that_is_not_utf8_is_one_line(tmp_path, encoding, message):
    listed = tmp_path / "list.txt"
    listed.write_bytes("a.png 0\ncaf\u00e9.png 1\n".encode(encoding))
    with pytest.raises(DataError, match=message):
        ImageNetDataset(str(tmp_path), str(listed))


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_class_id_map_that_is_not_utf8_is_one_line(tmp_path, encoding):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("0 caf\u00e9\n1 th\u00e9\n".encode(encoding))
    with pytest.raises(ConfigError, match=r"labels.txt: line 1, byte \d+ is not UTF-8"):
        read_class_id_map(str(labels))
    labels.write_bytes("\ufeff0 caf\u00e9\n1 th\u00e9\n".encode("utf-8"))
    assert read_class_id_map(str(labels)) == {0: "caf\u00e9", 1: "th\u00e9"}


def test_eval_with_a_latin1_label_list_is_one_line(digits, tmp_path, capsys):
    listed = tmp_path / "val.txt"
    lines = (digits / "val_odd.txt").read_text().splitlines()[:4]
    listed.write_bytes(("\n".join(lines) + "\n# caf\u00e9\n").encode("latin-1"))
    code, out = run_cli(eval_tool, config_args(digits_overrides(
        digits, tmp_path / "out", extra=[f"DataLoader.Eval.dataset.cls_label_path={listed}"])), capsys)
    assert code == 2
    assert "val.txt: line 5, byte 6 is not UTF-8: re-save the file as UTF-8" in one_line_error(out)


# ------------------------------------------- an image the transform ops leave at another size
@pytest.fixture
def val_with_a_48px_image(digits, tmp_path):
    """10 val digits at 32 px, the 4th upscaled to 48 px (the quick start does not resize)."""
    root = tmp_path / "data"
    lines = (digits / "val_odd.txt").read_text().splitlines()[:10]
    for i, line in enumerate(lines):
        dst = root / line.split()[0]
        dst.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(digits / line.split()[0]))
        cv2.imwrite(str(dst), cv2.resize(image, (48, 48)) if i == 3 else image)
    listed = tmp_path / "val.txt"
    listed.write_text("\n".join(lines) + "\n")
    return root, listed, lines[3].split()[0]


def test_evaluation_names_an_image_of_another_size_instead_of_hanging(val_with_a_48px_image, tmp_path,
                                                                      capsys):
    """np.stack failed in the loader's collate, and Paddle's DataLoader then waited forever."""
    root, listed, odd = val_with_a_48px_image
    code, out = run_cli(eval_tool, config_args(digits_overrides(
        root, tmp_path / "out", extra=[f"DataLoader.Eval.dataset.cls_label_path={listed}"])), capsys)
    assert code == 2
    line = one_line_error(out)
    assert re.search(rf"cannot use image .*val.txt:4: .*{re.escape(odd)}: the transform ops make it "
                     r"\[3, 48, 48\], but the first image \(.*val.txt:1\) \[3, 32, 32\]: add "
                     r"ResizeImage and CropImage", line), line
    code, out = run_cli(eval_tool, config_args(digits_overrides(
        root, tmp_path / "out", extra=[f"DataLoader.Eval.dataset.cls_label_path={listed}",
                                       "DataLoader.Eval.dataset.on_bad_image=skip",
                                       "DataLoader.Eval.dataset.max_bad_fraction=0.2"])), capsys)
    assert code == 0 and "evaluated 9 of the 10 images listed" in out.out, out.err
