"""ExRomana data files: the ExRomana pickle format (the published training set's) and the project's own non-pickle
`.npz` format.

The ExRomana file is `np.save` of ``{"TP": [rec, ...], "FP": [rec, ...]}``: a NumPy pickle. It is read by
`safe_pickle`, a restricted pickle reader that never calls anything the file names and bounds every allocation
by the size of the file (the standard Unpickler, even with an allow-list of NumPy globals, lets a forged dtype
state turn file bytes into pointers). The `.npz` format (`samples` (N, 64, 64, 4) float32, `labels` (N,) int8,
a `format` marker) holds no pickle at all and is what the project writes; each member's `.npy` header is checked
against the member's size before anything is allocated. `load` tells the formats apart by content. Every write
is atomic (temporary file beside the target, renamed into place).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from hpo_astro.data import safe_pickle
from hpo_astro.data.npy import (
    NPY_MAGIC,
    ClampedFile,
    describe_descr,
    read_npy_header,
    read_npz_member,
)
from hpo_astro.data.safe_pickle import UnsafePickleError
from hpo_astro.errors import UserError
from hpo_astro.io import atomic_write

__all__ = [
    "CLASSES",
    "CUTOUT_SHAPE",
    "PLANE_NAMES",
    "ExRomanaSet",
    "UnsafePickleError",
    "load",
    "max_records",
    "read_raw",
    "save",
    "save_npz",
    "sha256_file",
    "validate",
]

CLASSES = ("TP", "FP")  # TP = real transient (label 1), FP = bogus (label 0)
CUTOUT_SHAPE = (64, 64, 4)
PLANE_NAMES = ("sci", "ref", "diff", "scorr")  # the usual ZTF order; names are labels, overridable

MAX_RECORDS_ENV = "HPO_ASTRO_MAX_RECORDS"
DEFAULT_MAX_RECORDS = 100_000  # the real file has 4,676; the limit bounds what a file can make us allocate
NPZ_FORMAT = b"hpo-astro/exromana-npz/1"  # stored as the uint8 member `format`, so a reader knows the layout

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip


def max_records() -> int:
    """The most records a file may hold: $HPO_ASTRO_MAX_RECORDS, default 100,000."""
    text = os.environ.get(MAX_RECORDS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RECORDS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_RECORDS_ENV} must be a positive integer, got {text!r}")
    return value


def _too_many(source: str, n: int, limit: int) -> UserError:
    return UserError(
        f"{source}: holds {n} records, more than the limit of {limit} (raise it with {MAX_RECORDS_ENV}=N "
        "if the file is trusted and memory allows)"
    )


@dataclass(frozen=True)
class ExRomanaSet:
    """Cutouts and labels as loaded from an ExRomana file (planes last, as stored)."""

    samples: np.ndarray  # (N, 64, 64, 4) float32
    labels: np.ndarray  # (N,) int64, 1 = TP (real), 0 = FP (bogus)

    @property
    def counts(self) -> dict[str, int]:
        n_tp = int(self.labels.sum())
        return {"TP": n_tp, "FP": len(self.labels) - n_tp}


def _as_float32(samples: np.ndarray) -> np.ndarray:
    # Values beyond float32's range (1e300 in a float64 file) become inf on purpose: they are then non-finite
    # pixels, excluded from the ZScale limits and counted, as the README promises; no warning is wanted.
    with np.errstate(over="ignore", invalid="ignore"):
        return samples.astype(np.float32, copy=False)


def _checked_set(samples: np.ndarray, labels: np.ndarray, source: str) -> ExRomanaSet:
    """The checks every format shares: at least one record, both classes, labels 0/1, the record limit."""
    if len(labels) == 0:
        raise UserError(f"{source}: the file holds no records")
    limit = max_records()
    if len(labels) > limit:
        raise _too_many(source, len(labels), limit)
    if samples.shape != (len(labels), *CUTOUT_SHAPE):
        raise UserError(f"{source}: samples have shape {samples.shape}, expected ({len(labels)}, 64, 64, 4)")
    if not ((labels == 0) | (labels == 1)).all():
        raise UserError(f"{source}: labels must be 1 (TP) or 0 (FP)")
    present = set(np.unique(labels).tolist())
    if len(present) < 2:
        only = "TP" if 1 in present else "FP"
        raise UserError(f"{source}: both TP and FP records are needed, found only {only}")
    return ExRomanaSet(_as_float32(samples), labels.astype(np.int64))


# --- reading ------------------------------------------------------------------------------------------------


def read_raw(path: str | os.PathLike) -> Any:
    """Read what a data file holds, without running anything from it.

    An ExRomana `.npy` (or a bare pickle) gives the stored object: the ``{"TP": [...], "FP": [...]}`` dict, or a
    plain list of records for unlabelled files. An `.npz` file gives an `ExRomanaSet` (already checked), which
    `validate` passes through.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            fh.seek(0)
            if head.startswith(NPY_MAGIC):
                return _read_npy_object(fh, path)
            if head[:1] == b"\x80":
                return _unpickle(fh, path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(_ZIP_MAGICS):
        return _read_npz(path)
    raise UserError(f"{path}: not an ExRomana file (neither a NumPy .npy/.npz file nor a pickle)")


def _unpickle(fh: BinaryIO, path: Path) -> Any:
    try:
        return safe_pickle.load(fh)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _read_npy_object(fh: BinaryIO, path: Path) -> Any:
    available = os.fstat(fh.fileno()).st_size
    header = read_npy_header(fh, available, str(path))
    if not (isinstance(header.descr, str) and re.fullmatch(r"[<>|=]?O", header.descr) and header.shape == ()):
        raise UserError(
            f"{path}: not an ExRomana file: holds a {describe_descr(header.descr)} array of shape "
            f"{header.shape if len(header.shape) <= 8 else '(...)'}, expected a pickled dict"
        )
    # np.save stores a 0-d object array: the reader turns that wrapper into its single element, the dict.
    return _unpickle(fh, path)


def _read_npz(path: Path) -> ExRomanaSet:
    limit = max_records()
    source = str(path)

    def label_shape(shape: tuple[int, ...]) -> None:
        if len(shape) != 1:
            raise UserError(f"{source}: labels have shape {shape}, expected (N,)")
        if shape[0] > limit:
            raise _too_many(source, shape[0], limit)

    try:
        with path.open("rb") as raw, zipfile.ZipFile(ClampedFile(raw)) as zf:  # type: ignore[arg-type]
            names = set(zf.namelist())
            if "format.npy" in names:
                marker = read_npz_member(zf, "format.npy", path, _marker_shape(source))
                if marker.dtype != np.uint8 or marker.tobytes() != NPZ_FORMAT:
                    raise UserError(f"{source}: unknown .npz format marker (expected {NPZ_FORMAT.decode()})")
            labels = read_npz_member(zf, "labels.npy", path, label_shape)
            if labels.dtype.kind not in "iub":
                raise UserError(f"{source}: labels have dtype {labels.dtype}, expected integers")
            n = len(labels)

            def sample_shape(shape: tuple[int, ...]) -> None:
                if shape != (n, *CUTOUT_SHAPE):
                    raise UserError(f"{source}: samples have shape {shape}, expected ({n}, 64, 64, 4) for {n} labels")

            samples = read_npz_member(zf, "samples.npy", path, sample_shape)
            if samples.dtype.kind not in "fiu":
                raise UserError(f"{source}: samples have dtype {samples.dtype}, expected a numeric array")
    except UserError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, struct.error) as exc:
        raise UserError(f"{source}: not a readable .npz file (truncated or corrupt): {exc}") from None
    except NotImplementedError as exc:  # zipfile: a compression method or feature it does not support
        raise UserError(f"{source}: unsupported .npz file: {exc}") from None
    except MemoryError:
        raise UserError(f"{source}: not enough memory to read the file") from None
    return _checked_set(samples, labels, source)


