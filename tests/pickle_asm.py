"""A tiny pickle assembler for the ExRomana attack and fuzz tests: hostile streams are written opcode by opcode,
exactly as an attacker would, instead of being produced by pickling Python objects."""

from __future__ import annotations

import struct
from collections.abc import Sequence

PROTO2 = b"\x80\x02"
MARK, STOP, POP = b"(", b".", b"0"
NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"
EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b")", b"t", b"\x85", b"\x86", b"\x87"
EMPTY_LIST, APPEND, APPENDS = b"]", b"a", b"e"
EMPTY_DICT, SETITEM, SETITEMS = b"}", b"s", b"u"
REDUCE, BUILD, MEMOIZE, STACK_GLOBAL = b"R", b"b", b"\x94", b"\x93"


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)  # LONG1
    return b"\x8a" + bytes([len(raw)]) + raw


def text(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw


def py2_str(s: bytes) -> bytes:
    """Python 2's str: SHORT_BINSTRING / BINSTRING."""
    return b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<i", len(s)) + s


def data(raw: bytes) -> bytes:
    return b"C" + bytes([len(raw)]) + raw if len(raw) < 256 else b"B" + struct.pack("<I", len(raw)) + raw


def put(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def get(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def global_(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def tuple_of(items: Sequence[bytes]) -> bytes:
    return MARK + b"".join(items) + TUPLE


def dtype(descr: str, order: str = "<", flags: int = 0) -> bytes:
    """numpy.dtype(descr) with the BUILD state NumPy writes: (3, order, None, None, None, -1, -1, flags)."""
    state = tuple_of([integer(3), text(order), NONE, NONE, NONE, integer(-1), integer(-1), integer(flags)])
    return global_("numpy", "dtype") + text(descr) + FALSE + TRUE + TUPLE3 + REDUCE + state + BUILD


def array(shape: Sequence[int], dtype_ops: bytes, data_ops: bytes, module: str = "numpy.core.multiarray") -> bytes:
    """_reconstruct(ndarray, (0,), b'b') then BUILD with (1, shape, dtype, False, data)."""
    new = global_(module, "_reconstruct") + global_("numpy", "ndarray") + integer(0) + TUPLE1 + data(b"b") + TUPLE3
    state = tuple_of([integer(1), tuple_of([integer(d) for d in shape]), dtype_ops, FALSE, data_ops])
    return new + REDUCE + state + BUILD


def object_dtype(flags: int = 63) -> bytes:
    return dtype("O8", "|", flags)


def dict_of(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in items) + SETITEMS


def list_of(items: Sequence[bytes]) -> bytes:
    return EMPTY_LIST + MARK + b"".join(items) + APPENDS


def npy_object(pickle_ops: bytes) -> bytes:
    """A .npy file holding a 0-d object array (what np.save of a dict writes), with `pickle_ops` as its pickle."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") + pickle_ops


def crash_file(address: int = 0x4141414141414141) -> bytes:
    """The crash attack: a 0-d object array whose dtype state clears the object flags (0 instead of 63), so
    NumPy accepts 8 raw bytes from the file as the element's PyObject pointer and dereferences it on access."""
    evil = array((), object_dtype(flags=0), data(struct.pack("<Q", address)))
    return npy_object(PROTO2 + evil + STOP)
