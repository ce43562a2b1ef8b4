"""More image sources: CIFAR-10 (hub, local pickles) and folders of images, one per class.

Each loader takes ``data.path`` and returns ``{"train": ImageSet, "test": ImageSet | None}``;
:func:`ftviz.data.load_splits` draws the probe set and injects noise from there.

``dataset = "cifar10"``
    ``data.path = ""``: ``uoft-cs/cifar10`` through ``datasets.load_dataset`` (online, or
    from the local cache; ``HF_HUB_OFFLINE=1`` is respected). ``data.path`` = a
    ``cifar-10-batches-py`` folder (the official python pickles, or the folder above it, or
    the ``cifar-10-python.tar.gz`` archive itself), or a dataset saved with
    ``DatasetDict.save_to_disk`` (for machines without network).
``dataset = "imagefolder"``
    ``data.path/<class>/<image>`` (one split, divided with ``data.test_fraction``) or
    ``data.path/train/<class>/...`` plus ``data.path/test/<class>/...``. Every image is
    converted to RGB and resized (bilinear) while it is read to one (H, W): the most common
    size in the folder, or ``data.image_size`` square where that size is larger.

Every file is untrusted input. Images are decoded only as PNG, JPEG, BMP, GIF, WebP, TIFF or
PPM, and only when their header claims at most :data:`MAX_IMAGE_PIXELS`. CIFAR pickles are
read with an unpickler that builds no object but lists, dicts, numbers, bytes and plain
numeric arrays no larger than the bytes the file carries; batches must have CIFAR's layout.
Archives are streamed (never extracted), only regular-file members are accepted, and each
member read is capped at :data:`MAX_CIFAR_FILE_BYTES`.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import tarfile
import warnings
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np

from ftviz.data import ImageSet, register_source
from ftviz.errors import FtvizError

CIFAR10_HUB_ID = "uoft-cs/cifar10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_META = "batches.meta"
CIFAR_SIDE = 32
CIFAR_ROW = 3 * CIFAR_SIDE * CIFAR_SIDE  # bytes per image in a batch: red, green, blue planes
CIFAR_MAX_IMAGES = 60_000  # per batch: all of CIFAR-10 (the official batches hold 10,000)
# A real batch is ~31 MB; no CIFAR file or archive member is read past this.
MAX_CIFAR_FILE_BYTES = 200_000_000
# Decompressed bytes and members scanned in an archive before every CIFAR member is found
# (the real cifar-10-python.tar.gz is ~185 MB and 9 members uncompressed).
MAX_ARCHIVE_BYTES = 1_000_000_000
MAX_ARCHIVE_MEMBERS = 1_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
# Pillow picks a decoder by content, not by name: only these are ever tried (a PostScript
# file named x.png would otherwise reach Ghostscript through the EPS plugin).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
# Per image, read from the header before decoding (a 12,000 x 4,000 photo is 48 Mpixel).
MAX_IMAGE_PIXELS = 50_000_000


# ---- CIFAR-10 ------------------------------------------------------------------------------
@register_source("cifar10")
def load_cifar10(path: str) -> dict:
    """CIFAR-10 as 50,000 train and 10,000 test images (32, 32, 3) uint8 with class names."""
    if not path:
        return load_hf_image_dataset(CIFAR10_HUB_ID)
    location = Path(path).expanduser()
    if location.is_file() and location.name.endswith((".tar.gz", ".tgz", ".tar")):
        return load_cifar10_archive(location)
    if not location.is_dir():
        raise FtvizError(
            f"no CIFAR-10 folder at {path}: set data.path to a cifar-10-batches-py folder, "
            "or to \"\" to load uoft-cs/cifar10 from the hub"
        )
    if (location / "dataset_dict.json").is_file():
        return load_hf_image_dataset(str(location))
    if not (location / CIFAR_META).is_file() and (location / "cifar-10-batches-py").is_dir():
        location = location / "cifar-10-batches-py"
    return load_cifar10_pickles(location)


def load_cifar10_pickles(folder: Path | str) -> dict:
    """Read the official ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``); pickles with bytes keys (the original, Python 2) or str keys."""
    folder = Path(folder)
    needed = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH, CIFAR_META)
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FtvizError(
            f"{folder} is not a complete cifar-10-batches-py folder (missing {', '.join(missing)}); "
            "extract cifar-10-python.tar.gz again or point data.path at the right folder"
        )
    return _cifar_from_blobs({name: _read_cifar_file(folder / name) for name in needed}, str(folder))


def _read_cifar_file(file: Path) -> bytes:
    size = file.stat().st_size
    if size > MAX_CIFAR_FILE_BYTES:
        raise FtvizError(
            f"{file} is {size:,} bytes, more than any CIFAR-10 file ({MAX_CIFAR_FILE_BYTES:,}); "
            "it is not a CIFAR-10 batch: extract cifar-10-python.tar.gz again"
        )
    with open(file, "rb") as handle:
        return handle.read(MAX_CIFAR_FILE_BYTES + 1)  # the file may have grown since stat


def load_cifar10_archive(archive: Path) -> dict:
    """Read ``cifar-10-python.tar.gz`` (or the plain ``.tar``) without extracting it to disk.

    The archive is streamed: members are read in order, only the CIFAR files are kept (each
    at most :data:`MAX_CIFAR_FILE_BYTES`), reading stops once all are found, and a link or
    device member anywhere is refused.
    """
    wanted = {*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH, CIFAR_META}
    blobs: dict[str, bytes] = {}
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=_decompressed(raw, archive), mode="r|") as tar:
            for count, member in enumerate(tar, start=1):
                _check_member(member, count, archive)
                name = PurePosixPath(member.name).name
                if member.isfile() and name in wanted:
                    if name in blobs:
                        raise FtvizError(f"{archive} holds {name} twice; it is not cifar-10-python.tar.gz")
                    blobs[name] = _read_member(tar, member, archive)
                    if len(blobs) == len(wanted):
                        break
    except _ArchiveTooLarge:
        raise FtvizError(
            f"{archive} unpacks to more than {MAX_ARCHIVE_BYTES:,} bytes before holding every CIFAR-10 "
            "file; it is not cifar-10-python.tar.gz (download it again)"
        ) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise FtvizError(f"{archive} is not a readable tar archive ({_one_line(error)}); download it again") from None
    missing = sorted(wanted - set(blobs))
    if missing:
        raise FtvizError(f"{archive} lacks {', '.join(missing)}: it is not cifar-10-python.tar.gz")
    return _cifar_from_blobs(blobs, str(archive))


class _ArchiveTooLarge(Exception):
    """Raised from inside tarfile's reads; turned into one FtvizError by the caller."""


