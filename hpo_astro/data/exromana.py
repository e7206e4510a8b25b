"""The ExRomana file: a NumPy pickle of ``{"TP": [rec, ...], "FP": [rec, ...]}`` (SPEC §3).

Reading never executes code from the file: the pickle stream is decoded by an Unpickler whose
`find_class` admits only the few NumPy reconstructors needed for arrays, so any other global (``os.system``,
``builtins.eval``, ...) is refused before it can be called. Writing is atomic (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from hpo_astro.errors import UserError

CLASSES = ("TP", "FP")  # TP = real transient (label 1), FP = bogus (label 0)
CUTOUT_SHAPE = (64, 64, 4)
PLANE_NAMES = ("sci", "ref", "diff", "scorr")  # the usual ZTF order; names are labels, overridable
OFFICIAL_URL = "https://sites.astro.caltech.edu/~aam/exromana_training_samples.npy"

# Globals a NumPy object-array pickle needs, and nothing else. `_reconstruct` builds an empty ndarray of a
# class that itself goes through find_class, so only plain ndarrays can appear.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.dtypes", "Float32DType"),
    ("numpy.dtypes", "Float64DType"),
    ("numpy.dtypes", "ObjectDType"),
}


class UnsafePickleError(UserError):
    """The file's pickle refers to something other than arrays, dicts, lists, strings and numbers."""


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load: the file's pickle references {module}.{name}, which is not an array, dict, "
            "list, string or number (nothing from the file was executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load: the file's pickle uses persistent ids")


@dataclass(frozen=True)
class ExRomanaSet:
    """Cutouts and labels as loaded from an ExRomana file (planes last, as stored)."""

    samples: np.ndarray  # (N, 64, 64, 4) float32
    labels: np.ndarray  # (N,) int64, 1 = TP (real), 0 = FP (bogus)

    @property
    def counts(self) -> dict[str, int]:
        n_tp = int(self.labels.sum())
        return {"TP": n_tp, "FP": len(self.labels) - n_tp}


def safe_unpickle(stream: BinaryIO) -> Any:
    try:
        return _AllowListUnpickler(stream).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"not a readable pickle (truncated or corrupt): {exc}") from None


def read_raw(path: str | os.PathLike) -> Any:
    """Read the object stored in an ExRomana-style file (a `.npy` object array or a bare pickle)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    with path.open("rb") as fh:
        head = fh.read(6)
        fh.seek(0)
        if head == b"\x93NUMPY":
            return _read_npy_object(fh, path)
        if head[:1] == b"\x80":
            return safe_unpickle(fh)
    raise UserError(f"{path}: not an ExRomana file (neither a NumPy .npy file nor a pickle)")


def _read_npy_object(fh: BinaryIO, path: Path) -> Any:
    try:
        version = npy_format.read_magic(fh)
        reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _fortran, dtype = reader(fh)
    except (ValueError, OSError, SyntaxError) as exc:
        raise UserError(f"{path}: corrupt .npy header: {exc}") from None
    if dtype != np.dtype(object) or shape != ():
        raise UserError(
            f"{path}: not an ExRomana file: holds a {dtype} array of shape {shape}, expected a pickled dict"
        )
    obj = safe_unpickle(fh)
    # np.save stores a 0-d object array; its single element is the dict.
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def validate(obj: Any, source: str = "data") -> ExRomanaSet:
    """Check the structure of an ExRomana dict and stack it into arrays. Raises UserError naming the record."""
    if not isinstance(obj, dict):
        raise UserError(f"{source}: not an ExRomana file: expected a dict with 'TP' and 'FP', got {type(obj).__name__}")
    missing = [c for c in CLASSES if c not in obj]
    if missing:
        raise UserError(f"{source}: not an ExRomana file: missing key(s) {', '.join(missing)}")
    samples: list[np.ndarray] = []
    labels: list[int] = []
    for cls in CLASSES:
        records = obj[cls]
        if not isinstance(records, list | tuple):
            raise UserError(f"{source}: {cls} must be a list of records, got {type(records).__name__}")
        for i, rec in enumerate(records):
            where = f"{source}: {cls}[{i}]"
            if not isinstance(rec, dict):
                raise UserError(f"{where} is a {type(rec).__name__}, expected a dict with a 'sample'")
            if "sample" not in rec:
                raise UserError(f"{where} has no 'sample'")
            sample = rec["sample"]
            if not isinstance(sample, np.ndarray) or sample.shape != CUTOUT_SHAPE:
                shape = getattr(sample, "shape", type(sample).__name__)
                raise UserError(f"{where}: 'sample' has shape {shape}, expected {CUTOUT_SHAPE}")
            if not np.issubdtype(sample.dtype, np.floating) and not np.issubdtype(sample.dtype, np.integer):
                raise UserError(f"{where}: 'sample' has dtype {sample.dtype}, expected a numeric array")
            samples.append(sample.astype(np.float32, copy=False))
            labels.append(1 if cls == "TP" else 0)
    if not samples:
        raise UserError(f"{source}: the file holds no records")
    if len(set(labels)) < 2:
        raise UserError(f"{source}: both TP and FP records are needed, found only {CLASSES[1 - labels[0]]}")
    return ExRomanaSet(np.stack(samples), np.asarray(labels, dtype=np.int64))


def load(path: str | os.PathLike) -> ExRomanaSet:
    """Load and validate an ExRomana file safely."""
    return validate(read_raw(path), source=str(path))


def save(records: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Write records in exactly the ExRomana format (``np.save`` of a dict), atomically."""
    path = Path(path)
    validate(records, source="records")
    with atomic_write(path) as fh:
        np.save(fh, np.asarray(records, dtype=object), allow_pickle=True)
    return path


class atomic_write:
    """Write to a temporary file beside `path` and rename it into place only if the block succeeds."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        return self._fh

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._fh.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    out: Path,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch `url` to `out`, resuming a partial `out.part`, then validate it before moving it into place.

    `progress(done_bytes, total_bytes_or_None)` is called as data arrives.
    """
    import http.client
    import urllib.error
    import urllib.request

    out = Path(out)
    part = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "hpo-astro"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            response = None
        else:
            raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot download {url}: {reason} (no network? fetch the file elsewhere and pass --data PATH)"
        ) from None
    if response is not None:
        with response:
            status = getattr(response, "status", None) or response.getcode()
            resumed = bool(have) and status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
            with part.open("ab" if resumed else "wb") as fh:
                done = have
                if progress:
                    progress(done, total)
                try:
                    while block := response.read(1 << 16):
                        fh.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                except (OSError, http.client.HTTPException) as exc:
                    raise UserError(f"download of {url} interrupted ({exc!r}); run it again to resume") from None
            if total is not None and done < total:
                raise UserError(f"download of {url} interrupted at {done} of {total} bytes; run it again to resume")
    try:
        load(part)
    except UserError as exc:
        part.unlink(missing_ok=True)
        raise UserError(f"downloaded file is not a valid ExRomana file: {exc}") from None
    os.replace(part, out)
    return out
