"""Loaders for standard datasets the user already has on disk (nothing is ever downloaded).

* MNIST-style IDX folders (MNIST, Fashion-MNIST, anything with the same four file names),
  each file optionally gzip-compressed.
* CIFAR-10 "binary version" folders (``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``).

Every file is validated (magic numbers, sizes against the header or record length, image/label
counts, label range) and any problem raises :class:`DataError` naming the offending file.
Pixels are scaled to [0, 1] float32 without mean/std normalisation.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from deepshrink.core.errors import DataError
from deepshrink.data.base import DataSplits, make_splits

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim

CIFAR_SUBFOLDER = "cifar-10-batches-bin"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_CLASSES = 10

PathLike = str | os.PathLike[str]


def _folder(path: PathLike, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{what} path {folder} is not a folder")
    return folder


MAX_FILE_BYTES = 1 << 30  # one dataset file, decompressed (full MNIST: 47 MB; CIFAR-10: 30 MB per batch)


def _read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read a file, transparently gunzipping ``*.gz`` (never more than ``limit`` bytes, so a small gzip
    "bomb" is refused instead of filling memory); unreadable or corrupt files raise DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read(limit + 1)
        else:
            if path.stat().st_size > limit:
                raise DataError(f"{path}: {path.stat().st_size} bytes, over the {limit}-byte limit of one file")
            data = path.read_bytes()
        if len(data) > limit:
            raise DataError(f"{path}: decompresses to more than the {limit}-byte limit of one file")
        return data
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{path}: corrupt or truncated gzip file ({reason})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing file {folder / stem} (or {stem}.gz)")


def parse_idx(path: Path, data: bytes, magic: int) -> np.ndarray:
    """Decode an unsigned-byte IDX file whose header must carry ``magic``; sizes must match exactly."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong IDX magic 0x{found:08x}, expected 0x{magic:08x}")
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, needs {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if min(dims) == 0:
        raise DataError(f"{path}: IDX header has an empty dimension {dims}")
    need = header + math.prod(dims)  # Python ints: a hostile header cannot wrap around to a small size
    if len(data) < need:
        raise DataError(
            f"{path}: truncated, header says {dims} ({need} bytes) but the file has {len(data)} bytes"
        )
    if len(data) > need:
        raise DataError(f"{path}: {len(data) - need} unexpected trailing bytes after the {dims} IDX payload")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(folder: Path, part: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    img_path = _find_idx(folder, IDX_FILES[part][0])
    lbl_path = _find_idx(folder, IDX_FILES[part][1])
    images = parse_idx(img_path, _read_file(img_path), IDX_IMAGES_MAGIC)
    labels = parse_idx(lbl_path, _read_file(lbl_path), IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    if int(labels.max()) >= num_classes:
        raise DataError(f"{lbl_path}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    return images, labels


def load_idx_folder(path: PathLike, name: str = "mnist") -> DataSplits:
    """Load an MNIST-format IDX folder (MNIST, Fashion-MNIST): samples (1, H, W) scaled to [0, 1]."""
    folder = _folder(path, "IDX dataset")
    x_tr, y_tr = _load_idx_pair(folder, "train", 10)
    x_te, y_te = _load_idx_pair(folder, "test", 10)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(
            f"{folder}: train images are {x_tr.shape[1]}x{x_tr.shape[2]} but test images are "
            f"{x_te.shape[1]}x{x_te.shape[2]}"
        )

    def scale(images: np.ndarray) -> np.ndarray:
        return images[:, None].astype(np.float32) / np.float32(255.0)

    return make_splits(
        name,
        scale(x_tr),
        y_tr.astype(np.int64),
        scale(x_te),
        y_te.astype(np.int64),
        num_classes=10,
        description=f"IDX files from {folder}, 1x{x_tr.shape[1]}x{x_tr.shape[2]} scaled to [0,1], "
        f"published {len(y_tr)}/{len(y_te)} split",
    )


# ---------------------------------------------------------------- CIFAR-10 binary


def _cifar_root(folder: Path) -> Path:
    """The folder itself, or its ``cifar-10-batches-bin`` subfolder when the batches live there."""
    sub = folder / CIFAR_SUBFOLDER
    if sub.is_dir() and not _has_cifar_files(folder):
        return sub
    return folder


def _has_cifar_files(folder: Path) -> bool:
    return any((folder / f).is_file() for f in (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE))


def parse_cifar_batch(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 binary batch into uint8 images (n, 3, 32, 32) and uint8 labels (n,)."""
    if len(data) == 0:
        raise DataError(f"{path}: empty CIFAR-10 batch file")
    if len(data) % CIFAR_RECORD:
        raise DataError(
            f"{path}: size {len(data)} bytes is not a multiple of the {CIFAR_RECORD}-byte CIFAR-10 record "
            "(truncated or not a CIFAR-10 binary batch)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0]
    bad = int(labels.max())
    if bad >= CIFAR_CLASSES:
        row = int(np.argmax(labels >= CIFAR_CLASSES))
        raise DataError(f"{path}: record {row} has label {bad}, expected 0..{CIFAR_CLASSES - 1}")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10_folder(path: PathLike) -> DataSplits:
    """Load the CIFAR-10 binary batches: any train batches present (at least one) plus the test batch."""
    root = _cifar_root(_folder(path, "CIFAR-10"))
    train_paths = [root / f for f in CIFAR_TRAIN_FILES if (root / f).is_file()]
    if not train_paths:
        first = root / CIFAR_TRAIN_FILES[0]
        raise DataError(f"missing file {first} (need at least one of data_batch_1..5.bin)")
    test_path = root / CIFAR_TEST_FILE
    if not test_path.is_file():
        raise DataError(f"missing file {test_path}")
    train = [parse_cifar_batch(p, _read_file(p)) for p in train_paths]
    x_te, y_te = parse_cifar_batch(test_path, _read_file(test_path))
    x_tr = np.concatenate([x for x, _ in train])
    y_tr = np.concatenate([y for _, y in train])
    names = ", ".join(p.name for p in train_paths)
    return make_splits(
        "cifar10",
        x_tr.astype(np.float32) / np.float32(255.0),
        y_tr.astype(np.int64),
        x_te.astype(np.float32) / np.float32(255.0),
        y_te.astype(np.int64),
        num_classes=CIFAR_CLASSES,
        description=f"CIFAR-10 binary batches from {root} ({names} + {CIFAR_TEST_FILE}), "
        "3x32x32 scaled to [0,1]",
    )


# ---------------------------------------------------------------- detection


def detect_folder_format(path: PathLike) -> str:
    """Return ``"idx"`` or ``"cifar10"`` from the file names present in ``path``."""
    folder = _folder(path, "dataset")
    idx_stems = [stem for pair in IDX_FILES.values() for stem in pair]
    if any((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in idx_stems):
        return "idx"
    if _has_cifar_files(folder) or _has_cifar_files(folder / CIFAR_SUBFOLDER):
        return "cifar10"
    raise DataError(
        f"cannot tell the dataset format of {folder}: looked for {IDX_FILES['train'][0]}[.gz] etc. "
        f"(MNIST/Fashion-MNIST IDX) and data_batch_N.bin / {CIFAR_TEST_FILE} "
        f"(CIFAR-10 binary, also under {CIFAR_SUBFOLDER}/)"
    )