class _CappedReader:
    """A file-like ``read`` that raises once more than ``limit`` bytes have passed through:
    tarfile reads long-name and pax headers whole, before any member is seen."""

    def __init__(self, stream, limit: int):
        self.stream, self.limit, self.passed = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(self.limit + 1 - self.passed if size is None or size < 0 else size)
        self.passed += len(chunk)
        if self.passed > self.limit:
            raise _ArchiveTooLarge
        return chunk


def _decompressed(raw, archive: Path) -> _CappedReader:
    """The tar stream inside ``raw`` (gzip or plain), capped at :data:`MAX_ARCHIVE_BYTES`."""
    import gzip

    magic = raw.read(2)
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
    return _CappedReader(stream, MAX_ARCHIVE_BYTES)


def _check_member(member: tarfile.TarInfo, count: int, archive: Path) -> None:
    """Links and devices are refused wherever they are: the real archive holds only folders and
    regular files, and nothing here may follow a link to another member or file."""
    if count > MAX_ARCHIVE_MEMBERS:
        raise FtvizError(f"{archive} has more than {MAX_ARCHIVE_MEMBERS:,} members; it is not cifar-10-python.tar.gz")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or pipe" if member.isdev() else "special entry"
        raise FtvizError(
            f"{archive}: member {member.name!r} is a {kind}; cifar-10-python.tar.gz holds only folders and "
            "files, download it again"
        )


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    if member.size > MAX_CIFAR_FILE_BYTES:
        raise FtvizError(
            f"{archive}: member {member.name!r} is {member.size:,} bytes, more than any CIFAR-10 file "
            f"({MAX_CIFAR_FILE_BYTES:,}); it is not cifar-10-python.tar.gz"
        )
    with tar.extractfile(member) as handle:  # in memory only: nothing is extracted to disk
        return handle.read(MAX_CIFAR_FILE_BYTES + 1)


