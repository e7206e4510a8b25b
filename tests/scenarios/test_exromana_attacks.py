"""Hostile data files: each attack from the review is reproduced byte for byte and must end in one UserError line
(or `error: ...` and exit 2 from the CLI) with bounded memory. Also: the restricted pickle reader still reads what
NumPy and Python write (protocols 2-5, NumPy 1.x names, Python 2 strings), the .npz format and its bounds,
atomic writes, and the `data` commands' input checks."""

from __future__ import annotations

import copy
import errno
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pickle_asm as asm
import pytest
from helpers import assert_refused, invoke, patience

from hpo_astro.data import exromana, safe_pickle
from hpo_astro.data.prepare import zscale
from hpo_astro.errors import UserError
from hpo_astro.io import atomic_write

NOTHING_RAN = "nothing from the file was executed"


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak traced memory while `fn` runs (NumPy reports its array buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
    except UserError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused(path: Path, match: str, error: type[UserError] = UserError) -> UserError:
    with pytest.raises(error, match=match) as info:
        exromana.load(path)
    assert "\n" not in str(info.value)
    return info.value


def _records(n_tp: int = 2, n_fp: int = 1, dtype: str = "f8", seed: int = 0) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    make = lambda: {"sample": rng.normal(size=(64, 64, 4)).astype(dtype)}  # noqa: E731
    return {"TP": [make() for _ in range(n_tp)], "FP": [make() for _ in range(n_fp)]}


# --- 1. the crash: a forged object dtype -------------------------------------------------------------------


def test_crash_attack_is_one_error_line_in_a_subprocess(tmp_path: Path) -> None:
    """On the allow-list Unpickler this file made NumPy dereference 0x4141414141414141: the process died with
    SIGSEGV (exit 139). Now: exit 2 and one line."""
    path = _write(tmp_path / "crash.npy", asm.crash_file())
    assert len(path.read_bytes()) < 300
    proc = subprocess.run(
        [sys.executable, "-m", "hpo_astro.cli", "data", "info", str(path), "--gallery", str(tmp_path / "g.png")],
        capture_output=True,
        text=True,
        env={**os.environ, "HPO_ASTRO_CACHE": str(tmp_path / "cache")},
        timeout=patience(120),
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refusing to load" in lines[0], proc.stderr
    assert "forges an object dtype" in lines[0] and NOTHING_RAN in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "g.png").exists()


def test_crash_attack_is_refused_by_read_raw_too(tmp_path: Path) -> None:
    # `predict` reads files through read_raw
    path = _write(tmp_path / "crash.npy", asm.crash_file())
    with pytest.raises(exromana.UnsafePickleError, match="forges an object dtype"):
        exromana.read_raw(path)


def test_object_array_from_raw_bytes_is_refused_even_with_honest_flags(tmp_path: Path) -> None:
    evil = asm.array((), asm.object_dtype(flags=63), asm.data(struct.pack("<Q", 0x4141414141414141)))
    path = _write(tmp_path / "x.npy", asm.npy_object(asm.PROTO2 + evil + asm.STOP))
    _refused(path, "object array from raw bytes", exromana.UnsafePickleError)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        # names/fields: a structured dtype
        ([3, "<", None, ("a",), {}, -1, -1, 0], "structured"),
        # an explicit element size on a plain type
        ([3, "<", None, None, None, 64, -1, 0], "explicit size"),
        ([3, "?", None, None, None, -1, -1, 0], "byte order"),
        ([9, "<", None, None, None, -1, -1, 0], "not NumPy's"),
    ],
)
def test_forged_dtype_states_are_refused(tmp_path: Path, state: list, match: str) -> None:
    def op(v: object) -> bytes:
        if v is None:
            return asm.NONE
        if isinstance(v, str):
            return asm.text(v)
        if isinstance(v, tuple):
            return asm.tuple_of([op(x) for x in v])
        if isinstance(v, dict):
            return asm.EMPTY_DICT
        return asm.integer(v)

    forged = asm.global_("numpy", "dtype") + asm.text("f8") + asm.FALSE + asm.TRUE + asm.TUPLE3 + asm.REDUCE
    forged += asm.tuple_of([op(v) for v in state]) + asm.BUILD
    arr = asm.array((1,), forged, asm.data(b"\0" * 8))
    path = _write(tmp_path / "x.pkl", asm.PROTO2 + arr + asm.STOP)
    _refused(path, match)


@pytest.mark.parametrize("descr", ["V8", "M8", "c16", "f16", "O3", "<f4,<f4", "U99999999"])
def test_dtypes_outside_the_allow_list_are_refused(tmp_path: Path, descr: str) -> None:
    arr = asm.array((1,), asm.dtype(descr), asm.data(b"\0" * 8))
    with pytest.raises(UserError, match=r"dtype|string") as info:
        exromana.load(_write(tmp_path / "x.pkl", asm.PROTO2 + arr + asm.STOP))
    assert NOTHING_RAN in str(info.value)


