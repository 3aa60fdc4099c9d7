"""Weights in and out of this repository's models.

    checkpoint.py   training checkpoints: format, SHA-256 manifest, crash-safe save, resume
    loading.py      read and check `.pdparams` state dicts; load_pretrained_weights, load_weights
    converter.py    torchvision / timm / reproduction checkpoints -> our `.pdparams` layout
    model_files.py  the files of an exported model (Paddle Inference, ONNX), found for prediction
"""
