from vit_cifar.data.datamodule import ArrayDataset, CIFARDataModule, balanced_subset, stratified_split

__all__ = ["ArrayDataset", "CIFARDataModule", "balanced_subset", "stratified_split"]
