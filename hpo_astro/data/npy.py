"""Bounded readers of NumPy's file formats that trust nothing a file declares: a `.npy` header is parsed as a
literal and checked against the bytes really there; an `.npz` member must be a plain numeric array whose size is
exactly what its header declares, and deflated no more than real cutouts deflate (a zip bomb stops here)."""

from __future__ import annotations

import ast
import io
import math
import os
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hpo_astro.errors import UserError

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 10_000  # NumPy's own default `max_header_size`
PLAIN_DESCR = re.compile(r"[<>|=]?(f2|f4|f8|i1|i2|i4|i8|u1|u2|u4|u8|b1)")
READ_CHUNK = 1 << 24
# A deflated .npz member may unpack to at most this many times its compressed size (plus 1 MiB): float cutouts with
# sky noise compress by less than 2x, while a zip bomb of zeros reaches 1000x (hpo-astro itself writes them stored).
MAX_DEFLATE_RATIO = 20


@dataclass(frozen=True)
class NpyHeader:
    descr: object
    fortran_order: bool
    shape: tuple[int, ...]
    size: int  # bytes from the magic string to the end of the header: where the data starts


def read_npy_header(fh: BinaryIO, available: int, where: str) -> NpyHeader:
    """Parse a `.npy` header from `fh` without trusting it: its length is checked against `available` (the bytes
    the file or zip member holds) before it is read, and its dict must have exactly NumPy's three keys."""

    def corrupt(why: str) -> UserError:
        return UserError(f"{where}: corrupt .npy header: {why}")

    prefix = fh.read(8)
    if len(prefix) < 8 or not prefix.startswith(NPY_MAGIC):
        raise corrupt("no NumPy magic string")
    version = (prefix[6], prefix[7])
    if version == (1, 0):
        length_format = "<H"
    elif version in ((2, 0), (3, 0)):
        length_format = "<I"
    else:
        raise corrupt(f"unknown format version {version[0]}.{version[1]}")
    length_bytes = fh.read(struct.calcsize(length_format))
    if len(length_bytes) != struct.calcsize(length_format):
        raise corrupt("the file ends inside the header")
    length = struct.unpack(length_format, length_bytes)[0]
    size = 8 + len(length_bytes) + length
    if length > MAX_NPY_HEADER:
        raise corrupt(f"the header declares {length} bytes (NumPy accepts at most {MAX_NPY_HEADER})")
    if size > available:
        raise corrupt(f"the header declares {length} bytes but the file ends before")
    raw = fh.read(length)
    if len(raw) != length:
        raise corrupt("the file ends inside the header")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if version == (3, 0) else "latin-1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise corrupt("the header is not a Python literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise corrupt("the header is not a dict of descr, fortran_order and shape")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):  # bool is not a size
        raise corrupt("the shape is not a tuple of non-negative integers")
    if len(shape) > 32:
        raise corrupt(f"{len(shape)} dimensions")
    if not isinstance(fortran, bool):
        raise corrupt("fortran_order is not a boolean")
    return NpyHeader(header["descr"], fortran, shape, size)


def describe_descr(descr: object) -> str:
    return repr(descr)[:60] if isinstance(descr, str) else f"a {type(descr).__name__} dtype description"


class ClampedFile:
    """A read-only file whose `read(n)` never asks for more than the file holds: zipfile trusts sizes from the
    archive's directory, and a buffered read allocates the size it is asked for before reading."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._size = os.fstat(fh.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def seekable(self) -> bool:
        return True


def read_npz_member(
    zf: zipfile.ZipFile, name: str, path: Path, check_shape: Callable[[tuple[int, ...]], None]
) -> np.ndarray:
    """One `.npy` member of an `.npz`, refused unless its header is plain and its size is exactly what the header
    declares, so a crafted header or a zip bomb allocates no more than the member really holds."""
    where = f"{path}: member {name}"
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise UserError(f"{path}: not an ExRomana .npz file: no {name!r} member") from None
    if info.flag_bits & 0x1:
        raise UserError(f"{where} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UserError(f"{where} uses an unsupported compression method ({info.compress_type})")
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + (
        1 << 20
    ):
        raise UserError(
            f"{where} would unpack {info.compress_size:,} bytes to {info.file_size:,} (more than {MAX_DEFLATE_RATIO}x):"
            " refused as a zip bomb; cutouts do not compress that well"
        )
    with zf.open(info) as member:
        header = read_npy_header(member, info.file_size, where)
        if not (isinstance(header.descr, str) and PLAIN_DESCR.fullmatch(header.descr)):
            raise UserError(f"{where}: dtype {describe_descr(header.descr)} is not a plain numeric type")
        dtype = np.dtype(header.descr)
        check_shape(header.shape)
        nbytes = math.prod(header.shape) * dtype.itemsize
        if info.file_size != header.size + nbytes:
            raise UserError(f"{where}: holds {info.file_size} bytes, but its header declares {header.size + nbytes}")
        buffer = np.empty(nbytes, dtype=np.uint8)
        done = 0
        while done < nbytes:
            chunk = member.read(min(READ_CHUNK, nbytes - done))
            if not chunk:
                raise UserError(f"{where}: the file ends early (truncated)")
            buffer[done : done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            done += len(chunk)
    order = "F" if header.fortran_order else "C"
    if dtype.kind == "b":
        return (buffer != 0).reshape(header.shape, order=order)  # any non-zero byte is True
    return buffer.view(dtype).reshape(header.shape, order=order)
