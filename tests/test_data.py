import numpy as np
import pytest

from ftviz.config import DataConfig
from ftviz.data import (
    ImageSet,
    check_image_set,
    inject_label_noise,
    load_digits_images,
    load_splits,
    stratified_indices,
)
from ftviz.errors import FtvizError


def test_digits_are_real_rgb_images():
    digits = load_digits_images(32)
    assert digits.images.shape == (1797, 32, 32, 3)
    assert digits.images.dtype == np.uint8
    assert np.array_equal(digits.images[..., 0], digits.images[..., 2])  # grey in RGB
    assert digits.images.max() == 255 and digits.images.min() == 0
    assert np.bincount(digits.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_noise_flips_exactly_and_never_to_the_same_class():
    labels = np.repeat(np.arange(10), 100)
    noisy, flipped = inject_label_noise(labels, 0.1, 10, seed=3)
    assert flipped.sum() == 100
    assert np.all(noisy[flipped] != labels[flipped])
    assert np.array_equal(noisy[~flipped], labels[~flipped])
    again, _ = inject_label_noise(labels, 0.1, 10, seed=3)
    assert np.array_equal(noisy, again)  # recorded by the seed


def test_default_splits_record_noise():
    splits = load_splits(DataConfig(), seed=0)
    assert len(splits.train) == len(splits.probe) == 1797
    noisy = splits.probe.labels != splits.probe_true_labels
    assert noisy.sum() == round(0.1 * 1797)


def test_probe_from_test_split_is_stratified_subset():
    config = DataConfig(probe="test", probe_size=100, test_fraction=0.3)
    splits = load_splits(config, seed=0)
    assert len(splits.probe) == 100
    assert len(splits.train) == 1797 - round(0.3 * 1797) or len(splits.train) == 1257
    counts = np.bincount(splits.probe_true_labels, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11


def test_stratified_indices_all_when_zero():
    labels = np.arange(20) % 2
    assert np.array_equal(stratified_indices(labels, 0, seed=0), np.arange(20))


def test_bad_data_errors():
    with pytest.raises(FtvizError, match="empty"):
        check_image_set(ImageSet(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64), ["a", "b"]), "x")
    with pytest.raises(FtvizError, match="only one class"):
        check_image_set(ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, np.int64), ["a", "b"]), "x")
    with pytest.raises(FtvizError, match=r"\(N, H, W, 3\) uint8"):
        check_image_set(ImageSet(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"]), "x")
    with pytest.raises(FtvizError, match="unknown dataset 'mnist'"):
        load_splits(DataConfig(dataset="mnist"), seed=0)