@pytest.mark.parametrize(
    ("ops", "name"),
    [
        (b"P1\n", "PERSID"),
        (asm.text("x") + b"Q", "BINPERSID"),
        (b"\x97", "NEXT_BUFFER"),
        (b"\x98", "READONLY_BUFFER"),
        (b"\x82\x01", "EXT1"),
        (b"\x83\x01\x00", "EXT2"),
        (b"\x84\x01\x00\x00\x00", "EXT4"),
        (b"(ios\nsystem\n", "INST"),
        (asm.MARK + asm.global_("numpy", "ndarray") + b"o", "OBJ"),
        (asm.global_("numpy", "ndarray") + asm.EMPTY_TUPLE + b"\x81", "NEWOBJ"),
        (asm.global_("numpy", "ndarray") + asm.EMPTY_TUPLE + asm.EMPTY_DICT + b"\x92", "NEWOBJ_EX"),
        (b"I1\n", "INT"),
    ],
)
def test_forbidden_opcodes_are_refused_by_name(tmp_path: Path, ops: bytes, name: str) -> None:
    path = _write(tmp_path / "x.pkl", asm.proto(5) + ops + asm.STOP)
    error = _refused(path, rf"uses {name} ", exromana.UnsafePickleError)
    assert NOTHING_RAN in str(error)


@pytest.mark.parametrize(
    "ops",
    [
        asm.global_("os", "system"),
        asm.text("builtins") + asm.text("eval") + asm.STACK_GLOBAL,
        asm.global_("numpy.dtypes", "Float64DType"),  # admitted by the old allow-list; no file needs it
        asm.global_("numpy", "ndarray") + asm.EMPTY_TUPLE + asm.REDUCE,  # a permitted name, applied directly
        asm.global_("numpy._core.multiarray", "_reconstruct")
        + asm.global_("numpy", "dtype")
        + asm.integer(0)
        + asm.TUPLE1
        + asm.data(b"b")
        + asm.TUPLE3
        + asm.REDUCE,  # _reconstruct of a class other than ndarray
    ],
)
def test_globals_other_than_numpys_reconstructors_are_refused(tmp_path: Path, ops: bytes) -> None:
    path = _write(tmp_path / "x.npy", asm.npy_object(asm.PROTO2 + ops + asm.STOP))
    _refused(path, "refusing to load", exromana.UnsafePickleError)


def test_control_characters_in_a_global_name_stay_on_one_line(tmp_path: Path) -> None:
    ops = asm.text("os\r\x1b[31m") + asm.text("system\r\n\x00") + asm.STACK_GLOBAL
    error = _refused(_write(tmp_path / "x.pkl", asm.proto(4) + ops + asm.STOP), "os", exromana.UnsafePickleError)
    assert all(ch.isprintable() for ch in str(error))


# --- 2. memory bombs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        # LONG_BINPUT with a huge memo index: the C unpickler grew its memo array to the index
        (asm.integer(0) + b"r\xff\xff\xff\x7f" + asm.STOP, "expected a dict"),
        (asm.integer(0) + b"j\xff\xff\xff\x7f" + asm.STOP, "never put"),
        # declared lengths beyond the file
        (b"B\xff\xff\xff\x7f" + asm.STOP, "declares 2147483647 bytes but only 1 are left"),
        (b"X\xff\xff\xff\xff" + asm.STOP, "declares 4294967295 bytes"),
        (b"\x8e" + struct.pack("<Q", 1 << 62) + asm.STOP, "declares 4611686018427387904 bytes"),
        (b"\x8d" + struct.pack("<Q", 1 << 62) + asm.STOP, "declares"),
        (b"\x96" + struct.pack("<Q", 1 << 62) + asm.STOP, "declares"),
        (b"T\xff\xff\xff\x7f" + asm.STOP, "declares"),
        (b"\x8b\xff\xff\xff\x7f" + asm.STOP, "integer of"),
        (b"\x95" + struct.pack("<Q", 1 << 62) + asm.STOP, "FRAME declares"),
    ],
)
def test_tiny_files_declaring_huge_sizes(tmp_path: Path, ops: bytes, match: str) -> None:
    path = _write(tmp_path / "x.pkl", asm.PROTO2 + ops)
    assert len(path.read_bytes()) <= 14
    assert _peak_bytes(lambda: exromana.load(path)) < 1 << 20
    _refused(path, match)


@pytest.mark.parametrize(
    ("shape", "dtype", "data", "match"),
    [
        ((2 * 10**9,), asm.object_dtype(), asm.EMPTY_LIST, "object array of shape"),
        ((2 * 10**9,), asm.dtype("f8"), asm.data(b"\0" * 8), "needs 16000000000 bytes"),
        ((1 << 62, 1 << 62), asm.dtype("f8"), asm.data(b""), "needs"),
        ((2, 2), asm.object_dtype(), asm.list_of([asm.NONE] * 4), "only 0-d and 1-d"),
    ],
)
def test_arrays_declaring_more_than_they_hold(
    tmp_path: Path, shape: tuple, dtype: bytes, data: bytes, match: str
) -> None:
    ops = asm.PROTO2 + asm.array(shape, dtype, data) + asm.STOP
    path = _write(tmp_path / "x.npy", asm.npy_object(ops))
    assert len(path.read_bytes()) < 400
    assert _peak_bytes(lambda: exromana.load(path)) < 1 << 20
    _refused(path, match)


