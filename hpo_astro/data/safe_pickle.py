"""A restricted pickle reader for the one structure ExRomana files hold: dicts, lists, tuples, strings, bytes,
numbers and plain NumPy arrays and scalars.

Why not `pickle.Unpickler` with an allow-list of globals: even NumPy's own reconstructors are unsafe on a hostile
stream. Unpickling a `numpy.dtype` lets the file set the dtype's internal state; an object dtype whose flags are
cleared makes NumPy accept raw file bytes as object pointers, and the first access dereferences an address the
file chose (a crash, or worse). The C unpickler also allocates before it checks (a huge memo index, a length
beyond the end of the file), and nothing stops a file from referencing one cutout thousands of times.

So this module interprets the pickle opcodes itself and never calls anything named by the file. Globals are
inert placeholders; a NumPy array is materialised here, by us, only from (shape, an allow-listed dtype, raw
bytes whose length matches exactly) through `np.frombuffer(...).copy()`, and object arrays exist only as the
data-less wrappers NumPy puts around Python lists (a 0-d object array becomes its element, a 1-d one a list).
Every declared length is checked against the bytes left in the input before it is read, the memo is a dict,
the stack and nesting depth are bounded, and raw array data and containers holding arrays may be used only
once, so the memory of the result is bounded by the size of the file.
"""

from __future__ import annotations

import io
import math
import os
import pickletools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from hpo_astro.errors import UserError

_NOTHING_RAN = "(nothing from the file was executed)"


class UnsafePickleError(UserError):
    """The file's pickle refers to something other than arrays, dicts, lists, strings and numbers."""


class _Corrupt(Exception):
    """Internal: the stream is malformed; turned into one UserError line by `load`."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a stream may make the reader hold, beyond what the file's own size bounds."""

    max_stack: int = 1 << 20  # items on the stack at once (Python's pickler batches 1,000 per APPENDS)
    max_marks: int = 64  # open MARKs: a real file nests about 6 deep
    max_depth: int = 100  # nesting depth of the resulting object
    max_ndim: int = 32  # NumPy's own limit
    max_long_bytes: int = 1024  # LONG1/LONG4 integers; no legitimate field needs a bigger one
    max_line: int = 256  # GLOBAL module and name lines
    max_scalar_keys: int = 10_000  # dict keys that are not str/bytes (ints hash predictably: collisions are slow)
    shared_raw_bytes: int = 64  # raw data up to this size may be shared (CPython caches 1-byte bytes objects)


# --- what the file may name ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Global:
    """An inert stand-in for a global the file names. Never called: REDUCE dispatches on `kind`."""

    kind: str
    qualname: str

    def __repr__(self) -> str:
        return self.qualname


_RECONSTRUCT = "reconstruct"
_NDARRAY = "ndarray"
_DTYPE = "dtype"
_SCALAR = "scalar"
_FROMBUFFER = "frombuffer"  # protocol 5: _frombuffer(buffer, dtype, shape, order)
_ENCODE = "encode"  # Python 3 at protocol 2 writes bytes as _codecs.encode(latin1_text, "latin1")
_BYTES = "bytes"  # ... and empty bytes as bytes()

_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # NumPy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # NumPy 2.x
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("_codecs", "encode"): _ENCODE,
    ("builtins", "bytes"): _BYTES,
    ("__builtin__", "bytes"): _BYTES,
}

# Plain numeric dtypes an array or scalar may have: none of them can hold a pointer.
_NUMERIC = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}
_DESCR = re.compile(r"([<>|=]?)([fiubOUS])(\d{0,8})")
_OBJECT_DTYPE_FLAGS = 63  # what NumPy writes for an object dtype; anything else is a forged dtype state
_MAX_FLEXIBLE_ITEMSIZE = 1 << 20  # for 'U'/'S' strings