def _cifar_from_blobs(blobs: dict[str, bytes], where: str) -> dict:
    meta = _unpickle(blobs[CIFAR_META], f"{where}/{CIFAR_META}")
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise FtvizError(f"{where}/{CIFAR_META} has no label_names list; it is not a CIFAR-10 meta file")
    class_names = [_text(name) for name in names]
    train_parts = [_cifar_batch(blobs[name], f"{where}/{name}", len(class_names)) for name in CIFAR_TRAIN_BATCHES]
    test_images, test_labels = _cifar_batch(blobs[CIFAR_TEST_BATCH], f"{where}/{CIFAR_TEST_BATCH}", len(class_names))
    return {
        "train": ImageSet(
            np.concatenate([part[0] for part in train_parts]),
            np.concatenate([part[1] for part in train_parts]),
            class_names,
        ),
        "test": ImageSet(test_images, test_labels, class_names),
    }


def _cifar_batch(blob: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch: rows of 3,072 bytes (1,024 red, then green, then blue, each row-major)
    -> images (N, 32, 32, 3) uint8 and labels (N,) int64, without a per-image loop.

    The layout is checked before anything is converted or copied: data (N, 3072) integers,
    N <= :data:`CIFAR_MAX_IMAGES`, labels N integers in 0..num_classes-1.
    """
    batch = _unpickle(blob, where)
    if "data" not in batch or "labels" not in batch:
        raise FtvizError(f"{where} has no 'data' and 'labels' entries; it is not a CIFAR-10 batch")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != CIFAR_ROW:
        shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        raise FtvizError(
            f"{where}: data has shape {shape}, CIFAR-10 rows are {CIFAR_ROW} values (3 x 32 x 32); "
            "this is not a CIFAR-10 batch (CIFAR-100 and other sizes are not supported)"
        )
    if len(data) > CIFAR_MAX_IMAGES:
        raise FtvizError(
            f"{where}: {len(data):,} images, more than CIFAR-10 holds ({CIFAR_MAX_IMAGES:,}); it is not a CIFAR-10 batch"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.min(initial=0) < 0 or data.max(initial=0) > 255:
            raise FtvizError(f"{where}: data must be bytes 0..255, got {data.dtype}")
        data = data.astype(np.uint8)
    labels = _cifar_labels(batch["labels"], len(data), where, num_classes)
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_labels(labels, count: int, where: str, num_classes: int) -> np.ndarray:
    """A batch's labels, a list of ints (or an integer array), as (count,) int64; the length
    and the element types are checked before anything is converted."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise FtvizError(
                f"{where}: labels must be a list of integers, got a {labels.dtype} array of shape {labels.shape}"
            )
    elif not isinstance(labels, (list, tuple)):
        raise FtvizError(f"{where}: labels must be a list of integers, got a {type(labels).__name__}")
    if len(labels) != count:
        raise FtvizError(f"{where}: {count} images but {len(labels)} labels; the file is damaged")
    if not isinstance(labels, np.ndarray) and not all(isinstance(label, int) for label in labels):
        raise FtvizError(f"{where}: labels must be a list of integers; the file is damaged")
    if count and (min(labels) < 0 or max(labels) >= num_classes):
        raise FtvizError(f"{where}: labels outside 0..{num_classes - 1} (batches.meta names {num_classes} classes)")
    return np.asarray(labels, dtype=np.int64)


