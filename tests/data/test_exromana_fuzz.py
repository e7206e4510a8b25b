"""Property-based fuzzing of the data-file readers: whatever the bytes, `exromana.load` returns a valid ExRomanaSet
or raises UserError (no other exception, no crash), and each example's peak memory stays small.

Inputs: (a) mutations of a small valid ExRomana .npy file, aimed at its structure rather than its pixel data;
(b) random sequences of pickle opcodes with random (often lying) arguments; (c) random .npy headers;
(d) mutations of a small .npz file. Derandomized and without an example database, so CI runs the same examples
every time and writes nothing into the checkout. For a longer, randomized local run:
HPO_ASTRO_FUZZ_EXAMPLES=5000 pytest tests/data/test_exromana_fuzz.py"""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pickle_asm as asm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo_astro.data import exromana
from hpo_astro.errors import UserError

PEAK_LIMIT = 64 << 20  # bytes; the inputs are tens of KB
EXPLORE = os.environ.get("HPO_ASTRO_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(EXPLORE) if EXPLORE else 120,  # 120 each: a few seconds in CI
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    # the autouse per-test cache fixture is function-scoped; these tests never touch the cache
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _records() -> dict[str, list[dict]]:
    # uint8 cutouts with constant values keep the file small (16 KiB a cutout) and make the data easy to find
    return {
        "TP": [{"sample": np.full((64, 64, 4), 7, dtype=np.uint8), "id": np.int64(5)}],
        "FP": [{"sample": np.full((64, 64, 4), 9, dtype=np.uint8), "note": "x"}],
    }


def _structural_offsets(content: bytes, blobs: list[bytes], margin: int = 4) -> list[int]:
    """Every offset except the inside of the pixel data: mutating pixels only tests np.frombuffer."""
    inside: set[int] = set()
    for blob in blobs:
        start = content.find(blob)
        assert start >= 0
        inside.update(range(start + margin, start + len(blob) - margin))
    return [i for i in range(len(content)) if i not in inside]


@pytest.fixture(scope="module")
def npy_file(work: Path) -> tuple[bytes, list[int]]:
    path = exromana.save(_records(), work / "valid.npy")
    content = path.read_bytes()
    assert exromana.load(path).counts == {"TP": 1, "FP": 1}
    return content, _structural_offsets(content, [bytes([7]) * 16384, bytes([9]) * 16384])


@pytest.fixture(scope="module")
def npz_file(work: Path) -> tuple[bytes, list[int]]:
    path = exromana.save(_records(), work / "valid.npz")
    content = path.read_bytes()
    samples = exromana.load(path).samples
    return content, _structural_offsets(content, [samples.tobytes()[: 64 * 64 * 4 * 4]], margin=16)


def check(content: bytes, path: Path) -> None:
    """The property: a valid set or one UserError line, with bounded peak memory."""
    path.write_bytes(content)
    tracemalloc.start()
    try:
        result = exromana.load(path)
    except UserError as exc:
        result = None
        assert "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB for {len(content)} bytes"
    if result is not None:
        assert isinstance(result, exromana.ExRomanaSet)
        assert result.samples.dtype == np.float32 and result.samples.shape == (len(result.labels), 64, 64, 4)
        assert set(np.unique(result.labels).tolist()) == {0, 1}


# --- (a), (d): mutations of valid files ----------------------------------------------------------------------

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutations(draw: st.DrawFn, content: bytes, offsets: list[int]) -> bytes:
    data = bytearray(content)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.sampled_from(offsets)) % max(len(data), 1)
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "int"]))
        if kind == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data[pos : pos + 4] = struct.pack("<I", draw(st.sampled_from(INTERESTING)))
        if not data:
            break
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_mutated_npy_files(data: st.DataObject, npy_file: tuple[bytes, list[int]], work: Path) -> None:
    content, offsets = npy_file
    check(data.draw(mutations(content, offsets)), work / "mutated.npy")


@FUZZ
@given(data=st.data())
def test_mutated_npz_files(data: st.DataObject, npz_file: tuple[bytes, list[int]], work: Path) -> None:
    content, offsets = npz_file
    check(data.draw(mutations(content, offsets)), work / "mutated.npz")


# --- (b): random opcode sequences ----------------------------------------------------------------------------

SIMPLE_OPS = [
    asm.MARK,
    asm.STOP,
    asm.POP,
    b"1",  # POP_MARK
    asm.NONE,
    asm.TRUE,
    asm.FALSE,
    asm.EMPTY_TUPLE,
    asm.TUPLE,
    asm.TUPLE1,
    asm.TUPLE2,
    asm.TUPLE3,
    asm.EMPTY_LIST,
    b"l",  # LIST
    asm.APPEND,
    asm.APPENDS,
    asm.EMPTY_DICT,
    b"d",  # DICT
    asm.SETITEM,
    asm.SETITEMS,
    asm.REDUCE,
    asm.BUILD,
    asm.MEMOIZE,
    asm.STACK_GLOBAL,
]
NAMES = [
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "bytes"),
    ("os", "system"),
    ("builtins", "eval"),
]
DESCRS = ["f8", "f4", "f2", "i1", "u1", "b1", "i8", "O8", "O4", "U3", "S2", "V8", "c16", "M8", "x"]
KEYS = ["TP", "FP", "sample", "latin1", "C", "F"]


def _dtype_ops() -> st.SearchStrategy[bytes]:
    return st.builds(
        asm.dtype, st.sampled_from(DESCRS), st.sampled_from(["<", ">", "|", "=", "?"]), st.sampled_from([0, 8, 63, 255])
    )


