"""Post-processing by PaddleClas name: `Topk` turns class probabilities into results

    {'class_ids': [...], 'scores': [...], 'file_name': ..., 'label_names': [...]}
"""

import os

import numpy as np

from ppcls.utils.errors import ConfigError
from ppcls.utils.factory import create, split_spec


def read_class_id_map(path):
    """'281 tabby, tabby cat' lines -> {281: 'tabby, tabby cat'}."""
    if not os.path.isfile(path):
        raise ConfigError(f"class_id_map_file not found: {path}")
    names = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            class_id, _, name = line.partition(" ")
            try:
                names[int(class_id)] = name.strip()
            except ValueError:
                raise ConfigError(f"{path}:{line_no}: expected 'class_id name', got {line!r}") from None
    return names


class Topk:
    def __init__(self, topk: int = 5, class_id_map_file: str = None, delimiter: str = None):
        if topk < 1:
            raise ConfigError(f"PostProcess.Topk.topk must be >= 1, got {topk}")
        self.topk = topk
        self.names = read_class_id_map(class_id_map_file) if class_id_map_file else None

    def __call__(self, probs, file_names):
        """`probs`: [N, class_num] probabilities (the exported model ends in a softmax)."""
        results = []
        for row, file_name in zip(np.asarray(probs), file_names):
            order = np.argsort(-row, kind="stable")[: self.topk]
            result = {"class_ids": [int(i) for i in order],
                      "scores": [round(float(row[i]), 5) for i in order],
                      "file_name": file_name}
            if self.names is not None:
                result["label_names"] = [self.names.get(int(i), "") for i in order]
            results.append(result)
        return results


POSTPROCESSES = {"Topk": Topk}


def build_postprocess(spec, where):
    """Accepts Infer's form ({name: Topk, topk: 5, ...}) and the deploy config's form
    ({main_indicator: Topk, Topk: {...}, SavePreLabel: {...}})."""
    if not spec:
        return Topk()
    if "main_indicator" in spec:
        name = spec["main_indicator"]
        for key in spec:
            if key not in ("main_indicator", name):
                raise ConfigError(f"{where}.{key} is not supported here (only the main "
                                  f"indicator {name} runs): remove it")
        return create(POSTPROCESSES, name, dict(spec.get(name) or {}), where, kind="post-process")
    name, args = split_spec(spec, where)
    return create(POSTPROCESSES, name, args, where, kind="post-process")