N_REUSE = 2000  # one float64 cutout is 128 KiB: the old loader used 250 MiB for this 256 KiB file


def test_one_record_referenced_many_times_is_refused(tmp_path: Path) -> None:
    rec = _records(1, 0)["TP"][0]
    other = _records(0, 1, seed=1)["FP"][0]
    path = _write(tmp_path / "x.npy", b"")
    np.save(path, np.asarray({"TP": [rec] * N_REUSE, "FP": [other]}, dtype=object), allow_pickle=True)
    assert path.stat().st_size < 2 * 128 * 1024 + 20 * N_REUSE
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, "more than once", exromana.UnsafePickleError)


def test_one_cutout_in_many_records_is_refused(tmp_path: Path) -> None:
    sample = _records(1, 0)["TP"][0]["sample"]
    records = {"TP": [{"sample": sample, "i": i} for i in range(N_REUSE)], "FP": _records(0, 1, seed=1)["FP"]}
    path = _write(tmp_path / "x.pkl", pickle.dumps(records, protocol=4))
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, "more than once", exromana.UnsafePickleError)


def test_one_blob_of_raw_data_rebuilt_into_many_arrays_is_refused(tmp_path: Path) -> None:
    """Distinct arrays, each REDUCEd and BUILT on its own, all taking their data from one memoised blob."""
    blob = asm.data(np.zeros((64, 64, 4)).tobytes()) + asm.put(1)
    first = asm.array((64, 64, 4), asm.dtype("f8") + asm.put(2), blob)
    again = asm.array((64, 64, 4), asm.get(2), asm.get(1))
    records = [asm.dict_of([(asm.text("sample"), first)])] + [asm.dict_of([(asm.text("sample"), again)])] * N_REUSE
    ops = asm.dict_of([(asm.text("TP"), asm.list_of(records)), (asm.text("FP"), asm.EMPTY_LIST)])
    path = _write(tmp_path / "x.pkl", asm.proto(4) + ops + asm.STOP)
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, "data of one array", exromana.UnsafePickleError)


def test_one_text_encoded_into_many_blobs_is_refused(tmp_path: Path) -> None:
    """Protocol 2 writes bytes as _codecs.encode(text, 'latin1'): each call makes fresh bytes, so one memoised
    text must not feed many arrays either."""
    text = np.zeros((64, 64, 4)).tobytes().decode("latin-1")
    encode = asm.global_("_codecs", "encode") + asm.put(1)
    args = asm.text(text) + asm.text("latin1") + asm.TUPLE2 + asm.put(2)
    first = asm.array((64, 64, 4), asm.dtype("f8") + asm.put(3), encode + args + asm.REDUCE)
    again = asm.array((64, 64, 4), asm.get(3), asm.get(1) + asm.get(2) + asm.REDUCE)
    records = [asm.dict_of([(asm.text("sample"), first)])] + [asm.dict_of([(asm.text("sample"), again)])] * N_REUSE
    ops = asm.dict_of([(asm.text("TP"), asm.list_of(records)), (asm.text("FP"), asm.EMPTY_LIST)])
    path = _write(tmp_path / "x.pkl", asm.PROTO2 + ops + asm.STOP)
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, "data of one array", exromana.UnsafePickleError)


def test_shared_containers_without_arrays_are_fine(tmp_path: Path) -> None:
    # Python's pickler memoises any object seen twice: shared metadata is legitimate, only arrays are bounded.
    meta = {"survey": "ZTF", "bands": ["g", "r"]}
    records = _records()
    for cls in ("TP", "FP"):
        for rec in records[cls]:
            rec["meta"] = meta
    data = exromana.load(_write(tmp_path / "x.pkl", pickle.dumps(records, protocol=4)))
    assert data.counts == {"TP": 2, "FP": 1}


