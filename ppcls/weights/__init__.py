"""Weights files in and out of models, for any model: nothing here knows a network.

    formats.py      read a weights file in any format (recognised by content) as numpy
                    arrays; the one content sniffer, shared with download.py
    loading.py      load_into(model, location): read, adapt (the model's hook), check, load
    checkpoint.py   training checkpoints: the file layout, its SHA-256 manifest, the
                    crash-safe save, finding and resuming the newest complete one, the
                    run's config kept in them
    download.py     fetch a URL into the cache: size- and time-bounded, content and
                    SHA-256 checked, resumable
    paddle_pickle.py `paddle.save` files (.pdparams, .pdopt, .pdema, .pdstates) as numpy
                    arrays and plain containers, refusing any that would run code
    torch_pickle.py PyTorch `torch.save` files as numpy arrays, without PyTorch and
                    without running code from the file
    safe_pickle.py  what those two share: the opcode scan, the allow-list unpickler and
                    the bounded rebuild of the containers

Which to use: `load_into` for weights (to fine-tune from, or to evaluate, export and predict
with: see loading.py); `resume_checkpoint` / `save_checkpoint` for training runs.

No file is read with paddle.load or pickle.load: every pickle goes through paddle_pickle or
torch_pickle. Imports run one way, and never out of this package except to ppcls.utils:
loading uses formats and download; checkpoint uses formats and loading; download uses
formats; formats uses paddle_pickle and torch_pickle, which use safe_pickle. What a
particular network needs of its weights (other libraries' names for its tensors, a layer
they were trained without) is the model's own `adapt_state_dict` hook.
"""

from ppcls.weights.checkpoint import (CONFIG_KEY, find_checkpoint, previous_prefix, read_states,
                                      remove_checkpoint, resume_checkpoint, save_checkpoint,
                                      stored_config)
from ppcls.weights.download import Download, cache_dir, fetch
from ppcls.weights.formats import (read_state_dict, read_weights, resolve_params_path,
                                   weights_format)
from ppcls.weights.loading import OURS, Loaded, WeightsFile, check_compatible, is_url, load_into
