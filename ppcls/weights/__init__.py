"""Weights in and out of this repository's models.

    loading.py     read and check `.pdparams` state dicts; load_pretrained_weights, load_weights
    converter.py   torchvision / timm / reproduction checkpoints -> our `.pdparams` layout
"""
