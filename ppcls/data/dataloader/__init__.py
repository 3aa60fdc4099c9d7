from ppcls.data.dataloader.imagenet_dataset import ImageNetDataset  # noqa: F401