def test_record_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.npy"
    exromana.save(_records(4, 2, "f4"), path)
    monkeypatch.setenv("HPO_ASTRO_MAX_RECORDS", "5")
    _refused(path, "holds 6 records, more than the limit of 5 .*HPO_ASTRO_MAX_RECORDS")
    npz = tmp_path / "x.npz"
    monkeypatch.setenv("HPO_ASTRO_MAX_RECORDS", "6")
    exromana.save(_records(4, 2, "f4"), npz)
    monkeypatch.setenv("HPO_ASTRO_MAX_RECORDS", "5")
    _refused(npz, "holds 6 records, more than the limit of 5 .*HPO_ASTRO_MAX_RECORDS")
    monkeypatch.setenv("HPO_ASTRO_MAX_RECORDS", "6")
    assert exromana.load(path).counts == exromana.load(npz).counts == {"TP": 4, "FP": 2}
    monkeypatch.setenv("HPO_ASTRO_MAX_RECORDS", "many")
    _refused(path, "HPO_ASTRO_MAX_RECORDS must be a positive integer")


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        (asm.NONE + asm.TUPLE1 * 5000, "nested more than"),  # deep nesting without MARKs
        (asm.MARK * 1000 + asm.NONE, "nested MARKs"),
        (asm.EMPTY_LIST + asm.put(0) + asm.get(0) + asm.APPEND, "contains itself"),
        (asm.EMPTY_DICT + asm.EMPTY_TUPLE + asm.NONE + asm.SETITEM, "dict key of type tuple"),
        (asm.EMPTY_DICT + asm.EMPTY_LIST + asm.NONE + asm.SETITEM, "dict key of type list"),
        (asm.APPEND, "needs a value"),
        (asm.NONE + asm.APPEND, "without a list"),
        (asm.TUPLE, "needs a MARK"),
        (asm.NONE, "the file ends early|declares 1 bytes but only 0"),
        (asm.global_("numpy", "dtype") + asm.text("f8") + asm.TUPLE1 + asm.REDUCE, "unfinished"),
        (asm.NONE + asm.NONE + asm.BUILD, "BUILD of a NoneType"),
        (b"\xff", "not a pickle opcode"),
    ],
)
def test_malformed_streams(tmp_path: Path, ops: bytes, match: str) -> None:
    path = _write(tmp_path / "x.pkl", asm.proto(4) + ops + (asm.STOP if not ops.endswith(asm.NONE) else b""))
    if ops == asm.NONE:
        path.write_bytes(asm.proto(4) + ops)  # no STOP: the stream just ends
    _refused(path, match)


def test_stack_limit() -> None:
    with pytest.raises(UserError, match="more than 10 items on the pickle stack"):
        safe_pickle.loads(asm.proto(4) + asm.NONE * 11 + asm.STOP, safe_pickle.Limits(max_stack=10))


def test_truncated_real_file_at_every_structural_byte(tmp_path: Path) -> None:
    """Cut a real file short anywhere in its first kilobyte and at its end: always one UserError."""
    full = tmp_path / "full.npy"
    exromana.save(_records(1, 1, "f4"), full)
    content = full.read_bytes()
    cuts = [*range(0, 1024, 7), *range(len(content) - 600, len(content))]
    for cut in cuts:
        path = _write(tmp_path / "cut.npy", content[:cut])
        with pytest.raises(UserError):
            exromana.load(path)


# --- what the reader must still read -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python_pickles_of_every_protocol(tmp_path: Path, protocol: int) -> None:
    records = _records(2, 2, "f4")
    records["TP"][0].update(
        candid=np.int64(1234567890123),
        mag=np.float32(18.5),
        flag=np.bool_(True),
        name=np.str_("ZTF21aaaaaaa"),
        raw=np.bytes_(b"id"),
        small=np.arange(3, dtype=">i2"),
        fortran=np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        objs=np.array([1, "a", None], dtype=object),
        nested={"a": (1, 2.5, None, b"x", "y", True), 3: [1 << 70, -(1 << 70)]},
    )
    path = _write(tmp_path / "x.pkl", pickle.dumps(records, protocol=protocol))
    raw = exromana.read_raw(path)
    rec = raw["TP"][0]
    for key in ("candid", "mag", "flag", "name", "raw"):
        assert type(rec[key]) is type(records["TP"][0][key]) and rec[key] == records["TP"][0][key], key
    np.testing.assert_array_equal(rec["small"], np.arange(3))
    assert rec["small"].dtype == np.dtype(">i2")
    np.testing.assert_array_equal(rec["fortran"], np.arange(6.0).reshape(2, 3))
    assert rec["objs"] == [1, "a", None] and rec["nested"] == records["TP"][0]["nested"]
    data = exromana.validate(raw)
    np.testing.assert_array_equal(data.samples[3], records["FP"][1]["sample"])


def test_files_written_by_numpy_1(tmp_path: Path) -> None:
    """NumPy 1.x names its reconstructors numpy.core.multiarray and pickled with protocol 3 (GLOBAL opcodes)."""
    records = _records(1, 1, "f8")
    path = tmp_path / "new.npy"
    np.save(path, np.asarray(records, dtype=object), allow_pickle=True)
    header_end = path.read_bytes().index(b"\n") + 1
    body = pickle.dumps(np.asarray(records, dtype=object), protocol=3)
    assert b"numpy._core.multiarray" in body
    old = path.read_bytes()[:header_end] + body.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    data = exromana.load(_write(tmp_path / "old.npy", old))
    np.testing.assert_array_equal(data.samples[1], records["FP"][0]["sample"].astype(np.float32))


