"""Weights in and out of this repository's models.

    converter.py   torchvision / timm / reproduction checkpoints -> our `.pdparams` layout
"""
