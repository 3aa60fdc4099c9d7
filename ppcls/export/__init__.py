"""Exported models, for deployment: written by the tools, found again by the predictor.

    inference_model.py  the Paddle Inference export (tools/export_model.py): the network
                        with a softmax, a PIR and a legacy program on one parameter file
    inference_config.py inference.yml beside it: preprocessing and labels
    onnx_model.py       the ONNX export (tools/export_onnx.py), by paddle2onnx
    model_files.py      the files an export writes, found again for prediction

This package imports nothing itself, so that the deployed predictor, which imports only
model_files, does not load the model zoo or the training code.
"""