def _lying_length(opcodes: list[bytes], fmt: str) -> st.SearchStrategy[bytes]:
    limit = (1 << (8 * struct.calcsize(fmt))) - 1
    return st.builds(
        lambda op, n, tail: op + struct.pack(fmt, n) + tail,
        st.sampled_from(opcodes),
        st.one_of(st.integers(0, 64), st.integers(0, limit)),
        st.binary(max_size=8),
    )


def _tokens() -> st.SearchStrategy[bytes]:
    shapes = st.lists(st.one_of(st.integers(0, 70), st.integers(0, 1 << 40)), max_size=3).map(tuple)
    return st.one_of(
        st.sampled_from(SIMPLE_OPS),
        st.integers(0, 255).map(lambda n: bytes([n])),  # any byte: forbidden and unknown opcodes too
        st.integers(-(1 << 31), (1 << 31) - 1).map(asm.integer),
        st.integers(-(1 << 80), 1 << 80).map(asm.integer),
        st.floats().map(lambda f: b"G" + struct.pack(">d", f)),
        st.one_of(st.sampled_from(KEYS), st.text(max_size=8)).map(asm.text),
        st.binary(max_size=40).map(asm.data),
        st.binary(max_size=12).map(asm.py2_str),
        _lying_length([b"B", b"X", b"T", b"\x8b"], "<I"),
        _lying_length([b"\x8e", b"\x8d", b"\x96", b"\x95"], "<Q"),
        _lying_length([b"C", b"\x8c", b"U", b"\x8a", b"K", b"q", b"h"], "<B"),
        st.integers(0, 300).map(asm.put),
        st.integers(0, 300).map(asm.get),
        st.builds(lambda op, i: op + struct.pack("<I", i), st.sampled_from([b"r", b"j"]), st.integers(0, 0xFFFFFFFF)),
        st.sampled_from(NAMES).map(lambda mn: asm.global_(*mn)),
        st.sampled_from(NAMES).map(lambda mn: asm.text(mn[0]) + asm.text(mn[1]) + asm.STACK_GLOBAL),
        _dtype_ops(),
        st.builds(
            lambda shape, dtype, n: asm.array(shape, dtype, asm.data(bytes(n))),
            shapes,
            _dtype_ops(),
            st.integers(0, 300),
        ),
        st.builds(
            lambda shape, n: asm.array(shape, asm.object_dtype(), asm.list_of([asm.NONE] * n)),
            shapes,
            st.integers(0, 3),
        ),
    )


@FUZZ
@given(
    protocol=st.integers(0, 6),
    tokens=st.lists(_tokens(), max_size=40),
    stop=st.booleans(),
    wrap=st.booleans(),
)
def test_random_opcode_sequences(protocol: int, tokens: list[bytes], stop: bool, wrap: bool, work: Path) -> None:
    ops = asm.proto(protocol) + b"".join(tokens) + (asm.STOP if stop else b"")
    check(asm.npy_object(ops) if wrap else ops, work / "ops.npy")


# --- (c): random .npy headers --------------------------------------------------------------------------------

DESCR_TEXT = ["'|O'", "'<f4'", "'O'", "'|u1'", "'|O8'", "[('a', '<f4')]", "'<U5'", "'V8'", "None", "3", "'<f4,<f4'"]
SHAPE_TEXT = ["()", "(1,)", "(2**31,)", "(64, 64, 4)", "(-1,)", "(1.5,)", "(True,)", "[]", "((),)", "(" * 300, "1e999"]


@st.composite
def headers(draw: st.DrawFn, body: bytes) -> bytes:
    if draw(st.booleans()):
        descr = draw(st.one_of(st.sampled_from(DESCR_TEXT), st.text(max_size=12).map(repr)))
        shape = draw(
            st.one_of(
                st.sampled_from(SHAPE_TEXT),
                st.lists(st.integers(-5, 1 << 70), max_size=5).map(lambda dims: repr(tuple(dims))),
                st.integers(4000, 5000).map(lambda n: "(" + "9" * n + ",)"),  # beyond int()'s digit limit
            )
        )
        fortran = draw(st.sampled_from(["False", "True", "0", "None", "'no'"]))
        extra = draw(st.sampled_from(["", ", 'x': 1", ", 'descr': '|O'"]))
        text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}{extra}, }}"
    else:
        text = draw(st.text(max_size=80))
    raw = text.encode("utf-8")
    raw += b" " * draw(st.integers(0, 70)) + b"\n"
    major, minor = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 0), (9, 9)]))
    fmt = "<H" if major == 1 else "<I"
    exact = len(raw) if len(raw) <= 0xFFFF or fmt == "<I" else 0xFFFF
    length = draw(st.one_of(st.just(exact), st.integers(0, 0xFFFF if fmt == "<H" else 0xFFFFFFFF)))
    tail = draw(st.sampled_from([body, b"", b"\x80\x04."])) if draw(st.booleans()) else draw(st.binary(max_size=64))
    return b"\x93NUMPY" + bytes([major, minor]) + struct.pack(fmt, length) + raw + tail


@FUZZ
@given(data=st.data())
def test_random_npy_headers(data: st.DataObject, npy_file: tuple[bytes, list[int]], work: Path) -> None:
    content, _ = npy_file
    body = content[content.index(b"\n") + 1 :]  # the valid pickle after the header
    check(data.draw(headers(body)), work / "header.npy")
