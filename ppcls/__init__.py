"""ppcls: a small PaddleClas-style framework for training and deploying MnasNet."""

from ppcls.utils.threads import set_default_threads

set_default_threads()  # before Paddle is imported where possible; see ppcls/utils/threads.py
