"""Post-processing by PaddleClas name. Each turns class probabilities [N, class_num] into
one result per image, e.g. for `Topk`

    {'class_ids': [...], 'scores': [...], 'file_name': ..., 'label_names': [...]}

- Topk: the k most probable classes, named by `class_id_map_file` or `label_list`;
- ThreshOutput: PaddleClas's thresholded decision (see the class);
- SavePreLabel: copies each image into `save_dir/<predicted class id>/` (no result of its own).
A deploy config may list several; all run, and the `main_indicator`'s results are returned.
"""

import os
import shutil

import numpy as np

from ppcls.utils.errors import ConfigError, shown, unknown
from ppcls.utils.text import read_lines
from ppcls.utils.factory import create, split_spec


def read_class_id_map(path):
    """'281 tabby, tabby cat' lines -> {281: 'tabby, tabby cat'}."""
    if not os.path.isfile(path):
        raise ConfigError(f"class_id_map_file not found: {path}")
    names = {}
    for line_no, line in read_lines(path, ConfigError):
        line = line.strip()
        if not line:
            continue
        class_id, _, name = line.partition(" ")
        try:
            names[int(class_id)] = name.strip()
        except ValueError:
            raise ConfigError(f"{path}:{line_no}: expected 'class_id name', got {shown(line)}") from None
    return names


class _Labels:
    """Class names from a `class_id_map_file` or a `label_list` (names in class-id order, as
    inference.yml gives them); the number of names must be the model's number of classes."""

    def __init__(self, owner, class_id_map_file=None, label_list=None):
        if label_list is not None:
            self.names = dict(enumerate(str(n) for n in label_list))
            self.source = f"PostProcess.{owner}.label_list"
        elif class_id_map_file:
            self.names = read_class_id_map(class_id_map_file)
            self.source = f"PostProcess.{owner}.class_id_map_file {class_id_map_file}"
        else:
            self.names = None

    def check(self, class_num):
        if self.names is not None and len(self.names) != class_num:
            raise ConfigError(f"{self.source} names {len(self.names)} classes but the model "
                              f"outputs {class_num}: give the label list of this model")

    def __call__(self, class_id):
        return self.names.get(int(class_id), "")


class Topk:
    def __init__(self, topk: int = 5, class_id_map_file: str = None, delimiter: str = None,
                 label_list: list = None):
        if topk < 1:
            raise ConfigError(f"PostProcess.Topk.topk must be >= 1, got {topk}")
        self.topk = topk
        self.labels = _Labels("Topk", class_id_map_file, label_list)

    def __call__(self, probs, file_names):
        """`probs`: [N, class_num] probabilities (the exported model ends in a softmax)."""
        probs = np.asarray(probs)
        self.labels.check(probs.shape[1])
        results = []
        for row, file_name in zip(probs, file_names):
            order = np.argsort(-row, kind="stable")[: self.topk]
            result = {"class_ids": [int(i) for i in order],
                      "scores": [round(float(row[i]), 5) for i in order],
                      "file_name": file_name}
            if self.labels.names is not None:
                result["label_names"] = [self.labels(i) for i in order]
            results.append(result)
        return results


class ThreshOutput:
    """PaddleClas's semantics. Two classes: class 1 when its probability reaches `threshold`
    (score p1, name `label_1`), else class 0 (score 1 - p1, name `label_0`). More classes:
    the top-1 class when its probability exceeds `threshold`, else `default_label_index`
    with its own probability, named by `class_id_map_file`."""

    def __init__(self, threshold: float = 0.0, default_label_index: int = 0, label_0: str = "0",
                 label_1: str = "1", class_id_map_file: str = None, delimiter: str = None):
        self.threshold = float(threshold)
        self.default_label_index = default_label_index
        self.binary_names = (str(label_0), str(label_1))
        self.labels = _Labels("ThreshOutput", class_id_map_file)

    def __call__(self, probs, file_names):
        probs = np.asarray(probs)
        if probs.shape[1] == 2:
            return [self._binary(row, f) for row, f in zip(probs, file_names)]
        self.labels.check(probs.shape[1])
        return [self._multi(row, f) for row, f in zip(probs, file_names)]

    def _binary(self, row, file_name):
        positive = float(row[1])
        class_id, score = (1, positive) if positive >= self.threshold else (0, 1 - positive)
        return {"class_ids": [class_id], "scores": [round(score, 5)],
                "label_names": [self.binary_names[class_id]], "file_name": file_name}

    def _multi(self, row, file_name):
        top1 = int(np.argmax(row))
        class_id = top1 if row[top1] > self.threshold else self.default_label_index
        return {"class_ids": [class_id], "scores": [round(float(row[class_id]), 5)],
                "label_names": [self.labels(class_id) if self.labels.names else ""],
                "file_name": file_name}


class SavePreLabel:
    def __init__(self, save_dir: str = None):
        if not save_dir:
            raise ConfigError("PostProcess.SavePreLabel.save_dir is not set: give the folder "
                              "that gets one sub-folder of images per predicted class")
        self.save_dir = save_dir

    def __call__(self, probs, file_names):
        for row, file_name in zip(np.asarray(probs), file_names):
            folder = os.path.join(self.save_dir, str(int(np.argmax(row))))
            os.makedirs(folder, exist_ok=True)
            shutil.copy(file_name, folder)
        return None


POSTPROCESSES = {"Topk": Topk, "ThreshOutput": ThreshOutput, "SavePreLabel": SavePreLabel}


class PostProcesses:
    """Runs every configured post-process in order; returns the main indicator's results."""

    def __init__(self, steps, main):
        self.steps, self.main = steps, main

    def __call__(self, probs, file_names):
        results = None
        for name, step in self.steps:
            out = step(probs, file_names)
            if name == self.main:
                results = out
        return results


def build_postprocess(spec, where):
    """Accepts Infer's form ({name: Topk, topk: 5, ...}) and the deploy config's form
    ({main_indicator: Topk, Topk: {...}, SavePreLabel: {...}})."""
    if not spec:
        return Topk()
    if "main_indicator" not in spec and "name" in spec:
        name, args = split_spec(spec, where)
        return create(POSTPROCESSES, name, args, where, kind="post-process")
    names = [key for key in spec if key != "main_indicator"]
    producing = [n for n in names if n != "SavePreLabel"]
    main = spec.get("main_indicator") or (producing[0] if len(producing) == 1 else None)
    if main not in producing:
        raise ConfigError(f"{where}.main_indicator must name the post-process whose results are "
                          f"returned, one of {producing or ['Topk', 'ThreshOutput']}; got {shown(main)}")
    for name in names:  # named under its own key; create() adds the name to argument errors
        if name not in POSTPROCESSES:
            raise ConfigError(f"{where}.{name}: {unknown('post-process', name, sorted(POSTPROCESSES))}")
    steps = [(n, create(POSTPROCESSES, n, dict(spec.get(n) or {}), where, kind="post-process"))
             for n in names]
    return PostProcesses(steps, main)