def test_python_2_era_file(tmp_path: Path) -> None:
    """Python 2 wrote str (keys, dtype strings, raw array data) as SHORT_BINSTRING/BINSTRING."""
    sample = np.arange(64 * 64 * 4, dtype="<f4").reshape(64, 64, 4)

    def py2_array(values: np.ndarray) -> bytes:
        new = asm.global_("numpy.core.multiarray", "_reconstruct") + asm.global_("numpy", "ndarray")
        new += asm.integer(0) + asm.TUPLE1 + asm.py2_str(b"b") + asm.TUPLE3 + asm.REDUCE
        dtype = asm.global_("numpy", "dtype") + asm.py2_str(b"f4") + asm.integer(0) + asm.integer(1) + asm.TUPLE3
        dtype += asm.REDUCE + asm.tuple_of(
            [asm.integer(3), asm.py2_str(b"<"), asm.NONE, asm.NONE, asm.NONE, *[asm.integer(-1)] * 2, asm.integer(0)]
        )
        dtype += asm.BUILD
        state = asm.tuple_of(
            [
                asm.integer(1),
                asm.tuple_of([asm.integer(d) for d in values.shape]),
                dtype,
                asm.integer(0),
                asm.py2_str(values.tobytes()),
            ]
        )
        return new + state + asm.BUILD

    def record(values: np.ndarray) -> bytes:
        return asm.dict_of([(asm.py2_str(b"sample"), py2_array(values)), (asm.py2_str(b"id"), asm.py2_str(b"\xe9"))])

    ops = asm.dict_of(
        [(asm.py2_str(b"TP"), asm.list_of([record(sample)])), (asm.py2_str(b"FP"), asm.list_of([record(-sample)]))]
    )
    zero_d = asm.global_("numpy.core.multiarray", "_reconstruct") + asm.global_("numpy", "ndarray")
    zero_d += asm.integer(0) + asm.TUPLE1 + asm.py2_str(b"b") + asm.TUPLE3 + asm.REDUCE
    zero_d += asm.tuple_of(
        [asm.integer(1), asm.EMPTY_TUPLE, asm.object_dtype(), asm.FALSE, asm.EMPTY_LIST + ops + asm.APPEND]
    )
    path = _write(tmp_path / "py2.npy", asm.npy_object(asm.PROTO2 + zero_d + asm.BUILD + asm.STOP))
    raw = exromana.read_raw(path)
    assert raw["TP"][0]["id"] == "\xe9"  # latin-1, as NumPy reads Python 2 files with encoding="latin1"
    data = exromana.validate(raw)
    np.testing.assert_array_equal(data.samples[0], sample)
    np.testing.assert_array_equal(data.samples[1], -sample)


# --- 3. values beyond float32: no warnings, counted as non-finite ------------------------------------------


def test_huge_float64_values_become_counted_nonfinite_pixels_without_warnings(tmp_path: Path) -> None:
    records = _records(1, 1, "f8")
    records["TP"][0]["sample"][5, 6, 3] = 1e300
    records["FP"][0]["sample"][7, 8, 3] = -1e300
    paths = [exromana.save(records, tmp_path / "x.npy")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # an .npz of float64 samples, converted on reading
        npz = tmp_path / "x64.npz"
        with zipfile.ZipFile(npz, "w") as zf:
            samples = np.stack([records["TP"][0]["sample"], records["FP"][0]["sample"]])
            for name, array in (("samples", samples), ("labels", np.array([1, 0], dtype=np.int8))):
                with zf.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, array)
        paths.append(npz)
        for path in paths:
            data = exromana.load(path)
            assert np.isposinf(data.samples[0, 5, 6, 3]) and np.isneginf(data.samples[1, 7, 8, 3])
            scaled, n_bad = zscale(np.moveaxis(data.samples, -1, 1))
            assert n_bad == 2
            assert scaled[0, 3, 5, 6] == 0 and scaled[1, 3, 7, 8] == 0
            assert np.isfinite(scaled).all() and scaled.max() <= 1


def test_zscale_of_extreme_float32_values_is_silent() -> None:
    cutouts = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    cutouts[0, 0, 0, 0] = np.finfo(np.float32).max
    cutouts[0, 0, 0, 1] = -np.finfo(np.float32).max
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled, n_bad = zscale(cutouts)
    assert n_bad == 0 and np.isfinite(scaled).all()


# --- the .npz format ------------------------------------------------------------------------------------------


