"""Output paths that are not regular files (#17, 3): a character device such as /dev/null is written in place and
stays a device; a FIFO is refused with one line before any work, and is still a FIFO afterwards."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers import assert_refused, invoke

from hpo_astro.errors import UserError
from hpo_astro.io import check_output, write_output


def test_dev_null_is_written_in_place_and_stays_a_device() -> None:
    write_output(Path("/dev/null"), "scores\n")
    check_output(Path("/dev/null"))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_is_refused_and_left_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        check_output(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        write_output(fifo, "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_commands_write_scores_and_tables_to_dev_null_and_refuse_a_fifo(store: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_refused(invoke("compare", "--storage", store, "--format", "csv", "--out", fifo), "not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    result = invoke("compare", "--storage", store, "--format", "csv", "--out", "/dev/null")
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
