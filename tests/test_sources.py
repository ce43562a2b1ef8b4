"""ftviz.sources: CIFAR-10 in the official pickle format, datasets saved from the hub, image
folders, the offline hub error, and bad input of every kind."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from tests.conftest import tiny_config

from ftviz.data import ImageSet, load_splits, make_synthetic
from ftviz.errors import FtvizError
from ftviz.sources import (
    CIFAR10_CLASSES,
    load_cifar10,
    load_cifar10_pickles,
    load_image_folder,
    write_cifar10_pickles,
)


def cifar_like(train_per_class: int = 10, test_per_class: int = 3) -> tuple[ImageSet, ImageSet]:
    """Class-structured 32 px images (smooth class templates plus noise) with CIFAR's names,
    balanced: 100 train and 30 test images by default, classes in shuffled order."""
    pool = make_synthetic(10 * (train_per_class + test_per_class), 10, 32, seed=3)
    pool.class_names = list(CIFAR10_CLASSES)
    rank = np.zeros(len(pool), dtype=int)  # position of each image within its class
    for c in range(10):
        rank[pool.labels == c] = np.arange((pool.labels == c).sum())
    return pool.subset(np.flatnonzero(rank < train_per_class)), pool.subset(np.flatnonzero(rank >= train_per_class))


@pytest.fixture(scope="module")
def cifar_sets():
    return cifar_like()


@pytest.fixture()
def cifar_dir(tmp_path, cifar_sets):
    train, test = cifar_sets
    return write_cifar10_pickles(tmp_path / "cifar-10-batches-py", train, test)


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# ---- CIFAR-10 pickles ---------------------------------------------------------------------
@pytest.mark.parametrize("bytes_keys", [True, False], ids=["bytes-keys", "str-keys"])
def test_cifar_pickles_round_trip(tmp_path, cifar_sets, bytes_keys):
    train, test = cifar_sets
    folder = write_cifar10_pickles(tmp_path / "cifar-10-batches-py", train, test, bytes_keys=bytes_keys)
    with open(folder / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    assert (b"data" in raw) is bytes_keys and raw[b"data" if bytes_keys else "data"].shape == (20, 3072)

    loaded = load_cifar10(str(folder))
    np.testing.assert_array_equal(loaded["train"].images, train.images)
    np.testing.assert_array_equal(loaded["train"].labels, train.labels)
    np.testing.assert_array_equal(loaded["test"].images, test.images)
    np.testing.assert_array_equal(loaded["test"].labels, test.labels)
    assert loaded["train"].class_names == CIFAR10_CLASSES
    assert loaded["train"].images.flags["C_CONTIGUOUS"] and loaded["train"].labels.dtype == np.int64


def test_cifar_row_layout_is_red_green_blue_planes(tmp_path, cifar_sets):
    """Written by hand, not by ftviz's writer: row = 1,024 red, 1,024 green, 1,024 blue bytes,
    each plane row-major; so pixel (y, x) = (row[y*32+x], row[1024+y*32+x], row[2048+y*32+x])."""
    train, test = cifar_sets
    folder = write_cifar10_pickles(tmp_path / "c", train, test)
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": [0, 1, 2, 3], b"data": data,
                     b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}, handle, protocol=2)
    images = load_cifar10_pickles(folder)["test"].images
    for y, x in [(0, 0), (0, 31), (5, 17), (31, 0), (31, 31)]:
        for c in range(3):
            assert images[2, y, x, c] == data[2, c * 1024 + y * 32 + x]


def test_cifar_parent_folder_and_archive(tmp_path, cifar_sets, cifar_dir):
    train, _ = cifar_sets
    from_parent = load_cifar10(str(cifar_dir.parent))
    np.testing.assert_array_equal(from_parent["train"].images, train.images)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_dir, arcname="cifar-10-batches-py")
    from_archive = load_cifar10(str(archive))
    np.testing.assert_array_equal(from_archive["train"].images, train.images)
    np.testing.assert_array_equal(from_archive["test"].labels, from_parent["test"].labels)


def test_cifar_probe_is_stratified_subset_of_test(cifar_dir, cifar_sets):
    _, test = cifar_sets
    config = tiny_config(cifar_dir.parent, data={"dataset": "cifar10", "path": str(cifar_dir), "probe": "test",
                                                 "probe_size": 20, "train_size": 0, "noise_rate": 0.0}).data
    splits = load_splits(config, seed=0)
    assert len(splits.train) == 100 and len(splits.probe) == 20
    # every probe image is one of the test images, with its label; classes stay balanced
    matches = [np.flatnonzero((test.images == image).all(axis=(1, 2, 3))) for image in splits.probe.images]
    assert all(len(m) == 1 for m in matches)
    np.testing.assert_array_equal(test.labels[[m[0] for m in matches]], splits.probe.labels)
    np.testing.assert_array_equal(np.bincount(splits.probe.labels, minlength=10), np.full(10, 2))


@pytest.mark.slow
def test_cifar_folder_end_to_end(tmp_path, cifar_dir, cifar_sets):
    from ftviz.pipeline import run_experiment

    _, test = cifar_sets
    config = tiny_config(
        tmp_path / "runs",
        name="cifar",
        data={"dataset": "cifar10", "path": str(cifar_dir), "probe": "test", "train_size": 0, "noise_rate": 0.1},
        train={"epochs": 2, "batch_size": 20, "snapshot_every": 2},
    )
    run = run_experiment(config, progress=False, log=lambda *_: None)
    manifest = run.manifest()
    assert {s: v["status"] for s, v in manifest["stages"].items()} == dict.fromkeys(manifest["stages"], "done")
    assert manifest["dataset"]["class_names"] == CIFAR10_CLASSES and manifest["dataset"]["train_size"] == 100
    assert run.snapshot_steps() == [0, 2, 4, 6, 8, 10]  # 100 images / 20 per step = 5 steps an epoch
    np.testing.assert_array_equal(run.probe_images(), test.images)
    samples = run.samples()
    np.testing.assert_array_equal(samples["true_label"], test.labels)
    assert samples["is_noisy"].sum() == 3  # 10% of 30 test images flipped, recorded
    assert (samples["class_name"] == np.asarray(CIFAR10_CLASSES)[samples["given_label"]]).all()
    assert run.frames().shape == (6, 30, 2)


# ---- CIFAR-10 bad input -------------------------------------------------------------------
def test_cifar_missing_batch(cifar_dir):
    (cifar_dir / "data_batch_3").unlink()
    with pytest.raises(FtvizError) as error:
        load_cifar10(str(cifar_dir))
    assert_one_line(error, "data_batch_3", "extract")


def test_cifar_corrupt_pickle(cifar_dir):
    blob = (cifar_dir / "data_batch_2").read_bytes()
    (cifar_dir / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FtvizError) as error:
        load_cifar10(str(cifar_dir))
    assert_one_line(error, "data_batch_2", "not a readable CIFAR-10 pickle")


def test_cifar_wrong_image_shape(cifar_dir):
    with open(cifar_dir / "data_batch_4", "wb") as handle:
        pickle.dump({b"data": np.zeros((20, 3000), np.uint8), b"labels": [0] * 20}, handle, protocol=2)
    with pytest.raises(FtvizError) as error:
        load_cifar10(str(cifar_dir))
    assert_one_line(error, "data_batch_4", "(20, 3000)", "3072")


def test_cifar_labels_out_of_range_and_count_mismatch(cifar_dir):
    with open(cifar_dir / "test_batch", "wb") as handle:
        pickle.dump({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 10]}, handle)
    with pytest.raises(FtvizError) as error:
        load_cifar10(str(cifar_dir))
    assert_one_line(error, "test_batch", "labels outside 0..9")
    with open(cifar_dir / "test_batch", "wb") as handle:
        pickle.dump({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}, handle)
    with pytest.raises(FtvizError) as error:
        load_cifar10(str(cifar_dir))
    assert_one_line(error, "3 images but 2 labels")


def test_cifar_pickle_cannot_run_code(cifar_dir, tmp_path):
    target = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(target),))

    with open(cifar_dir / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": Exploit()}, handle)
    with pytest.raises(FtvizError) as error:
        load_cifar10(str(cifar_dir))
    assert_one_line(error, "batches.meta", "refusing")
    assert not target.exists()


def test_cifar_path_that_is_not_there(tmp_path):
    with pytest.raises(FtvizError) as error:
        load_cifar10(str(tmp_path / "nope"))
    assert_one_line(error, "no CIFAR-10 folder", "data.path")


# ---- datasets saved from the hub ----------------------------------------------------------
def test_hf_dataset_saved_to_disk(tmp_path, cifar_sets):
    """The hub's uoft-cs/cifar10 layout (an Image column "img", a ClassLabel "label"), saved
    with save_to_disk as one does for an offline machine, read through the same converter."""
    import datasets
    from PIL import Image

    train, test = cifar_sets
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_CLASSES)})

    def as_dataset(images: ImageSet) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"img": [Image.fromarray(i) for i in images.images], "label": images.labels.tolist()}, features=features
        )

    datasets.DatasetDict({"train": as_dataset(train), "test": as_dataset(test)}).save_to_disk(tmp_path / "saved")
    loaded = load_cifar10(str(tmp_path / "saved"))
    np.testing.assert_array_equal(loaded["train"].images, train.images)  # PNG is lossless
    np.testing.assert_array_equal(loaded["test"].labels, test.labels)
    assert loaded["test"].class_names == CIFAR10_CLASSES


@pytest.mark.slow
def test_hub_offline_with_empty_cache_is_one_line(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ftviz.cli", "run", "-q", "--set", "data.dataset=cifar10", "--set", "data.path=",
         "--set", f"out_dir={tmp_path / 'runs'}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftviz: error: 'uoft-cs/cifar10'"), lines[0]
    assert "HF_HUB_OFFLINE" in lines[0] and "data.path" in lines[0] and "--repo-type dataset" in lines[0]
    assert not (tmp_path / "runs").exists()


# ---- image folders ------------------------------------------------------------------------
def _save(path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for split, count in (("train", 4), ("test", 2)):
        for name in ("cat", "dog", "emu"):
            for i in range(count):
                image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                _save(tmp_path / split / name / f"{i}.png", image)
                written[(split, name, i)] = image
    (tmp_path / "train" / "empty").mkdir()  # no images: not a class
    loaded = load_image_folder(str(tmp_path))
    assert loaded["train"].class_names == ["cat", "dog", "emu"]
    assert loaded["train"].images.shape == (12, 12, 10, 3) and loaded["test"].images.shape == (6, 12, 10, 3)
    np.testing.assert_array_equal(loaded["train"].labels, np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(loaded["test"].images[3], written[("test", "dog", 1)])


def test_image_folder_single_split_mixed_sizes_and_grey(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        for i in range(5):
            _save(tmp_path / name / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    big = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "big.jpg", big)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    _save(tmp_path / "b" / "grey.png", grey)
    first = np.asarray(Image.open(tmp_path / "a" / "0.png"))

    raw = load_image_folder(str(tmp_path))
    assert raw["test"] is None and raw["train"].images.shape == (12, 16, 16, 3)
    np.testing.assert_array_equal(raw["train"].images[0], first)  # common size: untouched
    files = sorted((tmp_path / "a").iterdir())
    big_row = [f.name for f in files].index("big.jpg")
    expected = np.asarray(Image.open(tmp_path / "a" / "big.jpg").convert("RGB").resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(raw["train"].images[big_row], expected)
    grey_row = 6 + [f.name for f in sorted((tmp_path / "b").iterdir())].index("grey.png")
    np.testing.assert_array_equal(raw["train"].images[grey_row], np.repeat(grey[..., None], 3, axis=-1))

    config = tiny_config(tmp_path, data={"dataset": "imagefolder", "path": str(tmp_path), "probe": "test",
                                         "test_fraction": 0.25, "train_size": 0, "noise_rate": 0.0}).data
    splits = load_splits(config, seed=0)
    assert len(splits.train) == 9 and len(splits.probe) == 3


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(FtvizError) as error:
        load_image_folder("")
    assert_one_line(error, "data.path")
    with pytest.raises(FtvizError) as error:
        load_image_folder(str(tmp_path))
    assert_one_line(error, "no class subfolders")
    _save(tmp_path / "train" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _save(tmp_path / "test" / "zebra" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FtvizError) as error:
        load_image_folder(str(tmp_path))
    assert_one_line(error, "zebra")
    (tmp_path / "test" / "zebra" / "0.png").unlink()
    with pytest.raises(FtvizError) as error:
        load_image_folder(str(tmp_path))
    assert_one_line(error, "test has no class subfolders with images")
    shutil.rmtree(tmp_path / "test")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(FtvizError) as error:
        load_image_folder(str(tmp_path))
    assert_one_line(error, "broken.png")
