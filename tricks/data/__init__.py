"""The data layer: image-classification datasets read from disk into uint8 tensors, cached.

`load_dataset(name, data)` finds a dataset (CIFAR-10/100 pickles, Fashion-MNIST idx files, an image
folder, or a tar archive of one), decodes it once into a tensor cache, and checks its shape.
"""
from tricks.data.formats import ImageData, Split
from tricks.data.sources import DATASETS, default_cache_dir, load_dataset
from tricks.data.subset import class_balanced_subset

__all__ = ["DATASETS", "ImageData", "Split", "class_balanced_subset", "default_cache_dir", "load_dataset"]
