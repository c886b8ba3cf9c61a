from vit_cifar.data.datamodule import ArrayDataset, CIFARDataModule
from vit_cifar.data.splits import balanced_subset, stratified_split

__all__ = ["ArrayDataset", "CIFARDataModule", "balanced_subset", "stratified_split"]