def _show(text: object, limit: int = 80) -> str:
    """Text from the file, made safe for a one-line message."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in str(text)[: limit * 4])
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _describe(value: object) -> str:
    """A short description of a value from the file. Containers are never repr'd: a deeply nested one would
    recurse in C."""
    if value is None or isinstance(value, str | bytes | int | float):
        return _show(repr(value))
    if isinstance(value, tuple) and len(value) <= 8 and all(isinstance(v, int) for v in value):
        return _show(repr(value))
    return f"a {type(value).__name__}"


class _PendingDType:
    """`numpy.dtype(descr)` as REDUCE left it: a checked descr, waiting for BUILD to give its byte order."""

    def __init__(self, kind: str, size: int, order: str) -> None:
        self.kind, self.size, self.order = kind, size, order
        self.result: np.dtype | None = None

    def resolve(self) -> np.dtype:
        """The dtype itself (native byte order if the file never gave its state)."""
        return self.result if self.result is not None else _make_dtype(self.kind, self.size, self.order)


class _PendingArray:
    """`_reconstruct(ndarray, ...)` as REDUCE left it: an array with no shape, dtype or data until BUILD."""

    def __init__(self) -> None:
        self.result: Any = None
        self.built = False


def _make_dtype(kind: str, size: int, order: str) -> np.dtype:
    if kind == "O":
        return np.dtype(object)
    dtype = np.dtype(f"{kind}{size}")
    # '|' and '=' mean "not applicable" / native: keep NumPy's native order.
    return dtype.newbyteorder(order) if order in "<>" and dtype.itemsize > 1 else dtype


def _parse_descr(descr: object) -> tuple[str, int, str]:
    """('<', 'f', 4) style pieces of a dtype descr from the allow-list, or a refusal."""
    match = _DESCR.fullmatch(descr) if isinstance(descr, str) else None
    if match is None:
        raise UnsafePickleError(
            f"refusing to load: the file's pickle builds a NumPy dtype {_describe(descr)}, which is not a plain "
            f"numeric, string or object type {_NOTHING_RAN}"
        )
    order, kind, digits = match.groups()
    size = int(digits) if digits else 0
    if kind in "fiub" and f"{kind}{size}" not in _NUMERIC:
        raise UnsafePickleError(
            f"refusing to load: the file's pickle builds a NumPy dtype {_show(descr)!r}, which is not a plain "
            f"numeric type {_NOTHING_RAN}"
        )
    if kind == "O" and size not in (0, 4, 8):
        raise _Corrupt(f"object dtype {_show(descr)!r} has an impossible size")
    if kind in "US" and size > _MAX_FLEXIBLE_ITEMSIZE:
        raise _Corrupt(f"string dtype {_show(descr)!r} is implausibly wide")
    return kind, size, order or "="


# --- the reader ---------------------------------------------------------------------------------------------


class _Source:
    """Reads from a binary stream, never asking for more bytes than the stream has left."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size, self.pos = fh, size, 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def read(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left:
            raise _Corrupt(f"{what} at byte {self.pos} declares {n} bytes but only {self.left} are left")
        data = self.fh.read(n)
        if len(data) != n:
            raise _Corrupt(f"{what} at byte {self.pos}: the file ends early")
        self.pos += n
        return data

    def line(self, limit: int, what: str) -> str:
        chars = bytearray()
        while True:
            ch = self.read(1, what)
            if ch == b"\n":
                break
            if len(chars) >= limit:
                raise _Corrupt(f"{what} at byte {self.pos} is longer than {limit} bytes")
            chars += ch
        return chars.decode("utf-8")