def write_cifar10_pickles(folder: Path | str, train: ImageSet, test: ImageSet, *, bytes_keys: bool = True) -> Path:
    """Write ``train`` (split into the five ``data_batch_*``) and ``test`` in the official
    ``cifar-10-batches-py`` format; the inverse of :func:`load_cifar10_pickles`.

    For tests and benchmarks that need CIFAR-format data offline. Images must be
    (N, 32, 32, 3) uint8. ``bytes_keys`` writes b"data" etc. as the original (Python 2) files do.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda name: name.encode()) if bytes_keys else (lambda name: name)

    def dump(name: str, value: dict) -> None:
        with open(folder / name, "wb") as handle:
            pickle.dump({key(k): v for k, v in value.items()}, handle, protocol=2)

    def batch(images: ImageSet, label: str) -> dict:
        if images.images.shape[1:] != (CIFAR_SIDE, CIFAR_SIDE, 3):
            raise ValueError(f"CIFAR-10 images are (N, 32, 32, 3), got {images.images.shape}")
        rows = np.ascontiguousarray(images.images.transpose(0, 3, 1, 2)).reshape(len(images), -1)
        names = [f"{label.replace(' ', '_')}_{i}.png" for i in range(len(images))]
        return {"batch_label": key(label), "labels": images.labels.astype(int).tolist(), "data": rows,
                "filenames": [key(n) for n in names]}

    for number, part in enumerate(np.array_split(np.arange(len(train)), len(CIFAR_TRAIN_BATCHES)), start=1):
        dump(f"data_batch_{number}", batch(train.subset(part), f"training batch {number} of 5"))
    dump(CIFAR_TEST_BATCH, batch(test, "testing batch 1 of 1"))
    dump(CIFAR_META, {"label_names": [key(n) for n in train.class_names],
                      "num_cases_per_batch": int(np.ceil(len(train) / len(CIFAR_TRAIN_BATCHES))),
                      "num_vis": 3 * CIFAR_SIDE * CIFAR_SIDE})
    return folder


# ---- pickles that can neither run code nor allocate more than they carry ------------------------
# The unpickler hands out the stand-ins below instead of numpy's own functions: numpy's
# __setstate__ trusts its input (a crafted state crashes the interpreter, and
# _reconstruct(ndarray, shape, ...) allocates any shape from a few bytes), so no numpy object
# exists until the whole pickle is read and every array is checked against the bytes it holds.
class _DtypeSpec:
    """``numpy.dtype(name, align, copy)`` then ``__setstate__``: plain numbers only (no object,
    structured, sub-array or string types)."""

    dtype = None

    def __init__(self, name, align=False, copy=False):
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if not isinstance(name, str) or len(name) > 8:
            raise pickle.UnpicklingError("refusing a dtype that is not a plain type name")
        dtype = np.dtype(name)
        if dtype.kind not in "biuf" or dtype.shape or dtype.names:
            raise pickle.UnpicklingError(f"refusing dtype {dtype}: CIFAR pickles hold plain numbers")
        self.dtype = dtype

    def __setstate__(self, state):
        # (version, byte order, sub-array, names, fields, ...): only the byte order may be set.
        if self.dtype is None or not isinstance(state, tuple) or len(state) < 5 or any(
            part is not None for part in state[2:5]
        ):
            raise pickle.UnpicklingError("refusing a dtype state with fields or sub-arrays")
        order = {b"<": "<", b">": ">"}.get(state[1], state[1])
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _ArraySpec:
    """An array as the pickle describes it: shape, dtype, order and the bytes it carries;
    made a numpy array (a view of those bytes) only by :meth:`array`."""

    def __init__(self):
        self.shape = self.dtype = self.data = None
        self.fortran = False

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refusing an array state that is not numpy's")
        self.set(*state[-4:])

    def set(self, shape, dtype, fortran, data) -> "_ArraySpec":
        if not isinstance(shape, tuple) or len(shape) > 32 or not all(
            isinstance(side, int) and side >= 0 for side in shape
        ):
            raise pickle.UnpicklingError(f"refusing array shape {shape!r:.60}")
        if not isinstance(dtype, _DtypeSpec) or dtype.dtype is None:
            raise pickle.UnpicklingError("refusing an array without a plain numeric dtype")
        if not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("refusing an array whose data are not bytes")
        # Python integers: no overflow, however large the claimed shape.
        claimed = int(np.prod(shape, dtype=object)) * dtype.dtype.itemsize
        if claimed != len(data):
            raise pickle.UnpicklingError(
                f"array of shape {shape} {dtype.dtype} needs {claimed:,} bytes but the pickle carries {len(data):,}"
            )
        self.shape, self.dtype, self.fortran, self.data = shape, dtype.dtype, bool(fortran), data
        return self

    def array(self) -> np.ndarray:
        if self.data is None:
            raise pickle.UnpicklingError("refusing an array without its data")
        return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape, order="F" if self.fortran else "C")


_NDARRAY = object()  # what "numpy.ndarray" unpickles to: only _reconstruct accepts it


def _reconstruct(subtype, shape, dtype) -> _ArraySpec:
    """numpy's ``_reconstruct(ndarray, (0,), b"b")``; the real shape comes with the state."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("refusing to reconstruct anything but numpy.ndarray")
    return _ArraySpec()


