"""Published ImageNet-1k figures for each variant, with their sources. These are the
sources' numbers, not ours: this repository has not trained on ImageNet.

Each entry: (source, reference model name, top-1, top-5, params in millions, MACs in
millions at 224x224 or None). `None` means the source does not publish that figure.
"""

TORCHVISION = "torchvision weights metadata (torchvision/models/mnasnet.py)"
TIMM = "timm results/results-imagenet.csv"
MINDCV = "MindCV configs/mnasnet/README.md"
TF = "TF release (tensorflow/tpu models/official/mnasnet/README.md)"
REPRODUCTION = "Paddle reproduction (renmada/MnasNet-paddle README, tools/eval.py)"

PUBLISHED = {
    "MnasNet_B1_x0_5": [
        (TORCHVISION, "mnasnet0_5", 67.734, 87.490, 2.218512, 104.0),
        (MINDCV, "mnasnet_050", 68.07, 88.09, 2.14, None),
    ],
    "MnasNet_B1_x0_75": [
        (TORCHVISION, "mnasnet0_75", 71.180, 90.496, 3.170208, 215.0),
        (MINDCV, "mnasnet_075", 71.81, 90.53, 3.20, None),
    ],
    "MnasNet_B1_x1_0": [
        (TORCHVISION, "mnasnet1_0", 73.456, 91.510, 4.383312, 314.0),
        (TIMM, "mnasnet_100.rmsp_in1k", 74.650, 92.124, 4.38, None),
        (MINDCV, "mnasnet_100", 74.28, 91.70, 4.42, None),
        (REPRODUCTION, "mnasnet1_0", 73.43, None, None, None),
    ],
    "MnasNet_B1_x1_3": [
        (TORCHVISION, "mnasnet1_3", 76.506, 93.522, 6.282256, 526.0),
        (MINDCV, "mnasnet_130", 75.65, 92.64, 6.33, None),
    ],
    "MnasNet_B1_x1_4": [
        (MINDCV, "mnasnet_140", 76.01, 92.83, 7.16, None),
    ],
    "MnasNet_A1_x0_5": [
        (TF, "mnasnet-a1 x0.5", 68.9, 88.4, 2.1, 105.2),
    ],
    "MnasNet_A1_x0_75": [
        (TIMM, "semnasnet_075.rmsp_in1k", 72.992, 91.138, 2.91, None),
        (TF, "mnasnet-a1 x0.75", 73.3, 91.3, 2.9, 226.7),
    ],
    "MnasNet_A1_x1_0": [
        (TIMM, "semnasnet_100.rmsp_in1k", 75.450, 92.594, 3.89, None),
        (TF, "mnasnet-a1", 75.2, 92.5, 3.9, 315.2),
    ],
    "MnasNet_A1_x1_4": [
        (TF, "mnasnet-a1 x1.4", 77.2, 93.5, 6.1, 591.5),
    ],
    "MnasNet_small": [
        (TIMM, "mnasnet_small.lamb_in1k", 66.196, 86.504, 2.03, None),
        (TF, "mnasnet-small", 66.0, None, 2.0, 68.0),
    ],
}


def best_published_top1(name):
    """The highest published top-1 for a variant and its source, or (None, None)."""
    entries = [e for e in PUBLISHED.get(name, []) if e[2] is not None]
    if not entries:
        return None, None
    best = max(entries, key=lambda e: e[2])
    return best[2], best[0]