class _Machine:
    """The pickle VM, restricted to what an ExRomana file needs."""

    def __init__(self, source: _Source, limits: Limits) -> None:
        self.src, self.limits = source, limits
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.scalar_keys = 0
        # Raw data already turned into an array: identity -> the object (kept so the identity stays unique).
        self.used_raw: dict[int, object] = {}
        self.handlers: dict[int, Callable[[], None]] = {
            0x80: self.proto,
            0x95: self.frame,
            ord("("): self.mark,
            ord("0"): self.pop,
            ord("1"): self.pop_mark,
            ord("N"): lambda: self.push(None),
            0x88: lambda: self.push(True),
            0x89: lambda: self.push(False),
            ord("J"): lambda: self.push(struct.unpack("<i", self.src.read(4, "BININT"))[0]),
            ord("K"): lambda: self.push(self.src.read(1, "BININT1")[0]),
            ord("M"): lambda: self.push(struct.unpack("<H", self.src.read(2, "BININT2"))[0]),
            0x8A: lambda: self.long(self.src.read(1, "LONG1")[0]),
            0x8B: lambda: self.long(self.length("<i", "LONG4")),
            ord("G"): lambda: self.push(struct.unpack(">d", self.src.read(8, "BINFLOAT"))[0]),
            ord("X"): lambda: self.text(self.length("<I", "BINUNICODE"), "BINUNICODE"),
            0x8C: lambda: self.text(self.src.read(1, "SHORT_BINUNICODE")[0], "SHORT_BINUNICODE"),
            0x8D: lambda: self.text(self.length("<Q", "BINUNICODE8"), "BINUNICODE8"),
            ord("B"): lambda: self.push(self.src.read(self.length("<I", "BINBYTES"), "BINBYTES")),
            ord("C"): lambda: self.push(self.src.read(self.src.read(1, "SHORT_BINBYTES")[0], "SHORT_BINBYTES")),
            0x8E: lambda: self.push(self.src.read(self.length("<Q", "BINBYTES8"), "BINBYTES8")),
            0x96: lambda: self.push(self.src.read(self.length("<Q", "BYTEARRAY8"), "BYTEARRAY8")),
            # Python 2's str: raw bytes, read as latin-1 (what NumPy does with encoding="latin1").
            ord("T"): lambda: self.push(self.src.read(self.length("<i", "BINSTRING"), "BINSTRING").decode("latin-1")),
            ord("U"): lambda: self.push(
                self.src.read(self.src.read(1, "SHORT_BINSTRING")[0], "SHORT_BINSTRING").decode("latin-1")
            ),
            ord(")"): lambda: self.push(()),
            0x85: lambda: self.tuple_of(1),
            0x86: lambda: self.tuple_of(2),
            0x87: lambda: self.tuple_of(3),
            ord("t"): lambda: self.push(tuple(self.pop_mark_items())),
            ord("]"): lambda: self.push([]),
            ord("l"): lambda: self.push(self.pop_mark_items()),
            ord("a"): self.append,
            ord("e"): self.appends,
            ord("}"): lambda: self.push({}),
            ord("d"): self.dict_from_mark,
            ord("s"): self.setitem,
            ord("u"): self.setitems,
            ord("q"): lambda: self.put(self.src.read(1, "BINPUT")[0]),
            ord("r"): lambda: self.put(struct.unpack("<I", self.src.read(4, "LONG_BINPUT"))[0]),
            0x94: lambda: self.put(len(self.memo)),
            ord("h"): lambda: self.get(self.src.read(1, "BINGET")[0]),
            ord("j"): lambda: self.get(struct.unpack("<I", self.src.read(4, "LONG_BINGET"))[0]),
            ord("c"): self.global_,
            0x93: self.stack_global,
            ord("R"): self.reduce,
            ord("b"): self.build,
        }

    # -- the loop --

    def run(self) -> Any:
        while True:
            at = self.src.pos
            code = self.src.read(1, "opcode")[0]
            if code == ord("."):
                if not self.stack:
                    raise _Corrupt("STOP with nothing on the stack")
                return self.stack.pop()
            handler = self.handlers.get(code)
            if handler is None:
                raise self.unsupported(code, at)
            handler()

    def unsupported(self, code: int, at: int) -> Exception:
        try:
            name = pickletools.code2op[chr(code)].name
        except KeyError:
            return _Corrupt(f"byte 0x{code:02x} at byte {at} is not a pickle opcode")
        why = {
            "PERSID": "persistent ids",
            "BINPERSID": "persistent ids",
            "NEXT_BUFFER": "out-of-band buffers",
            "READONLY_BUFFER": "out-of-band buffers",
            "EXT1": "extension codes",
            "EXT2": "extension codes",
            "EXT4": "extension codes",
            "INST": "object construction",
            "OBJ": "object construction",
            "NEWOBJ": "object construction",
            "NEWOBJ_EX": "object construction",
        }.get(name, "an opcode ExRomana files never contain")
        return UnsafePickleError(f"refusing to load: the file's pickle uses {name} ({why}) at byte {at} {_NOTHING_RAN}")

    # -- stack and memo --

    def push(self, value: Any) -> None:
        if len(self.stack) >= self.limits.max_stack:
            raise _Corrupt(f"more than {self.limits.max_stack} items on the pickle stack")
        self.stack.append(value)

    def pop_value(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Corrupt("an opcode needs a value the stack does not have")
        return self.stack.pop()

    def mark(self) -> None:
        if len(self.marks) >= self.limits.max_marks:
            raise _Corrupt(f"more than {self.limits.max_marks} nested MARKs")
        self.marks.append(len(self.stack))

    def pop_mark_items(self) -> list[Any]:
        if not self.marks:
            raise _Corrupt("an opcode needs a MARK the stack does not have")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def pop(self) -> None:
        if self.marks and len(self.stack) == self.marks[-1]:
            self.marks.pop()  # POP of a MARK, as pickle does
        else:
            self.pop_value()

    def pop_mark(self) -> None:
        self.pop_mark_items()

    def put(self, index: int) -> None:
        if not self.stack:
            raise _Corrupt("memo put with an empty stack")
        self.memo[index] = self.stack[-1]

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise _Corrupt(f"memo get of {index}, which was never put")
        value = self.memo[index]
        # A built placeholder stands for what BUILD made of it (pickle's BUILD mutates the memoised object).
        if (isinstance(value, _PendingArray) and value.built) or (
            isinstance(value, _PendingDType) and value.result is not None
        ):
            value = value.result
        self.push(value)

    def frame(self) -> None:
        size = struct.unpack("<Q", self.src.read(8, "FRAME"))[0]
        if size > self.src.left:
            raise _Corrupt(f"FRAME declares {size} bytes but only {self.src.left} are left")

    def proto(self) -> None:
        version = self.src.read(1, "PROTO")[0]
        if version > 5:
            raise _Corrupt(f"unknown pickle protocol {version}")

    # -- values --

    def length(self, fmt: str, what: str) -> int:
        """A length prefix; checked against the bytes left by `read` before anything is allocated."""
        return struct.unpack(fmt, self.src.read(struct.calcsize(fmt), what))[0]

    def long(self, n: int) -> None:
        if n > self.limits.max_long_bytes:
            raise _Corrupt(f"an integer of {n} bytes")
        self.push(int.from_bytes(self.src.read(n, "LONG"), "little", signed=True))

    def text(self, n: int, what: str) -> None:
        self.push(self.src.read(n, what).decode("utf-8", "surrogatepass"))

    def tuple_of(self, n: int) -> None:
        items = [self.pop_value() for _ in range(n)]
        self.push(tuple(reversed(items)))

    # -- containers --

    def target(self, kind: type, what: str) -> Any:
        start = self.marks[-1] if self.marks else 0
        if len(self.stack) <= start or not isinstance(self.stack[-1], kind):
            raise _Corrupt(f"{what} without a {kind.__name__} to add to")
        return self.stack[-1]

    def append(self) -> None:
        value = self.pop_value()
        self.target(list, "APPEND").append(value)

    def appends(self) -> None:
        items = self.pop_mark_items()
        self.target(list, "APPENDS").extend(items)

    def key(self, key: Any) -> Any:
        # Only scalar keys: hashing a tuple recurses in C (a deep one overflows the C stack), and ints hash
        # predictably, so they are counted to keep a flood of colliding keys cheap.
        if isinstance(key, str | bytes):
            return key
        if key is None or isinstance(key, bool | int | float):
            self.scalar_keys += 1
            if self.scalar_keys > self.limits.max_scalar_keys:
                raise _Corrupt(f"more than {self.limits.max_scalar_keys} non-string dict keys")
            return key
        raise _Corrupt(f"a dict key of type {type(key).__name__} (only strings and numbers are accepted)")

    def fill(self, target: dict, items: list[Any]) -> None:
        if len(items) % 2:
            raise _Corrupt("SETITEMS with an odd number of items")
        for k, v in zip(items[::2], items[1::2], strict=True):
            target[self.key(k)] = v

    def setitem(self) -> None:
        value, key = self.pop_value(), self.pop_value()
        self.fill(self.target(dict, "SETITEM"), [key, value])

    def setitems(self) -> None:
        items = self.pop_mark_items()
        self.fill(self.target(dict, "SETITEMS"), items)

    def dict_from_mark(self) -> None:
        result: dict = {}
        self.fill(result, self.pop_mark_items())
        self.push(result)

    # -- globals, REDUCE and BUILD: the NumPy part --

    def named(self, module: str, name: str) -> None:
        kind = _GLOBALS.get((module, name))
        if kind is None:
            raise UnsafePickleError(
                f"refusing to load: the file's pickle references {_show(module)}.{_show(name)}, which is not an "
                f"array, dict, list, string or number {_NOTHING_RAN}"
            )
        self.push(_Global(kind, f"{module}.{name}"))

    def global_(self) -> None:
        module = self.src.line(self.limits.max_line, "GLOBAL module")
        name = self.src.line(self.limits.max_line, "GLOBAL name")
        self.named(module, name)

    def stack_global(self) -> None:
        name, module = self.pop_value(), self.pop_value()
        if not isinstance(module, str) or not isinstance(name, str):
            raise _Corrupt("STACK_GLOBAL needs two strings")
        self.named(module, name)

    def reduce(self) -> None:
        args, func = self.pop_value(), self.pop_value()
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise _Corrupt(f"REDUCE of a {type(func).__name__} (only NumPy's reconstructors can be applied)")
        if func.kind == _RECONSTRUCT:
            if not args or not (isinstance(args[0], _Global) and args[0].kind == _NDARRAY):
                raise UnsafePickleError(
                    f"refusing to load: the file reconstructs an array of a class other than numpy.ndarray "
                    f"{_NOTHING_RAN}"
                )
            self.push(_PendingArray())
        elif func.kind == _DTYPE:
            if not 1 <= len(args) <= 3 or not all(isinstance(a, bool | int) and a in (0, 1) for a in args[1:]):
                raise _Corrupt("numpy.dtype with unexpected arguments")
            self.push(_PendingDType(*_parse_descr(args[0])))
        elif func.kind == _SCALAR:
            self.push(self.scalar(args))
        elif func.kind == _FROMBUFFER:
            if len(args) != 4 or args[3] not in ("C", "F"):
                raise _Corrupt("numpy _frombuffer with unexpected arguments")
            buffer, dtype_value, shape, order = args
            dtype = self.dtype_of(dtype_value, "an array")
            if dtype.kind == "O":
                raise self.object_from_bytes()
            self.push(self.numeric_array(self.checked_shape(shape), dtype, order == "F", buffer))
        elif func.kind == _ENCODE:
            if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
                raise _Corrupt("_codecs.encode with arguments other than (text, 'latin1')")
            # Each call makes fresh bytes: the text may be used once, or it would feed any number of arrays.
            self.consume(args[0], len(args[0]), "(bytes from text)")
            self.push(args[0].encode("latin-1"))
        elif func.kind == _BYTES:
            if args:
                raise _Corrupt("bytes() with arguments")
            self.push(b"")
        else:
            raise UnsafePickleError(f"refusing to load: the file's pickle calls {func.qualname} {_NOTHING_RAN}")

    def dtype_of(self, value: Any, what: str) -> np.dtype:
        if isinstance(value, _PendingDType):
            return value.resolve()
        if isinstance(value, np.dtype):  # only ever one this reader made from an allow-listed descr
            return value
        raise _Corrupt(f"{what} has no dtype")

    def raw_bytes(self, data: Any, what: str) -> bytes:
        if isinstance(data, str):  # Python 2's str, read as latin-1
            raw = data.encode("latin-1")
        elif isinstance(data, bytes):
            raw = data
        else:
            raise _Corrupt(f"{what} has data of type {type(data).__name__}, expected bytes")
        self.consume(data, len(raw), what)
        return raw

    def consume(self, data: object, size: int, what: str) -> None:
        """One blob of raw data makes one array: a file may not turn one cutout into thousands."""
        if size <= self.limits.shared_raw_bytes:
            return
        if id(data) in self.used_raw:
            raise UnsafePickleError(
                f"refusing to load: the file uses the data of one array {what} more than once, which would "
                f"multiply its memory {_NOTHING_RAN}"
            )
        self.used_raw[id(data)] = data

    def scalar(self, args: tuple) -> Any:
        if len(args) != 2:
            raise _Corrupt("numpy scalar with unexpected arguments")
        dtype = self.dtype_of(args[0], "a numpy scalar")
        if dtype.kind == "O":
            raise UnsafePickleError(f"refusing to load: the file's pickle holds a NumPy object scalar {_NOTHING_RAN}")
        raw = self.raw_bytes(args[1], "(a scalar)")
        if len(raw) != dtype.itemsize:
            raise _Corrupt(f"a {dtype} scalar with {len(raw)} bytes of data")
        return _array_from(raw, dtype, (), False)[()]

    def build(self) -> None:
        state = self.pop_value()
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise _Corrupt("BUILD with nothing to build")
        target = self.stack[-1]
        if isinstance(target, _PendingDType) and target.result is None:
            target.result = self.dtype_state(target, state)
            self.stack[-1] = target.result
        elif isinstance(target, _PendingArray) and not target.built:
            target.result, target.built = self.array_state(state), True
            self.stack[-1] = target.result
        else:
            raise _Corrupt(f"BUILD of a {type(target).__name__} (only NumPy arrays and dtypes take a state)")

    def dtype_state(self, pending: _PendingDType, state: Any) -> np.dtype:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise _Corrupt("a dtype state that is not NumPy's (version 3 or 4, 8 or 9 fields)")
        _version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
        metadata = state[8] if len(state) == 9 else None
        if order not in ("<", ">", "|", "="):
            raise _Corrupt(f"a dtype byte order {_describe(order)}")
        if subarray is not None or names is not None or fields is not None or metadata is not None:
            raise UnsafePickleError(
                f"refusing to load: the file's pickle builds a structured or sub-array dtype {_NOTHING_RAN}"
            )
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (elsize, alignment, flags)):
            raise _Corrupt("a dtype state with non-integer sizes")
        if pending.kind == "O" and flags != _OBJECT_DTYPE_FLAGS:
            # The crash attack: an object dtype with its flags cleared lets NumPy read raw bytes as pointers.
            raise UnsafePickleError(
                f"refusing to load: the file's pickle forges an object dtype (flags {flags}, NumPy writes "
                f"{_OBJECT_DTYPE_FLAGS}), which would turn file bytes into memory addresses {_NOTHING_RAN}"
            )
        if pending.kind in "US":
            # Flexible types carry their width in the state; it must be a whole number of characters.
            width = 4 if pending.kind == "U" else 1
            size = pending.size * width if pending.size else elsize
            if elsize not in (-1, size) or size <= 0 or size % width or size > _MAX_FLEXIBLE_ITEMSIZE:
                raise _Corrupt(f"a string dtype of {elsize} bytes")
            if alignment not in (-1, 1, width):
                raise _Corrupt(f"a string dtype aligned to {alignment} bytes")
            pending.size = size // width
        elif elsize != -1 or alignment != -1:
            raise _Corrupt(f"a {pending.kind}{pending.size} dtype with explicit size {elsize} / alignment {alignment}")
        pending.order = order
        return pending.resolve()

    def checked_shape(self, shape: Any) -> tuple[int, ...]:
        if (
            not isinstance(shape, tuple)
            or len(shape) > self.limits.max_ndim
            or not all(type(d) is int and 0 <= d < 1 << 63 for d in shape)  # bool is not a size
        ):
            raise _Corrupt(f"an array shape {_describe(shape)}")
        return shape

    def object_from_bytes(self) -> UnsafePickleError:
        return UnsafePickleError(
            "refusing to load: the file's pickle builds an object array from raw bytes, which NumPy would read as "
            f"memory addresses {_NOTHING_RAN}"
        )

    def numeric_array(self, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, data: Any) -> np.ndarray:
        raw = self.raw_bytes(data, f"(shape {shape}, {dtype})")
        needed = math.prod(shape) * dtype.itemsize
        if needed != len(raw):
            raise _Corrupt(f"an array of shape {shape} and dtype {dtype} needs {needed} bytes, the file has {len(raw)}")
        return _array_from(raw, dtype, shape, fortran)

    def array_state(self, state: Any) -> Any:
        # (version, shape, dtype, is_fortran, data); very old NumPy omits the version.
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise _Corrupt("an array state that is not NumPy's (version 1, 5 fields)")
        shape, dtype_value, fortran, data = state
        shape = self.checked_shape(shape)
        if not isinstance(fortran, bool | int):
            raise _Corrupt("an array order flag that is not a boolean")
        dtype = self.dtype_of(dtype_value, "an array")
        if dtype.kind != "O":
            return self.numeric_array(shape, dtype, bool(fortran), data)
        # Only the wrapper NumPy puts around Python objects: the data is a list built by this reader.
        if not isinstance(data, list):
            raise self.object_from_bytes()
        if len(data) != math.prod(shape):
            raise _Corrupt(f"an object array of shape {shape} with {len(data)} elements")
        if shape == ():
            return data[0]
        if len(shape) == 1:
            return data
        raise _Corrupt(f"an object array of shape {shape} (only 0-d and 1-d ones are accepted)")


