"""The ExRomana file format: exact round-trip, the allow-list unpickler, structure validation, download."""

from __future__ import annotations

import os
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import write_npy_object

from hpo_astro.data import download, exromana
from hpo_astro.errors import UserError


def test_round_trip_is_the_exromana_format(tmp_path: Path, small_records: dict) -> None:
    path = exromana.save(small_records, tmp_path / "x.npy")
    # Exactly what users of the real file do: np.load(..., allow_pickle=True).item()
    raw = np.load(path, allow_pickle=True).item()
    assert set(raw) == {"TP", "FP"}
    assert len(raw["TP"]) == len(small_records["TP"]) and len(raw["FP"]) == len(small_records["FP"])
    np.testing.assert_array_equal(raw["FP"][3]["sample"], small_records["FP"][3]["sample"])
    data = exromana.load(path)
    assert data.samples.shape == (240, 64, 64, 4)
    assert data.counts == {"TP": len(small_records["TP"]), "FP": len(small_records["FP"])}
    # TP first, label 1; FP after, label 0 (the order of the file)
    assert data.labels[: data.counts["TP"]].all() and not data.labels[data.counts["TP"] :].any()
    np.testing.assert_array_equal(data.samples[0], small_records["TP"][0]["sample"])


def test_extra_record_keys_are_ignored(tmp_path: Path) -> None:
    rec = {"sample": np.zeros((64, 64, 4)), "candid": 123, "meta": {"a": [1.5, "x"]}}
    other = {**rec, "sample": np.ones((64, 64, 4))}  # its own cutout: a file may not reuse one
    data = exromana.load(write_npy_object(tmp_path / "x.npy", {"TP": [rec], "FP": [other]}))
    assert data.samples.dtype == np.float32 and data.counts == {"TP": 1, "FP": 1}


def test_bare_pickle_is_read_too(tmp_path: Path) -> None:
    def rec() -> dict:
        return {"sample": np.ones((64, 64, 4), dtype=np.float64)}

    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"TP": [rec()], "FP": [rec()]}, protocol=4))
    assert exromana.load(path).samples.shape == (2, 64, 64, 4)


class _RunsCode:
    """Unpickling this would call os.system and create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["npy", "pickle"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"TP": [{"sample": _RunsCode(marker)}], "FP": []}
    path = tmp_path / "evil.npy"
    if container == "npy":
        write_npy_object(path, payload)
    else:
        path.write_bytes(pickle.dumps(payload))
    # sanity: the payload really would run code if unpickled naively
    with pytest.raises(exromana.UnsafePickleError, match=r"posix\.system|os\.system"):
        exromana.load(path)
    assert not marker.exists()


def test_unsafe_global_in_array_dtype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(pickle.dumps({"TP": [{"sample": print}], "FP": []}))
    with pytest.raises(exromana.UnsafePickleError, match=r"builtins\.print"):
        exromana.load(path)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("abc", "expected a dict with .TP. and .FP., got str"),
        ({"TP": []}, "missing key"),
        ({"TP": [{"x": 1}], "FP": []}, r"TP\[0\] has no 'sample'"),
        ({"TP": [{"sample": np.zeros((64, 64, 3))}], "FP": []}, r"TP\[0\]: 'sample' has shape \(64, 64, 3\)"),
        ({"TP": [{"sample": np.zeros((64, 64, 4))}], "FP": [{"sample": "abc"}]}, r"FP\[0\]: 'sample' has shape"),
        ({"TP": [{"sample": np.zeros((64, 64, 4))}], "FP": []}, "only TP"),
        ({"TP": [], "FP": []}, "no records"),
    ],
)
def test_structure_errors_name_the_problem(tmp_path: Path, obj: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        exromana.load(write_npy_object(tmp_path / "x.npy", obj))


def test_an_unlabelled_list_of_records_is_checked_record_by_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate_records (what predict reads a plain list of records with) applies validate's per-record checks,
    needs no classes, and counts exactly the records given against the record limit."""
    rng = np.random.default_rng(0)
    records = [{"sample": rng.normal(size=(64, 64, 4))} for _ in range(3)]
    samples = exromana.validate_records(records, "new.npy")
    assert samples.dtype == np.float32 and samples.shape == (3, 64, 64, 4)
    assert np.array_equal(samples, np.stack([r["sample"] for r in records]).astype(np.float32))
    same = exromana.validate({"TP": records[:2], "FP": records[2:]}, "new.npy").samples
    assert np.array_equal(samples, same)
    with pytest.raises(UserError, match=r"new.npy: records\[1\] has no 'sample'"):
        exromana.validate_records([records[0], {"x": 1}], "new.npy")
    with pytest.raises(UserError, match=r"records\[0\]: 'sample' has dtype <U1"):
        exromana.validate_records([{"sample": np.full((64, 64, 4), "a")}], "new.npy")
    with pytest.raises(UserError, match="the file holds no records"):
        exromana.validate_records([], "new.npy")
    monkeypatch.setenv(exromana.MAX_RECORDS_ENV, "3")
    assert len(exromana.validate_records(records, "new.npy")) == 3
    with pytest.raises(UserError, match="more than the limit of 3"):
        exromana.validate_records(records + records[:1], "new.npy")