def _frombuffer(data, dtype, shape, order) -> _ArraySpec:
    """numpy's protocol-5 form ``_frombuffer(buffer, dtype, shape, order)``."""
    return _ArraySpec().set(shape, dtype, order == "F", data)


def _scalar(dtype, data):
    """A numpy scalar (``numpy.int64(3)`` in a list of labels) as the Python number."""
    if not isinstance(dtype, _DtypeSpec) or dtype.dtype is None or not isinstance(data, bytes) \
            or len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("refusing a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


def _latin1_bytes(text, encoding) -> bytes:
    """How protocol 2 stores bytes written by Python 3: ``_codecs.encode(str, "latin1")``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than latin1 bytes")
    return text.encode("latin-1")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run code, these cannot."""

    _allowed = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DtypeSpec,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _check_memo_indices(blob: bytes) -> None:
    """Picklers number their memo entries 0, 1, 2, ... (Python 2 from 1); the C unpickler sizes
    its memo table by the largest index, so one 12-byte pickle could claim a 32 GB table.

    A pass over the opcodes that skips their arguments (``pickletools.genops`` would decode a
    batch's 30 MB of pixels, ~1 s; this takes ~0.1 s) and reads only the memo indices.
    """
    import pickletools

    length_prefix = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
                     pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}
    stream, stored = io.BytesIO(blob), 0
    while True:
        code = stream.read(1)
        opcode = pickletools.code2op.get(code.decode("latin-1"))
        if opcode is None:
            raise pickle.UnpicklingError(f"unknown opcode {code!r}" if code else "pickle data was truncated")
        argument = opcode.arg
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            index = argument.reader(stream)
            if index > stored + 1:
                raise pickle.UnpicklingError(f"memo index {index} out of sequence")
        elif argument is None:
            pass
        elif argument.n >= 0:
            stream.seek(argument.n, io.SEEK_CUR)
        elif argument.n in length_prefix:
            prefix = length_prefix[argument.n]
            (size,) = struct.unpack(prefix, stream.read(struct.calcsize(prefix)))
            stream.seek(max(size, 0), io.SEEK_CUR)
        else:
            argument.reader(stream)  # newline-terminated: short text (protocol 0 ints, GLOBAL names)
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            stored += 1
        if opcode.name == "STOP":
            return


def _unpickle(blob: bytes, where: str) -> dict:
    """A CIFAR pickle as a dict with str keys (the originals have bytes keys: b"data"); its
    top-level arrays are read-only views of the bytes the pickle carries."""
    if len(blob) > MAX_CIFAR_FILE_BYTES:
        raise FtvizError(f"{where} is more than {MAX_CIFAR_FILE_BYTES:,} bytes; it is not a CIFAR-10 file")
    try:
        _check_memo_indices(blob)
        value = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
        if isinstance(value, dict):
            if not all(isinstance(key, (str, bytes)) for key in value):
                raise pickle.UnpicklingError("refusing a dict whose keys are not names")
            value = {_text(key): item.array() if isinstance(item, _ArraySpec) else item for key, item in value.items()}
    except Exception as error:  # truncated, not a pickle, refused, or a pickle of something else
        raise FtvizError(
            f"{where} is not a readable CIFAR-10 pickle ({type(error).__name__}: {_one_line(error)}); "
            "download and extract cifar-10-python.tar.gz again"
        ) from None
    if not isinstance(value, dict):
        raise FtvizError(f"{where} holds a {type(value).__name__}, not a CIFAR-10 batch dict")
    return value


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _one_line(error: BaseException, limit: int = 80) -> str:
    return " ".join(str(error).split())[:limit]


