"""Rebuild the reference weights and input of a parity fixture (see fixtures/parity/README.md)."""

import json
from pathlib import Path

import numpy as np

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "parity"


def fixture_paths():
    return sorted(FIXTURE_DIR.glob("*.json"))


def load_fixture(path):
    with open(path) as f:
        return json.load(f)


def reference_weights(fixture):
    weights = {}
    for entry in fixture["keys"]:
        rng = np.random.default_rng([fixture["seed"], entry["index"]])
        if entry["dist"] == "uniform":
            value = rng.uniform(entry["a"], entry["b"], entry["shape"])
        else:
            value = rng.normal(entry["a"], entry["b"], entry["shape"])
        weights[entry["name"]] = value.astype(np.float32)
    return weights


def reference_input(fixture):
    rng = np.random.default_rng([fixture["seed"], 999999])
    return rng.standard_normal(fixture["input_shape"]).astype(np.float32)
