"""A journal store on a full disk (#17, 1): a write that fails part-way must leave the journal as it was, and a
journal that a killed or failed writer left with half a record must be read and resumed, not declared damaged."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers import invoke, patience
from optuna.trial import TrialState

from hpo_astro.store.journal import drop_incomplete_tail
from hpo_astro.store.storage import open_storage

CHEAP = "[space]\nconv_layers = [1]\nfc_layers = [1]\nbatch_size = [256]\nlr = [1e-2, 1e-3, 1e-4]\n"


def _command(journal: Path, study_file: Path, data: Path, n_trials: int) -> list[str]:
    command = [sys.executable, "-m", "hpo_astro.cli", "run", "-n", n_trials, "--data", data, "--max-epochs", 1]
    return [str(c) for c in [*command, "--config", study_file, "--storage", f"journal:{journal}", "--study", "j"]]


def test_a_journal_write_cut_by_a_file_size_limit_leaves_whole_records_and_resumes(
    tmp_path: Path, small_file: Path
) -> None:
    """The journal may grow by only a few hundred bytes: the append that crosses the limit is cut part-way by the
    operating system. The run ends with one `error:` line; the journal still ends in a whole record; the same
    command without the limit ends with exactly the budget."""
    from hpo_astro.data.prepare import load_splits

    load_splits(small_file)  # cached before the limit applies
    journal, study_file = tmp_path / "j.log", tmp_path / "cheap.toml"
    study_file.write_text(CHEAP)
    artifacts = tmp_path / "art"
    first = invoke(*_command(journal, study_file, small_file, 1)[3:], "--artifacts", artifacts)  # in this process
    assert first.exit_code == 0, first.output
    size = journal.stat().st_size

    command = [*_command(journal, study_file, small_file, 3), "--artifacts", str(artifacts)]
    # A limit a little above the journal's size, so that a journal append (not a checkpoint, a separate file) is
    # the write that crosses it, after the trial recorded its worker: the next run then finds the trial's process
    # dead at once (a trial cut off before that waits out the 60 s floor for workerless trials, see recovery).
    for extra in (2000, 2500, 1600, 3000):

        def limit_writes(extra: int = extra) -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + extra, size + extra))

        limited = subprocess.run(
            command, capture_output=True, text=True, preexec_fn=limit_writes, timeout=patience(300)
        )
        if "cannot write the study store" in limited.stderr:
            break
    assert limited.returncode == 1, limited.stderr
    assert "Traceback" not in limited.stderr
    errors = [line for line in limited.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot write the study store" in errors[0], limited.stderr
    content = journal.read_bytes()
    assert content.endswith(b"\n") and len(content) <= size + extra  # no half record left behind
    assert invoke("status", "--storage", f"journal:{journal}").exit_code == 0
    again = invoke(*command[3:])  # the same command without the limit, in this process
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="j", storage=open_storage(f"journal:{journal}"))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.parametrize("tail", [b'{"op_code": 5, "worker_id": "x", "trial_id"', b"{", b"\x00\x00\x00"])
def test_half_a_record_left_by_a_killed_writer_is_dropped_by_the_next_run(
    tail: bytes, tmp_path: Path, small_file: Path
) -> None:
    """What an earlier version (or a kill -9 in the middle of a write) left behind: the journal ends in an incomplete
    line. Readers skip it (status works), and the next `run` drops it before its first append and resumes."""
    journal, study_file = tmp_path / "j.log", tmp_path / "cheap.toml"
    study_file.write_text(CHEAP)
    args = ["run", "--data", small_file, "--max-epochs", 1, "--config", study_file, "--study", "j"]
    assert invoke(*args, "-n", 1, "--storage", f"journal:{journal}").exit_code == 0
    whole = journal.read_bytes()
    journal.write_bytes(whole + tail)
    status = invoke("status", "--storage", f"journal:{journal}")
    assert status.exit_code == 0, status.output
    assert journal.read_bytes() == whole + tail  # readers never write
    again = invoke(*args, "-n", 2, "--storage", f"journal:{journal}")
    assert again.exit_code == 0, again.output
    lines = journal.read_bytes().split(b"\n")
    assert journal.read_bytes().startswith(whole) and lines[-1] == b""
    assert all(isinstance(json.loads(line), dict) for line in lines[:-1])  # every record whole
    study = optuna.load_study(study_name="j", storage=open_storage(f"journal:{journal}"))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2


@pytest.mark.parametrize(
    ("content", "kept"),
    [(b"", b""), (b"a\n", b"a\n"), (b"a\nb", b"a\n"), (b"abc", b""), (b"a\n" + b"x" * 200_000, b"a\n")],
)
def test_drop_incomplete_tail(content: bytes, kept: bytes, tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(content)
    assert drop_incomplete_tail(path) == len(kept)
    assert path.read_bytes() == kept