# ---- datasets from the hub (or saved to disk) -----------------------------------------------
def load_hf_image_dataset(source: str) -> dict:
    """A hub id or a ``save_to_disk`` folder with "train" (and "test") splits, an Image column
    and a ClassLabel column, as ImageSets. The images are decoded once, here."""
    try:
        import datasets
    except ImportError:
        raise FtvizError(
            "loading from the dataset hub needs the `datasets` package: pip install 'ftviz[hub]', "
            "or set data.path to a local cifar-10-batches-py folder"
        ) from None
    from ftviz.models.hub import hub_error

    try:
        if Path(source).is_dir():
            splits = datasets.load_from_disk(source)
        else:
            splits = datasets.load_dataset(source)
    except Exception as error:  # ConnectionError, DatasetNotFoundError, OSError, ...
        raise hub_error(source, error, what="dataset", setting="data.path") from None
    if not isinstance(splits, datasets.DatasetDict) or "train" not in splits:
        raise FtvizError(f"{source} has no 'train' split; ftviz needs train (and test) splits")
    test_name = next((name for name in ("test", "validation", "valid") if name in splits), None)
    return {
        "train": image_set_from_hf(splits["train"], f"{source} train"),
        "test": image_set_from_hf(splits[test_name], f"{source} {test_name}") if test_name else None,
    }


def image_set_from_hf(split, where: str) -> ImageSet:
    """Convert a ``datasets.Dataset`` with one Image and one ClassLabel column."""
    import datasets

    features = split.features
    image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    label_column = next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
    if image_column is None or label_column is None:
        raise FtvizError(
            f"{where}: needs an Image column and a ClassLabel column, found {dict(features)}"
        )
    class_names = list(features[label_column].names)
    labels = np.asarray(split[label_column], dtype=np.int64)
    images = _common_size([np.asarray(image.convert("RGB")) for image in split[image_column]], where)
    return ImageSet(images, labels, class_names)


# ---- image folders ------------------------------------------------------------------------
@register_source("imagefolder")
def load_image_folder(path: str, image_size: int | None = None) -> dict:
    """``path/<class>/*.png`` (test None: split later with ``data.test_fraction``) or
    ``path/train/<class>/...`` and ``path/test/<class>/...``.

    Class names are the subfolder names, sorted; subfolders without images are skipped.
    Images are converted to RGB and resized (bilinear) while they are read, one at a time, to
    the folder's most common size, or to ``image_size`` square (``data.image_size``) where the
    most common size is larger: a folder of photos costs image_size² pixels an image, not
    the photos' size. Images already at that size are kept as they are.
    """
    if not path:
        raise FtvizError("dataset 'imagefolder' needs data.path: a folder with one subfolder of images per class")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FtvizError(f"no image folder at {path}: set data.path to a folder with one subfolder per class")
    if (root / "train").is_dir():
        train_files, class_names = _class_files(root / "train")
        test_files = None
        test_root = next((root / n for n in ("test", "val", "validation") if (root / n).is_dir()), None)
        if test_root is not None:
            test_files, test_classes = _class_files(test_root)
            unknown = sorted(set(test_classes) - set(class_names))
            if unknown:
                raise FtvizError(f"{test_root} has classes {unknown} that {root / 'train'} lacks; make the two match")
            test_files = [(file, class_names.index(test_classes[label])) for file, label in test_files]
    else:
        train_files, class_names = _class_files(root)
        test_files = None
    every = train_files + (test_files or [])
    images = _read_images([file for file, _ in every], image_size)
    labels = np.asarray([label for _, label in every], dtype=np.int64)
    count = len(train_files)
    return {
        "train": ImageSet(images[:count], labels[:count], class_names),
        "test": ImageSet(images[count:], labels[count:], class_names) if test_files is not None else None,
    }