def test_save_picks_the_format_by_suffix_and_load_by_content(tmp_path: Path) -> None:
    records = _records(3, 2, "f4")
    npz = exromana.save(records, tmp_path / "x.npz")
    npy = exromana.save(records, tmp_path / "x.npy")
    other = exromana.save(records, tmp_path / "x.dat")
    assert npz.read_bytes()[:4] == other.read_bytes()[:4] == b"PK\x03\x04"
    assert npy.read_bytes()[:6] == b"\x93NUMPY"
    with np.load(npz, allow_pickle=False) as z:  # plain NumPy reads it without pickle
        assert z["samples"].dtype == np.float32 and z["samples"].shape == (5, 64, 64, 4)
        assert z["labels"].dtype == np.int8 and z["labels"].tolist() == [1, 1, 1, 0, 0]
        assert bytes(z["format"]) == exromana.NPZ_FORMAT
    a, b = exromana.load(npz), exromana.load(npy)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels.dtype == np.int64
    # detection is by content, not by name
    swapped = _write(tmp_path / "swapped.npy", npz.read_bytes())
    assert exromana.load(swapped).counts == {"TP": 3, "FP": 2}
    # read_raw of an .npz gives a checked set that validate passes through (export.load_cutouts relies on it)
    from hpo_astro.results.export import load_cutouts

    cutouts = load_cutouts(npz)
    assert cutouts.labels is not None and cutouts.labels.tolist() == [1, 1, 1, 0, 0]


def test_npz_bytes_are_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = _records(2, 1, "f4")
    a = exromana.save(records, tmp_path / "a.npz")
    import time

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400 * 400)  # zip entries carry no wall-clock time
    b = exromana.save(records, tmp_path / "b.npz")
    assert a.read_bytes() == b.read_bytes()


def _npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, content in members.items():
            zf.writestr(f"{name}.npy", content)
    return path