def _array_from(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    """A fresh array owning a copy of `raw` (length already checked against shape and dtype)."""
    # A bool array holding byte values other than 0 and 1 is not something to pass on: any non-zero byte is True.
    flat = np.frombuffer(raw, dtype=np.uint8) != 0 if dtype.kind == "b" else np.frombuffer(raw, dtype=dtype).copy()
    return flat.reshape(shape, order="F" if fortran else "C")


# --- after the stream: the shape of the result ---------------------------------------------------------------


def _check_result(root: Any, limits: Limits) -> None:
    """Refuse a result in which an array can be reached twice (memory amplification), a container contains
    itself, nesting is too deep, or a NumPy placeholder was never built. Iterative: no recursion on file data."""
    done: dict[int, bool] = {}  # id -> whether the container reaches an array
    open_: set[int] = set()
    seen_arrays: set[int] = set()

    def children(node: Any) -> list[Any]:
        return list(node.values()) if isinstance(node, dict) else list(node)

    def visit(value: Any) -> int:
        """0: a leaf; 1: an array; 2: a new container to descend into."""
        if isinstance(value, _Global | _PendingArray | _PendingDType):
            raise _Corrupt(f"the pickle leaves a NumPy {type(value).__name__.strip('_')} unfinished")
        if isinstance(value, np.ndarray):
            if id(value) in seen_arrays:
                raise _shared()
            seen_arrays.add(id(value))
            return 1
        if not isinstance(value, list | tuple | dict):
            return 0
        if id(value) in open_:
            raise _Corrupt("a container contains itself")
        if id(value) in done:
            if done[id(value)]:
                raise _shared()
            return 0
        return 2

    kind = visit(root)
    if kind != 2:
        return
    stack: list[tuple[Any, list[Any], bool]] = [(root, children(root), False)]
    open_.add(id(root))
    while stack:
        node, todo, has_array = stack[-1]
        if not todo:
            stack.pop()
            open_.discard(id(node))
            done[id(node)] = has_array
            if stack and has_array:
                parent, parent_todo, _ = stack[-1]
                stack[-1] = (parent, parent_todo, True)
            continue
        child = todo.pop()
        kind = visit(child)
        if kind == 1:
            stack[-1] = (node, todo, True)
        elif kind == 2:
            if len(stack) >= limits.max_depth:
                raise _Corrupt(f"objects nested more than {limits.max_depth} deep")
            open_.add(id(child))
            stack.append((child, children(child), False))


def _shared() -> UnsafePickleError:
    return UnsafePickleError(
        "refusing to load: the file references one array (or a record holding one) more than once, which would "
        f"multiply its memory {_NOTHING_RAN}"
    )


# --- entry points -------------------------------------------------------------------------------------------


def load(fh: BinaryIO, size: int | None = None, limits: Limits | None = None) -> Any:
    """Read one pickle from `fh` (at most `size` bytes from its current position; default: to the end of the
    file). Raises UserError (UnsafePickleError for anything that is not plain data) with a one-line message."""
    if size is None:
        start = fh.tell()
        try:
            size = os.fstat(fh.fileno()).st_size - start
        except (OSError, AttributeError, io.UnsupportedOperation):
            size = fh.seek(0, io.SEEK_END) - start
            fh.seek(start)
    limits = limits or Limits()
    try:
        result = _Machine(_Source(fh, size), limits).run()
        _check_result(result, limits)
        return result
    except UserError:
        raise
    except _Corrupt as exc:
        raise UserError(f"not a readable pickle (truncated or corrupt): {exc} {_NOTHING_RAN}") from None
    except (ValueError, TypeError, OverflowError, struct.error, UnicodeDecodeError, IndexError, KeyError) as exc:
        raise UserError(f"not a readable pickle (truncated or corrupt): {_show(exc, 200)} {_NOTHING_RAN}") from None
    except (MemoryError, RecursionError) as exc:  # a last line of defence: the bounds above should prevent them
        raise UserError(f"not a readable pickle: {type(exc).__name__} while reading it {_NOTHING_RAN}") from None


def loads(data: bytes, limits: Limits | None = None) -> Any:
    """`load` from bytes in memory."""
    return load(io.BytesIO(data), len(data), limits)
