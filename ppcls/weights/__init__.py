"""Weights in and out of this repository's models, one module per job:

    loading.py      read `.pdparams` files and check them against a model
    pretrained.py   weights from a path, prefix or URL in any known format and naming, into
                    a model: load_pretrained_weights, load_weights (EMA or model weights)
    checkpoint.py   training checkpoints: the file layout, its SHA-256 manifest, the
                    crash-safe save, finding and resuming the newest complete one
    model_files.py  the files of an exported model (Paddle Inference, ONNX)
    converter.py    torchvision / timm / reproduction checkpoints -> our `.pdparams`
    download.py     fetch a URL into the cache (cache_dir): size- and time-bounded,
                    content and SHA-256 checked, resumable
    paddle_pickle.py `paddle.save` files (.pdparams, .pdopt, .pdema, .pdstates) as numpy
                    arrays and plain containers, refusing any that would run code
    torch_pickle.py PyTorch `torch.save` files as numpy arrays, without PyTorch and
                    without running code from the file
    safe_pickle.py  what those two share: the opcode scan, the allow-list unpickler and
                    the bounded rebuild of the containers

No file is read with paddle.load or pickle.load: every pickle goes through paddle_pickle or
torch_pickle. Imports run one way: checkpoint and pretrained use loading (pretrained also
the converter and download, when it needs them); loading, checkpoint and the converter use
paddle_pickle, the converter torch_pickle; both of those use safe_pickle only; model_files
and download use no other module here. The converter is not re-exported: it
needs the model registry (ppcls.arch), which the deployed predictor, importing model_files,
should not load.
Import it as `ppcls.weights.converter`.
"""

from ppcls.weights.checkpoint import (find_checkpoint, load_checkpoint, previous_prefix,
                                      read_states, remove_checkpoint, save_checkpoint)
from ppcls.weights.download import cache_dir, fetch
from ppcls.weights.loading import check_compatible, read_state_dict, resolve_params_path
from ppcls.weights.model_files import find_model_files, find_onnx_file
from ppcls.weights.pretrained import load_pretrained_weights, load_weights