def _npy_bytes(array: np.ndarray, header: str | None = None) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    content = buffer.getvalue()
    if header is None:
        return content
    end = content.index(b"\n") + 1
    text = header.ljust(end - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + content[end:]


BIG_SAMPLES_HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': (3000, 64, 64, 4)}"


def _good_members(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "samples": rng.normal(size=(n, 64, 64, 4)).astype(np.float32),
        "labels": np.array([1] * (n - 1) + [0], dtype=np.int8),
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        # a header declaring far more records than the member holds
        (
            {"samples": lambda a: _npy_bytes(a, BIG_SAMPLES_HEADER)},
            "samples have shape",
        ),
        (
            {"labels": lambda a: _npy_bytes(a, "{'descr': '|i1', 'fortran_order': False, 'shape': (30000000,), }")},
            "holds 30000000 records",
        ),
        (
            {"labels": lambda a: _npy_bytes(a, "{'descr': '|i1', 'fortran_order': False, 'shape': (30000,), }")},
            "holds 131 bytes, but its header declares 30128",
        ),
        ({"labels": lambda a: _npy_bytes(np.array([1, 2, 0], dtype=np.int8))}, "labels must be 1"),
        ({"labels": lambda a: _npy_bytes(np.array([1, 1, 1], dtype=np.int8))}, "found only TP"),
        ({"labels": lambda a: _npy_bytes(a.astype(np.float32))}, "labels have dtype float32"),
        ({"labels": lambda a: _npy_bytes(a, "{'descr': '|O', 'fortran_order': False, 'shape': (3,)}")}, "not a plain"),
        ({"samples": lambda a: _npy_bytes(a[:2])}, r"expected \(3, 64, 64, 4\)"),
        ({"samples": lambda a: _npy_bytes(a, "{'descr': '<f4', 'shape': (3, 64, 64, 4), }")}, "corrupt .npy header"),
        ({"samples": lambda a: _npy_bytes(a, "(" * 300)}, "corrupt .npy header"),
        ({"samples": lambda a: b"\x93NUMPY\x09\x00" + bytes(a)[:100]}, "unknown format version"),
        ({"samples": lambda a: b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{"}, "declares 2147483647 bytes"),
        ({"samples": None}, "no 'samples.npy' member"),
        ({"format": lambda a: _npy_bytes(np.frombuffer(b"other/2", dtype=np.uint8))}, "format marker"),
    ],
)
def test_bad_npz_files(tmp_path: Path, change: dict, match: str) -> None:
    members = _good_members()
    members["format"] = np.frombuffer(exromana.NPZ_FORMAT, dtype=np.uint8)
    content: dict[str, bytes] = {}
    for name, array in members.items():
        if name in change:
            if change[name] is not None:
                content[name] = change[name](array)
        else:
            content[name] = _npy_bytes(array)
    path = _npz(tmp_path / "x.npz", content)
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, match)


def test_npz_zip_bomb_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deflated member of zeros declaring 50,000 records (3.3 GB) in a file of a few MB: refused by the
    record limit before anything is allocated; under the limit, a member whose directory entry lies about its
    size is refused by the size check."""
    import io

    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 64, 64, 4), dtype=np.float32))
    header["shape"] = (50_000, 64, 64, 4)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    labels = _npy_bytes(np.array([1, 0] * 25_000, dtype=np.int8))
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.npy", labels)
        with zf.open("samples.npy", "w", force_zip64=True) as member:
            member.write(buffer.getvalue())
            zeros = bytes(1 << 24)
            for _ in range(4):  # 64 MiB of zeros, far less than the header declares
                member.write(zeros)
    assert path.stat().st_size < 1 << 20
    monkeypatch.setenv("HPO_ASTRO_MAX_RECORDS", "10000")
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, "holds 50000 records, more than the limit")
    monkeypatch.setenv("HPO_ASTRO_MAX_RECORDS", "100000")
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, "refused as a zip bomb")


def test_an_honest_npz_zip_bomb_is_refused_by_its_compression_ratio(tmp_path: Path) -> None:
    """Headers and sizes all consistent, 4,000 records of zeros (262 MB) deflated to about 250 kB: everything adds
    up, so only the ratio tells it apart from cutouts (which hold noise and compress by less than 2x)."""
    n = 4_000
    path = tmp_path / "honest-bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.npy", _npy_bytes(np.array([1, 0] * (n // 2), dtype=np.int8)))
        zf.writestr("samples.npy", _npy_bytes(np.zeros((n, 64, 64, 4), dtype=np.float32)))
    assert path.stat().st_size < 1 << 20
    assert _peak_bytes(lambda: exromana.load(path)) < 8 << 20
    _refused(path, "refused as a zip bomb")
    noisy = tmp_path / "noisy.npz"  # real-looking cutouts, deflated: accepted
    samples = np.random.default_rng(0).normal(100, 10, size=(40, 64, 64, 4)).astype(np.float32)
    with zipfile.ZipFile(noisy, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.npy", _npy_bytes(np.array([1, 0] * 20, dtype=np.int8)))
        zf.writestr("samples.npy", _npy_bytes(samples))
    assert len(exromana.load(noisy).labels) == 40


def test_truncated_and_corrupt_npz(tmp_path: Path) -> None:
    good = exromana.save(_records(2, 1, "f4"), tmp_path / "good.npz")
    content = good.read_bytes()
    for cut in (10, 100, len(content) // 2, len(content) - 30):
        with pytest.raises(UserError, match=r"x\.npz"):
            exromana.load(_write(tmp_path / "x.npz", content[:cut]))
    flipped = bytearray(content)
    flipped[len(content) // 2] ^= 0xFF  # inside the sample data: the CRC check catches it
    _refused(_write(tmp_path / "x.npz", bytes(flipped)), "truncated or corrupt")
    _refused(_write(tmp_path / "x.npz", b"PK\x05\x06" + bytes(18)), "no 'labels.npy' member")


# --- atomic_write ---------------------------------------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_atomic_write_to_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UserError, match=r"cannot write .*out: it is a directory"), atomic_write(target) as fh:
        fh.write(b"x")
    assert _leftovers(tmp_path) == [] and target.is_dir()


def test_atomic_write_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _write(tmp_path / "x.bin", b"old")

    def full_disk(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    with (
        pytest.raises(UserError, match=r"cannot write .*x.bin: No space left on device"),
        atomic_write(target) as fh,
    ):
        fh.write(b"new")
    assert _leftovers(tmp_path) == [] and target.read_bytes() == b"old"


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), ValueError("bug")])
def test_atomic_write_when_the_block_fails(tmp_path: Path, error: Exception) -> None:
    target = tmp_path / "x.bin"
    expected = UserError if isinstance(error, OSError) else ValueError
    with pytest.raises(expected), atomic_write(target) as fh:
        fh.write(b"partial")
        raise error
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_when_the_close_fails(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    writer = atomic_write(target)
    fh = writer.__enter__()
    fh.write(b"data")
    real_close = fh.close

    def failing_close() -> None:
        real_close()
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    fh.close = failing_close  # type: ignore[method-assign]
    with pytest.raises(UserError, match="Disk quota exceeded"):
        writer.__exit__(None, None, None)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_in_a_read_only_directory(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("running with privileges that write anyway (root)")
        with pytest.raises(UserError, match=r"cannot write .*Permission denied"):
            exromana.save(_records(1, 1, "f4"), directory / "x.npz")
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o700)


def test_unwritable_cache_does_not_stop_load_splits(
    small_file: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo_astro.data import prepare

    class Unwritable:
        def __init__(self, path: Path) -> None:
            self.path = path

        def __enter__(self) -> None:
            raise UserError(f"cannot write {self.path}: Read-only file system")

        def __exit__(self, *args: object) -> None:
            pass

    monkeypatch.setattr(prepare, "atomic_write", Unwritable)
    splits = prepare.load_splits(small_file)
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 240
    assert not (isolated_cache / "prepared").exists() or not any((isolated_cache / "prepared").iterdir())


def test_default_simulated_data_is_npz(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo_astro.data import prepare, simulate

    real = simulate.simulate_records
    monkeypatch.setattr(simulate, "simulate_records", lambda n, seed: real(n=30, seed=seed))
    path = prepare.default_data_path()
    assert path.suffix == ".npz" and path.read_bytes()[:4] == b"PK\x03\x04"
    assert path.name.startswith(f"exromana-sim-n{prepare.DEFAULT_SIM_N}-seed{prepare.DEFAULT_SIM_SEED}-")
    assert exromana.load(path).samples.shape == (30, 64, 64, 4)


# --- the data commands --------------------------------------------------------------------------------------


def test_data_synth_formats(tmp_path: Path) -> None:
    npz, npy = tmp_path / "a.npz", tmp_path / "a.npy"
    for path in (npz, npy):
        result = invoke("data", "synth", "--out", path, "--n", 30, "--seed", 2**32 - 1)
        assert result.exit_code == 0, result.output
    assert npz.read_bytes()[:4] == b"PK\x03\x04"
    raw = np.load(npy, allow_pickle=True).item()  # exactly the ExRomana format
    assert set(raw) == {"TP", "FP"} and raw["TP"][0]["sample"].shape == (64, 64, 4)
    np.testing.assert_array_equal(exromana.load(npz).samples, exromana.load(npy).samples)
    help_text = invoke("data", "synth", "--help").stdout
    assert ".npz" in help_text and ".npy" in help_text


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_data_synth_refuses_out_of_range_seeds(tmp_path: Path, seed: int) -> None:
    result = invoke("data", "synth", "--out", tmp_path / "x.npz", "--n", 10, "--seed", seed)
    assert_refused(result, "--seed")
    assert list(tmp_path.iterdir()) == []


def test_data_synth_to_a_directory(tmp_path: Path) -> None:
    assert_refused(invoke("data", "synth", "--out", tmp_path, "--n", 10), "it is a directory")
    assert _leftovers(tmp_path) == []


def test_data_info_gallery_to_a_directory(tmp_path: Path, small_file: Path) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    assert_refused(invoke("data", "info", small_file, "--gallery", gallery), "it is a directory")
    assert _leftovers(tmp_path) == [] and list(gallery.iterdir()) == []


def test_data_info_reads_npz(tmp_path: Path) -> None:
    path = exromana.save(_records(3, 2, "f4"), tmp_path / "x.npz")
    result = invoke("data", "info", path, "--gallery", tmp_path / "g.png", "--per-class", 1)
    assert result.exit_code == 0, result.output
    assert "5 records, TP 3" in result.stdout and (tmp_path / "g.png").is_file()


def test_data_convert(tmp_path: Path, small_file: Path) -> None:
    out = tmp_path / "small.npz"
    result = invoke("data", "convert", small_file, "--out", out)
    assert result.exit_code == 0, result.output
    source, converted = exromana.load(small_file), exromana.load(out)
    np.testing.assert_array_equal(source.samples, converted.samples)
    np.testing.assert_array_equal(source.labels, converted.labels)
    assert f"{source.counts['TP']} TP + {source.counts['FP']} FP" in result.stdout
    assert f"sha256 {exromana.sha256_file(out)}" in result.stdout
    # a pickle of the same records converts too; converting again gives the same bytes
    bare = _write(tmp_path / "bare.pkl", pickle.dumps(np.load(small_file, allow_pickle=True).item(), protocol=5))
    again = tmp_path / "again.npz"
    assert invoke("data", "convert", bare, "--out", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_data_convert_refusals(tmp_path: Path, small_file: Path) -> None:
    assert_refused(invoke("data", "convert", small_file, "--out", tmp_path / "x.npy"), "--out must end in .npz")
    npz = exromana.save(_records(1, 1, "f4"), tmp_path / "x.npz")
    before = npz.read_bytes()
    assert_refused(invoke("data", "convert", npz, "--out", npz), "is the source file")
    link = tmp_path / "link.npz"
    link.symlink_to(npz)
    assert_refused(invoke("data", "convert", npz, "--out", link), "is the source file")
    assert npz.read_bytes() == before
    crash = _write(tmp_path / "crash.npy", asm.crash_file())
    assert_refused(invoke("data", "convert", crash, "--out", tmp_path / "c.npz"), "refusing to load")
    assert not (tmp_path / "c.npz").exists() and _leftovers(tmp_path) == []


def test_data_convert_refuses_a_cutout_that_every_reader_refuses(tmp_path: Path) -> None:
    """A record whose plane holds no finite pixel: `data info` refuses the file, so `data convert` does not write
    it into a new file either (it used to, and the converted file was then refused)."""
    records = _records(2, 1, "f4")
    records["FP"][0]["sample"][:, :, 3] = np.nan
    path = _write(tmp_path / "nan.pkl", pickle.dumps(records, protocol=4))
    assert_refused(invoke("data", "info", path), "no finite pixel")
    assert_refused(invoke("data", "convert", path, "--out", tmp_path / "c.npz"), "record 2 (plane 3) has no finite")
    assert not (tmp_path / "c.npz").exists() and _leftovers(tmp_path) == []


def test_shared_records_in_the_cli_are_one_line(tmp_path: Path) -> None:
    records = _records(1, 1)
    records["TP"].append(records["TP"][0])
    path = _write(tmp_path / "x.pkl", pickle.dumps(copy.copy(records), protocol=4))
    assert_refused(invoke("data", "info", path, "--gallery", tmp_path / "g.png"), "more than once")
