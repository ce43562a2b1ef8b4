"""Hostile input to ftviz.sources: files that pretend to be images, decompression bombs,
pickles that claim more than they carry, archives with links, devices and oversize members.

Every case is a few bytes the test writes itself; each must end in one FtvizError line that
names the file, before anything large is allocated, and write nothing.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import zlib

import numpy as np
import pytest

from ftviz.config import DataConfig
from ftviz.data import load_splits
from ftviz.errors import FtvizError
from ftviz.sources import (
    MAX_CIFAR_FILE_BYTES,
    MAX_IMAGE_PIXELS,
    load_cifar10,
    load_image_folder,
    write_cifar10_pickles,
)
from tests.test_sources import cifar_like


def files_under(folder) -> dict:
    return {path: path.stat().st_size for path in folder.rglob("*")}


def refused(call, *fragments: str, folder) -> str:
    """Run ``call``: it must raise one FtvizError line holding every fragment, and leave
    ``folder`` as it was."""
    before = files_under(folder)
    with pytest.raises(FtvizError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert files_under(folder) == before
    return message


# ---- images -------------------------------------------------------------------------------
def save_image(path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def image_folder(root, side: int = 8):
    """Two classes of three random side x side PNGs."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(3):
            save_image(root / name / f"{i}.png", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (valid CRCs) claims width x height RGB pixels; its data is 64 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame claim width x height; a few bytes of LZW data."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + frame + b"\x02\x02\x4c\x01\x00;"


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"


def test_postscript_named_png_is_never_decoded(tmp_path):
    """Pillow would open it as EPS by its content and run Ghostscript on it."""
    root = image_folder(tmp_path / "images")
    (root / "a" / "x.png").write_bytes(POSTSCRIPT)
    refused(lambda: load_image_folder(str(root)), "x.png", "not a PNG, JPEG, BMP, GIF, WebP, TIFF or PPM image",
            folder=tmp_path)


@pytest.mark.parametrize(
    "name, blob, claimed",
    [
        ("bomb.png", png_claiming(20_000, 20_000), "400,000,000 pixels"),  # past Pillow's own limit
        ("bomb.gif", gif_claiming(20_000, 20_000), "400,000,000 pixels"),
        ("big.png", png_claiming(8_000, 8_000), "8000 x 8000 = 64,000,000 pixels"),  # under Pillow's, over ftviz's
        ("big.gif", gif_claiming(8_000, 8_000), "8000 x 8000 = 64,000,000 pixels"),
    ],
    ids=["png-400M", "gif-400M", "png-64M", "gif-64M"],
)
def test_decompression_bomb_is_refused_from_its_header(tmp_path, name, blob, claimed):
    assert len(blob) < 100
    root = image_folder(tmp_path / "images")
    (root / "b" / name).write_bytes(blob)
    refused(lambda: load_image_folder(str(root)), name, claimed, f"more than ftviz decodes ({MAX_IMAGE_PIXELS:,})",
            folder=tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_is_one_line(tmp_path, suffix):
    root = image_folder(tmp_path / "images")
    whole = tmp_path / f"whole{suffix}"
    save_image(whole, np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    blob = whole.read_bytes()
    (root / "a" / f"cut{suffix}").write_bytes(blob[: len(blob) // 2])
    refused(lambda: load_image_folder(str(root)), f"cut{suffix}", "delete or replace it", folder=tmp_path)


def test_large_images_are_resized_while_reading(tmp_path):
    """Ten 600 x 400 photos become 16 x 16 rows without ever being held together at full size
    (at full size they would hold 7.2 MB of numpy memory; tracemalloc sees numpy's buffers)."""
    from PIL import Image

    root = tmp_path / "photos"
    yy, xx = np.mgrid[:400, :600]
    for i in range(10):
        photo = np.stack([(xx * (i + 1)) % 256, yy % 256, (xx + yy + 40 * i) % 256], axis=-1).astype(np.uint8)
        save_image(root / ("even" if i % 2 == 0 else "odd") / f"{i}{'.jpg' if i < 4 else '.png'}", photo)
    config = DataConfig(dataset="imagefolder", path=str(root), image_size=16, noise_rate=0.0)
    Image.init()  # imported before measuring: only image memory counts
    tracemalloc.start()
    try:
        splits = load_splits(config, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert splits.train.images.shape == (10, 16, 16, 3) and splits.train.images.dtype == np.uint8
    assert peak < 600 * 400 * 3 * 2  # under two photos at full size
    # PNGs are resized exactly as Pillow resizes the decoded photo; JPEGs are decoded at 1/8
    # scale first (Image.draft), so they agree in colour, not to the last bit.
    in_order = sorted((root / "even").iterdir()) + sorted((root / "odd").iterdir())  # classes, then files, sorted
    rows = {path.name: row for row, path in enumerate(in_order)}
    for name in ("4.png", "7.png"):
        folder = "even" if int(name[0]) % 2 == 0 else "odd"
        expected = np.asarray(Image.open(root / folder / name).convert("RGB").resize((16, 16), Image.BILINEAR))
        np.testing.assert_array_equal(splits.train.images[rows[name]], expected)
    full = np.asarray(Image.open(root / "even" / "0.jpg").convert("RGB"), dtype=float)
    assert np.abs(splits.train.images[rows["0.jpg"]].mean(axis=(0, 1)) - full.mean(axis=(0, 1))).max() < 6


def test_small_images_are_not_enlarged_to_image_size(tmp_path):
    """data.image_size shrinks large images; a folder already smaller keeps its own size, as before."""
    from PIL import Image

    root = image_folder(tmp_path / "images", side=8)
    first = np.asarray(Image.open(root / "a" / "0.png"))
    raw = load_image_folder(str(root), image_size=32)
    assert raw["train"].images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(raw["train"].images[0], first)


# ---- pickles ------------------------------------------------------------------------------
class Call:
    """Pickles as ``function(*args)``, optionally followed by ``__setstate__(state)``."""

    def __init__(self, function, args: tuple, state=None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


def numpy_function(module_tail: str, name: str):
    import importlib

    module = importlib.import_module(f"numpy._core.{module_tail}")
    return getattr(module, name)


def empty_array(shape, dtype="B", state=None) -> Call:
    """numpy's own reconstructor: ``_reconstruct(ndarray, shape, dtype)`` allocates ``shape``
    whatever the pickle carries; numpy itself writes shape (0,) and sends the data as state."""
    return Call(numpy_function("multiarray", "_reconstruct"), (np.ndarray, shape, dtype.encode()), state)


@pytest.fixture()
def cifar_dir(tmp_path):
    train, test = cifar_like(train_per_class=2, test_per_class=1)
    return write_cifar10_pickles(tmp_path / "cifar-10-batches-py", train, test)


def write_batch(folder, name: str, batch: dict) -> int:
    blob = pickle.dumps({key.encode(): value for key, value in batch.items()}, protocol=2)
    (folder / name).write_bytes(blob)
    return len(blob)


def test_tiny_pickle_cannot_claim_a_huge_array(cifar_dir):
    """The issue's reproduction: a few hundred bytes that make numpy allocate 100,000 images."""
    size = write_batch(cifar_dir, "data_batch_1", {"data": empty_array((100_000, 32, 32, 3)), "labels": [0, 1]})
    assert size < 300
    refused(lambda: load_cifar10(str(cifar_dir)), "data_batch_1", "without its data", folder=cifar_dir.parent)


def test_tiny_pickle_cannot_pass_as_a_full_batch(cifar_dir):
    """Rows and labels both allocated from their shapes alone: unchecked, this is 100,000
    images of whatever memory held (with labels from the same garbage) from under 300 bytes."""
    batch = {"data": empty_array((100_000, 3072)), "labels": empty_array((100_000,))}
    size = write_batch(cifar_dir, "test_batch", batch)
    assert size < 300
    refused(lambda: load_cifar10(str(cifar_dir)), "test_batch", "without its data", folder=cifar_dir.parent)


def test_array_state_must_carry_its_bytes(cifar_dir):
    state = (1, (3, 3072), np.dtype("u1"), False, bytes(3072))  # one row of data for three rows
    write_batch(cifar_dir, "data_batch_2", {"data": empty_array((0,), state=state), "labels": [0, 1, 2]})
    refused(lambda: load_cifar10(str(cifar_dir)), "data_batch_2", "needs 9,216 bytes but the pickle carries 3,072",
            folder=cifar_dir.parent)


def test_labels_that_are_not_a_flat_list_are_refused_before_conversion(cifar_dir):
    """Two labels, each the same shared list of 100,000 ints (the pickle stores it once):
    converting them to an array first would build 200,000 labels, or far more."""
    shared = list(range(100_000))
    write_batch(cifar_dir, "data_batch_3", {"data": np.zeros((2, 3072), np.uint8), "labels": [shared, shared]})
    refused(lambda: load_cifar10(str(cifar_dir)), "data_batch_3", "labels must be a list of integers",
            folder=cifar_dir.parent)


def test_label_list_longer_than_the_batch(cifar_dir):
    write_batch(cifar_dir, "data_batch_4", {"data": np.zeros((2, 3072), np.uint8), "labels": [0] * 100_000})
    refused(lambda: load_cifar10(str(cifar_dir)), "data_batch_4", "2 images but 100000 labels", folder=cifar_dir.parent)


def test_oversize_cifar_file_is_not_read(cifar_dir):
    with open(cifar_dir / "data_batch_5", "r+b") as handle:
        handle.truncate(MAX_CIFAR_FILE_BYTES + 1)  # sparse: no disk used, nothing read
    refused(lambda: load_cifar10(str(cifar_dir)), "data_batch_5", f"{MAX_CIFAR_FILE_BYTES + 1:,} bytes",
            folder=cifar_dir.parent)


def run_loader_in_child(path, *, memory_limit: int = 2_000_000_000) -> subprocess.CompletedProcess:
    """load_cifar10(path) in a child process with a memory ceiling: a pickle that crashes or
    exhausts a loader that does not refuse it fails this test rather than the test run."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({memory_limit}, {memory_limit}))
        from ftviz.errors import FtvizError
        from ftviz.sources import load_cifar10
        try:
            load_cifar10({str(path)!r})
        except FtvizError as error:
            print(error)
            sys.exit(2)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_object_array_state_does_not_crash_the_interpreter(cifar_dir):
    """numpy's own __setstate__ believes a state's length: this one crashes CPython (SIGSEGV)."""
    state = (1, (1_000,), np.dtype("O"), False, [1, 2, 3])
    write_batch(cifar_dir, "data_batch_1", {"data": empty_array((0,), state=state), "labels": [0]})
    result = run_loader_in_child(cifar_dir)
    assert result.returncode == 2, (result.returncode, result.stderr[-500:])
    assert "data_batch_1" in result.stdout and "refusing dtype object" in result.stdout, result.stdout


def test_subarray_dtype_state_is_refused(cifar_dir):
    """A dtype's state can turn uint8 into a (1,000,000,)-element sub-array type."""
    dtype = Call(np.dtype, ("u1", False, True), (3, "|", (np.dtype("u1"), (1_000_000,)), None, None, -1, -1, 0))
    write_batch(cifar_dir, "data_batch_2", {"data": empty_array((0,), state=(1, (1,), dtype, False, b"\x00")),
                                             "labels": [0]})
    refused(lambda: load_cifar10(str(cifar_dir)), "data_batch_2", "fields or sub-arrays", folder=cifar_dir.parent)


def test_memo_index_cannot_size_the_unpickler(cifar_dir):
    """Twelve bytes: LONG_BINPUT 2**31 - 1 makes the C unpickler size its memo table at 32 GB."""
    (cifar_dir / "batches.meta").write_bytes(b"\x80\x02}r\xff\xff\xff\x7f.")
    result = run_loader_in_child(cifar_dir)
    assert result.returncode == 2, (result.returncode, result.stderr[-500:])
    assert "batches.meta" in result.stdout and "memo index 2147483647" in result.stdout, result.stdout


# ---- archives -----------------------------------------------------------------------------
def cifar_archive(path, cifar_dir, *extra: tuple[tarfile.TarInfo, bytes | None], first: bool = False):
    """cifar_dir as cifar-10-python.tar.gz, with ``extra`` members before or after the real ones."""
    with tarfile.open(path, "w:gz") as tar:
        if not first:
            tar.add(cifar_dir, arcname="cifar-10-batches-py")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if first:
            tar.add(cifar_dir, arcname="cifar-10-batches-py")
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def test_oversize_archive_member_is_not_read(tmp_path):
    """A member header claiming 300 MB: refused from the header, before a byte of it is read."""
    header = member("cifar-10-batches-py/data_batch_1", size=300_000_000).tobuf(format=tarfile.GNU_FORMAT)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(gzip.compress(header))
    refused(lambda: load_cifar10(str(archive)), "cifar-10-python.tar.gz", "'cifar-10-batches-py/data_batch_1'",
            "300,000,000 bytes", folder=tmp_path)


@pytest.mark.parametrize(
    "info, kind",
    [
        (member("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, linkname="/etc/passwd"), "link"),
        (member("cifar-10-batches-py/data_batch_1", tarfile.LNKTYPE, linkname="cifar-10-batches-py/meta"), "link"),
        (member("cifar-10-batches-py/zero", tarfile.CHRTYPE, devmajor=1, devminor=5), "device or pipe"),
        (member("cifar-10-batches-py/pipe", tarfile.FIFOTYPE), "device or pipe"),
    ],
    ids=["symlink", "hardlink", "device", "fifo"],
)
def test_archive_links_and_devices_are_refused(tmp_path, cifar_dir, info, kind):
    archive = cifar_archive(tmp_path / "cifar-10-python.tar.gz", cifar_dir, (info, None), first=True)
    refused(lambda: load_cifar10(str(archive)), "cifar-10-python.tar.gz", repr(info.name), f"is a {kind}",
            folder=tmp_path)


def test_archive_with_endless_members_is_refused(tmp_path, cifar_dir):
    folders = [(member(f"junk/{i}", tarfile.DIRTYPE), None) for i in range(1_001)]
    archive = cifar_archive(tmp_path / "cifar-10-python.tar.gz", cifar_dir, *folders, first=True)
    refused(lambda: load_cifar10(str(archive)), "cifar-10-python.tar.gz", "more than 1,000 members", folder=tmp_path)


def test_archive_reading_stops_at_the_last_cifar_member(tmp_path, cifar_dir):
    """Members after the CIFAR files are never read: here, one that would be refused."""
    trailing = (member("cifar-10-batches-py/readme", tarfile.SYMTYPE, linkname="/etc/passwd"), None)
    archive = cifar_archive(tmp_path / "cifar-10-python.tar.gz", cifar_dir, trailing)
    before = files_under(tmp_path)
    loaded = load_cifar10(str(archive))
    assert loaded["train"].images.shape == (20, 32, 32, 3) and len(loaded["test"]) == 10
    assert files_under(tmp_path) == before