def test_truncated_and_foreign_files(tmp_path: Path, small_file: Path) -> None:
    truncated = tmp_path / "t.npy"
    truncated.write_bytes(small_file.read_bytes()[:200_000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        exromana.load(truncated)
    numeric = tmp_path / "n.npy"
    np.save(numeric, np.zeros((3, 64, 64, 4)))
    with pytest.raises(UserError, match="not an ExRomana file"):
        exromana.load(numeric)
    text = tmp_path / "x.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not an ExRomana file"):
        exromana.load(text)
    with pytest.raises(UserError, match="not found"):
        exromana.load(tmp_path / "missing.npy")


# --- download -----------------------------------------------------------------------------------------------


class _RangeServer:
    """A loopback HTTP server that serves one payload and honours `Range: bytes=N-`."""

    def __init__(self, payload: bytes, fail_after: int | None = None) -> None:
        self.payload, self.fail_after, self.ranges = payload, fail_after, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = 0
                if header := self.headers.get("Range"):
                    outer.ranges.append(header)
                    start = int(header.removeprefix("bytes=").split("-")[0])
                body = outer.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.fail_after is not None:
                    self.wfile.write(body[: outer.fail_after])
                    outer.fail_after = None
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/exromana_training_samples.npy"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_download_validates_and_resumes(tmp_path: Path, small_file: Path) -> None:
    payload = small_file.read_bytes()
    server = _RangeServer(payload, fail_after=len(payload) // 3)
    out = tmp_path / "dl" / "exromana.npy"
    try:
        with pytest.raises(UserError, match=r"run it again to resume|truncated"):
            download.download(server.url, out)
        part = out.with_name(out.name + ".part")
        assert not out.exists()
        have = part.stat().st_size
        assert 0 < have < len(payload)
        seen: list[tuple[int, int | None]] = []
        download.download(server.url, out, progress=lambda done, total: seen.append((done, total)))
        assert server.ranges == [f"bytes={have}-"]
        assert seen[0][0] == have and seen[-1] == (len(payload), len(payload))
    finally:
        server.close()
    assert out.read_bytes() == payload and not part.exists()
    assert exromana.sha256_file(out) == exromana.sha256_file(small_file)


def test_download_of_invalid_content_leaves_nothing(tmp_path: Path) -> None:
    server = _RangeServer(b"<html>not here</html>")
    out = tmp_path / "x.npy"
    try:
        with pytest.raises(UserError, match="not a valid ExRomana file"):
            download.download(server.url, out)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []


def test_download_without_network_fails_clearly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError, match=r"cannot download .*no network"):
        download.download(f"http://127.0.0.1:{port}/x.npy", tmp_path / "x.npy", timeout=5)
    assert not (tmp_path / "x.npy").exists()


def test_download_from_local_file_url(tmp_path: Path, small_file: Path) -> None:
    out = download.download(small_file.resolve().as_uri(), tmp_path / "copy.npy")
    assert out.read_bytes() == small_file.read_bytes()
