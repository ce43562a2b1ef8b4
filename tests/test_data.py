import numpy as np
import pytest

from ftviz.config import DataConfig
from ftviz.data import (
    ImageSet,
    check_image_set,
    inject_label_noise,
    load_digits_images,
    load_splits,
    most_confused_classes,
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


def test_digits_read_from_the_file_equal_scikit_learns_loader():
    """The digits are read from the file scikit-learn ships, without importing it (a run's start
    saves its import); the arrays are exactly what its loader returns."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from ftviz.data import _digits_arrays

    pixels, target = _digits_arrays()
    reference = load_digits()
    assert np.array_equal(pixels, reference.data) and np.array_equal(target, reference.target)
    imported = subprocess.run([sys.executable, "-c", "import sys; from ftviz.data import load_digits_images; "
                               "load_digits_images(8); print('sklearn' in sys.modules)"],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert imported == "False"


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
    """The probe is drawn from the held-out split only: none of its images is trained on."""
    config = DataConfig(probe="test", probe_size=100, test_fraction=0.3)
    splits = load_splits(config, seed=0)
    assert len(splits.probe) == 100
    assert len(splits.train) == 1797 - 540  # sklearn holds out ceil(0.3 * 1797) = 540
    digits = load_digits_images(32)
    row_of = {image.tobytes(): i for i, image in enumerate(digits.images)}  # digits has no duplicates
    assert len(row_of) == 1797
    train_rows = {row_of[image.tobytes()] for image in splits.train.images}
    probe_rows = [row_of[image.tobytes()] for image in splits.probe.images]
    assert len(train_rows) == 1257 and len(set(probe_rows)) == 100
    assert train_rows.isdisjoint(probe_rows)
    np.testing.assert_array_equal(splits.probe_true_labels, digits.labels[probe_rows])
    counts = np.bincount(splits.probe_true_labels, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11  # 10 per class, +-1 for rounding


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


@pytest.mark.parametrize("sizes, phrases", [
    ({"train_size": 5000}, ["data.train_size = 5000 but the digits training split has only 1797 images; "
                            "set data.train_size to at most 1797 (0 = all)"]),
    ({"probe_size": 1798}, ["data.probe_size = 1798 but the digits training set the probe is drawn from "
                            "(data.probe = \"train\") has only 1797 images"]),
    ({"train_size": 500, "probe_size": 501}, ["data.probe_size = 501", "(data.train_size = 500)",
                                              "has only 500 images"]),
    ({"probe": "test", "probe_size": 400}, ["data.probe_size = 400", "test split", "has only 360 images"]),
    ({"probe": "test", "train_size": 1500}, ["data.train_size = 1500", "data.test_fraction = 0.2",
                                             "has only 1437 images"]),
])
def test_sizes_larger_than_the_split_are_refused(sizes, phrases):
    """A request for more images than exist says how many there are instead of being capped."""
    with pytest.raises(FtvizError) as error:
        load_splits(DataConfig(**sizes), seed=0)
    message = str(error.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message


def test_sizes_equal_to_the_split_take_all_of_it():
    splits = load_splits(DataConfig(train_size=1797, probe_size=1797), seed=0)
    assert len(splits.train) == len(splits.probe) == 1797
    with pytest.raises(FtvizError, match="data.train_size = 21 but the label array has only 20 images"):
        stratified_indices(np.arange(20) % 2, 21, seed=0, key="data.train_size", source="the label array")


# ---- label noise kinds ---------------------------------------------------------------------
DIGITS_CONFUSED_WITH = [6, 9, 3, 9, 8, 9, 1, 8, 1, 7]  # documented in most_confused_classes


def test_most_confused_classes_on_digits_is_the_documented_map():
    digits = load_digits_images(32)
    confused = most_confused_classes(digits.images, digits.labels, 10)
    assert confused.tolist() == DIGITS_CONFUSED_WITH
    assert np.all(confused != np.arange(10))


def test_most_confused_classes_follows_the_nearest_class_mean_classifier():
    """Hand-made 1-pixel images: class 0 sits between 1 (near) and 2 (far); 1 overlaps 0."""
    values = np.array([0, 0, 0, 9, 10, 10, 10, 50, 50, 50], dtype=np.uint8)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    images = np.repeat(values[:, None, None, None], 3, axis=3)  # (N, 1, 1, 3)
    # means: class 0 = 2.25, class 1 = 10, class 2 = 50. Image 3 (value 9) of class 0 is nearer
    # class 1's mean: one confusion 0 -> 1. Class 1 and 2 are never confused: nearest mean.
    assert most_confused_classes(images, labels, 3).tolist() == [1, 0, 1]


def test_asymmetric_noise_flips_exactly_to_the_mapped_class():
    labels = np.repeat(np.arange(10), 100)
    confused_with = np.array(DIGITS_CONFUSED_WITH)
    noisy, flipped = inject_label_noise(labels, 0.1, 10, seed=3, kind="asymmetric", confused_with=confused_with)
    assert flipped.sum() == 100
    np.testing.assert_array_equal(noisy[flipped], confused_with[labels[flipped]])
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
    symmetric, same_choice = inject_label_noise(labels, 0.1, 10, seed=3)
    np.testing.assert_array_equal(flipped, same_choice)  # same samples chosen, other targets


def test_asymmetric_splits_use_one_map_for_train_and_probe_and_record_it():
    splits = load_splits(DataConfig(noise="asymmetric", probe="test"), seed=0)
    assert len(splits.noise_map) == 10 and all(c != t for c, t in enumerate(splits.noise_map))
    for given, true in ((splits.train.labels, splits.train_true_labels), (splits.probe.labels, splits.probe_true_labels)):
        flipped = given != true
        assert flipped.sum() == round(0.1 * len(given))
        np.testing.assert_array_equal(given[flipped], np.array(splits.noise_map)[true[flipped]])
    assert load_splits(DataConfig(), seed=0).noise_map is None


def test_unknown_noise_kind_is_a_one_line_error():
    from ftviz.config import load_config

    with pytest.raises(FtvizError, match="unknown label noise 'uniform'; set data.noise to one of") as error:
        inject_label_noise(np.arange(10) % 2, 0.0, 2, seed=0, kind="uniform")
    assert "\n" not in str(error.value)
    with pytest.raises(FtvizError, match="data.noise must be 'symmetric' or 'asymmetric', got 'pairs'"):
        load_config(None, ["data.noise=pairs"])


def _tiny_image_folder(root, counts: dict[str, int], side: int = 8):
    """root/<class>/<i>.png: ``counts[class]`` random side x side images per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_probe_test_with_a_one_image_class_is_one_line(tmp_path):
    """Holding out a stratified probe needs two images of a class; sklearn's ValueError used
    to surface as a traceback."""
    root = _tiny_image_folder(tmp_path / "images", {"cat": 5, "dog": 5, "emu": 1})
    config = DataConfig(dataset="imagefolder", path=str(root), probe="test", image_size=8, noise_rate=0.0)
    with pytest.raises(FtvizError) as error:
        load_splits(config, seed=0)
    message = str(error.value)
    assert "\n" not in message
    assert "class 'emu' has only 1 image" in message and 'data.probe = "train"' in message
    config.probe = "train"  # the advice works: the training set is the probe
    assert len(load_splits(config, seed=0).probe) == 11


def test_probe_test_holding_out_fewer_images_than_classes_is_one_line(tmp_path):
    root = _tiny_image_folder(tmp_path / "images", {"cat": 5, "dog": 5, "emu": 5})
    config = DataConfig(dataset="imagefolder", path=str(root), probe="test", test_fraction=0.1, image_size=8)
    with pytest.raises(FtvizError) as error:
        load_splits(config, seed=0)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot hold out data.test_fraction = 0.1 of the 15 imagefolder images" in message
    assert "number of classes = 3" in message  # sklearn's reason, kept on the one line
    config.test_fraction = 0.2
    splits = load_splits(config, seed=0)
    assert len(splits.probe) == 3 and sorted(splits.probe_true_labels.tolist()) == [0, 1, 2]


def test_image_folder_is_read_at_data_image_size(tmp_path):
    """load_raw gives the image-folder loader data.image_size: 24 px images arrive at 8 px."""
    root = _tiny_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, side=24)
    splits = load_splits(DataConfig(dataset="imagefolder", path=str(root), image_size=8, noise_rate=0.0), seed=0)
    assert splits.train.images.shape == (8, 8, 8, 3) and splits.train.images.dtype == np.uint8