def _marker_shape(source: str) -> Callable[[tuple[int, ...]], None]:
    def check(shape: tuple[int, ...]) -> None:
        if len(shape) != 1 or shape[0] > 256:
            raise UserError(f"{source}: unknown .npz format marker")

    return check


def validate(obj: Any, source: str = "data") -> ExRomanaSet:
    """Check the structure of an ExRomana dict and stack it into arrays. Raises UserError naming the record.

    An `ExRomanaSet` (what `read_raw` gives for an `.npz` file) is checked and returned as it is."""
    if isinstance(obj, ExRomanaSet):
        return _checked_set(obj.samples, obj.labels, source)
    if not isinstance(obj, dict):
        raise UserError(f"{source}: not an ExRomana file: expected a dict with 'TP' and 'FP', got {type(obj).__name__}")
    missing = [c for c in CLASSES if c not in obj]
    if missing:
        raise UserError(f"{source}: not an ExRomana file: missing key(s) {', '.join(missing)}")
    for cls in CLASSES:
        if not isinstance(obj[cls], list | tuple):
            raise UserError(f"{source}: {cls} must be a list of records, got {type(obj[cls]).__name__}")
    total, limit = len(obj["TP"]) + len(obj["FP"]), max_records()
    if total > limit:  # before stacking: that allocates 64 KiB per record
        raise _too_many(source, total, limit)
    samples: list[np.ndarray] = []
    labels: list[int] = []
    for cls in CLASSES:
        checked = _record_samples(obj[cls], source, cls)
        samples += checked
        labels += [1 if cls == "TP" else 0] * len(checked)
    if not samples:
        raise UserError(f"{source}: the file holds no records")
    if len(set(labels)) < 2:
        raise UserError(f"{source}: both TP and FP records are needed, found only {CLASSES[1 - labels[0]]}")
    return ExRomanaSet(np.stack(samples), np.asarray(labels, dtype=np.int64))


