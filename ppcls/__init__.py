"""ppcls: a small PaddleClas-style framework for training and deploying MnasNet."""
