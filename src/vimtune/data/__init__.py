"""Data layer: dataset readers, image loading, transforms and loaders.

Datasets (all local, ``dataset[i] -> (transform(image), label)``)::

    build_dataset(kind, root, split, transform=None, skip_bad_images=False)
        kind: imagefolder | vtab | fgvc | cifar10 | cifar100

Transforms::

    cfg = AugmentConfig(recipe="deit", img_size=224)
    build_train_transform(cfg), build_eval_transform(cfg), build_mixup(cfg, num_classes)

Loaders::

    build_loader(dataset, batch_size, train, num_workers, distributed, seed)
"""

from .base import ImageListDataset
from .cifar import CIFARDataset
from .errors import AugmentationError, BadImageError, DatasetNotFoundError, EmptySplitError
from .factory import DATASET_KINDS, build_dataset, has_split
from .fgvc import FGVCDataset
from .image_io import IMG_EXTENSIONS, check_image, load_rgb, to_rgb
from .imagefolder import ImageFolderDataset, scan_image_folder
from .loader import build_loader, set_loader_epoch
from .safe_pickle import RestrictedUnpickler, UnsafePickleError, safe_load_pickle
from .transforms import (
    RECIPES,
    AugmentConfig,
    SizeAdaptiveTransform,
    build_eval_transform,
    build_mixup,
    build_train_transform,
)
from .vtab import VTAB_SPLIT_FILES, VTabDataset, read_list_file

__all__ = [
    "DATASET_KINDS",
    "IMG_EXTENSIONS",
    "RECIPES",
    "VTAB_SPLIT_FILES",
    "AugmentConfig",
    "AugmentationError",
    "BadImageError",
    "CIFARDataset",
    "DatasetNotFoundError",
    "EmptySplitError",
    "FGVCDataset",
    "ImageFolderDataset",
    "ImageListDataset",
    "RestrictedUnpickler",
    "SizeAdaptiveTransform",
    "UnsafePickleError",
    "VTabDataset",
    "build_dataset",
    "build_eval_transform",
    "build_loader",
    "build_mixup",
    "build_train_transform",
    "check_image",
    "has_split",
    "load_rgb",
    "read_list_file",
    "safe_load_pickle",
    "scan_image_folder",
    "set_loader_epoch",
    "to_rgb",
]