def validate_records(records: Any, source: str = "data", name: str = "records") -> np.ndarray:
    """Check a plain list of ExRomana records (no classes, so no labels: what `predict` scores) as each class's
    list in an ExRomana file is checked, and stack their samples: (N, 64, 64, 4) float32. Raises UserError naming
    the record (`SOURCE: NAME[i]`)."""
    if isinstance(records, list | tuple) and len(records) > max_records():  # before stacking, as `validate`
        raise _too_many(source, len(records), max_records())
    samples = _record_samples(records, source, name)
    if not samples:
        raise UserError(f"{source}: the file holds no records")
    return np.stack(samples)


def _record_samples(records: Any, source: str, name: str) -> list[np.ndarray]:
    """The per-record checks `validate` and `validate_records` share: a list of dicts, each with a 'sample' that
    is a numeric (64, 64, 4) array. Returns the samples as float32 (stacked once by the caller, so a file's
    samples are copied once)."""
    if not isinstance(records, list | tuple):
        raise UserError(f"{source}: {name} must be a list of records, got {type(records).__name__}")
    samples: list[np.ndarray] = []
    for i, rec in enumerate(records):
        where = f"{source}: {name}[{i}]"
        if not isinstance(rec, dict):
            raise UserError(f"{where} is a {type(rec).__name__}, expected a dict with a 'sample'")
        if "sample" not in rec:
            raise UserError(f"{where} has no 'sample'")
        sample = rec["sample"]
        if not isinstance(sample, np.ndarray) or sample.shape != CUTOUT_SHAPE:
            shape = sample.shape if isinstance(sample, np.ndarray) else type(sample).__name__
            raise UserError(f"{where}: 'sample' has shape {shape}, expected {CUTOUT_SHAPE}")
        if sample.dtype.kind not in "fiu":
            raise UserError(f"{where}: 'sample' has dtype {sample.dtype}, expected a numeric array")
        samples.append(_as_float32(sample))
    return samples


def load(path: str | os.PathLike) -> ExRomanaSet:
    """Load and validate a data file safely: ExRomana `.npy` (or a bare pickle of the same dict) or `.npz`."""
    return validate(read_raw(path), source=str(path))


# --- writing ------------------------------------------------------------------------------------------------


def save(records: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Write records atomically: in exactly the ExRomana format (``np.save`` of the dict, a pickle) when `path`
    ends in `.npy`, which exists for compatibility with the real data set; as the project's `.npz` otherwise."""
    path = Path(path)
    data = validate(records, source="records")
    if path.suffix.lower() != ".npy":
        return save_npz(data.samples, data.labels, path)
    with atomic_write(path) as fh:
        np.save(fh, np.asarray(records, dtype=object), allow_pickle=True)
    return path


def save_npz(samples: np.ndarray, labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write the non-pickle format atomically: `samples` (N, 64, 64, 4) float32, `labels` (N,) int8 (1 = TP,
    0 = FP) and the uint8 `format` marker, as an uncompressed `.npz` (`np.load(path)` reads it too)."""
    path = Path(path)
    samples, labels = np.asarray(samples), np.asarray(labels)
    if samples.dtype.kind not in "fiu":
        raise UserError(f"samples have dtype {samples.dtype}, expected a numeric array")
    if labels.ndim != 1 or labels.dtype.kind not in "iub":
        raise UserError(f"labels must be a 1-d integer array, got {labels.dtype} of shape {labels.shape}")
    data = _checked_set(samples, labels, "data to save")
    members = {
        "format": np.frombuffer(NPZ_FORMAT, dtype=np.uint8),
        "labels": data.labels.astype(np.int8),
        "samples": np.ascontiguousarray(data.samples, dtype=np.float32),
    }
    with atomic_write(path) as fh, zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in members.items():
            # What np.savez writes, but with a fixed timestamp and system: the same data gives the same bytes, so
            # the file's SHA-256 (part of the data fingerprint) is reproducible on every machine.
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            with zf.open(info, mode="w", force_zip64=True) as member:
                npy_format.write_array(member, array, allow_pickle=False)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