def _class_files(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """[(image file, class index)] and the class names (subfolders holding images, sorted)."""
    files, class_names = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(f for f in sub.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if images:
            files += [(f, len(class_names)) for f in images]
            class_names.append(sub.name)
    if not files:
        raise FtvizError(f"{folder} has no class subfolders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, class_names


def _read_images(files: list[Path], image_size: int | None) -> np.ndarray:
    """Decode ``files`` into one (N, H, W, 3) uint8 array, each resized as it is read.

    Two passes: the headers alone give every size (and refuse what is not an image or is too
    large before anything is decoded), then each image is decoded and resized into its row,
    so only one image is ever held at full size.
    """
    sizes = [_image_header_size(file) for file in files]
    height, width = _target_size(sizes, image_size)
    images = np.empty((len(files), height, width, 3), dtype=np.uint8)
    for row, file in enumerate(files):
        images[row] = _read_image(file, (height, width))
    return images


def _target_size(sizes: list[tuple[int, int]], image_size: int | None) -> tuple[int, int]:
    """The most common (H, W); (image_size, image_size) where that is larger in either side."""
    if not sizes:
        return CIFAR_SIDE, CIFAR_SIDE
    (height, width), _ = Counter(sizes).most_common(1)[0]
    if image_size and max(height, width) > image_size:
        return image_size, image_size
    return height, width


@contextmanager
def _open_image(file: Path):
    """``PIL.Image.open`` limited to :data:`IMAGE_FORMATS` and :data:`MAX_IMAGE_PIXELS`; every
    failure, to decode or to pass those checks, is one FtvizError naming the file."""
    from PIL import Image, UnidentifiedImageError

    Image.init()  # registers WebP and TIFF too; formats Pillow was built without are skipped
    formats = [name for name in IMAGE_FORMATS if name in Image.OPEN]
    failures = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
    bombs = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            # Pillow's own limit (89 Mpixel warns, 179 Mpixel raises) lies above ours: both are refusals here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=formats) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise FtvizError(_too_many_pixels(file, f"{width} x {height} = {width * height:,}"))
                yield image
    except bombs as error:
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        raise FtvizError(_too_many_pixels(file, f"{int(claimed[1]):,}" if claimed else "too many")) from None
    except failures as error:
        kind = "not a PNG, JPEG, BMP, GIF, WebP, TIFF or PPM image" \
            if isinstance(error, UnidentifiedImageError) else type(error).__name__
        raise FtvizError(f"cannot read image {file} ({kind}); delete or replace it") from None


def _too_many_pixels(file: Path, pixels: str) -> str:
    return f"image {file} has {pixels} pixels, more than ftviz decodes ({MAX_IMAGE_PIXELS:,}); shrink or delete it"


def _image_header_size(file: Path) -> tuple[int, int]:
    """(H, W) from the header alone: Pillow decodes no pixels until asked."""
    with _open_image(file) as image:
        return image.size[1], image.size[0]


def _read_image(file: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image as (H, W, 3) uint8 RGB, resized (bilinear) to ``size`` = (H, W) if given.

    A JPEG at least twice the target size in both sides is decoded at a reduced scale
    (``Image.draft``: 1/2, 1/4 or 1/8, never below the target) before the resize.
    """
    from PIL import Image

    with _open_image(file) as image:
        shrink = min(image.size[0] // size[1], image.size[1] // size[0]) if size is not None else 1
        if image.format in ("JPEG", "MPO") and shrink >= 2:
            image.draft(None, (size[1], size[0]))
        rgb = image.convert("RGB")
        if size is not None and rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(rgb)


def _common_size(images: list[np.ndarray], where: str) -> np.ndarray:
    """Stack RGB images (H, W, 3) uint8 into (N, H, W, 3), resizing the ones whose size
    differs from the most common (H, W) with PIL's bilinear filter."""
    if not images:
        return np.zeros((0, CIFAR_SIDE, CIFAR_SIDE, 3), dtype=np.uint8)
    sizes = Counter(image.shape[:2] for image in images)
    (height, width), _ = sizes.most_common(1)[0]
    if len(sizes) > 1:
        from PIL import Image

        images = [
            image if image.shape[:2] == (height, width)
            else np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
            for image in images
        ]
    return np.stack(images)
