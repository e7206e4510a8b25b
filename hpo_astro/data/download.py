"""Fetching the real ExRomana file: resumes a partial download (HTTP Range), validates the file before it is put in
place, and fails with one line when there is no network (fetch the file elsewhere and pass --data PATH)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from hpo_astro.data.exromana import load
from hpo_astro.errors import UserError
from hpo_astro.io import os_reason

OFFICIAL_URL = "https://sites.astro.caltech.edu/~aam/exromana_training_samples.npy"


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
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.is_file() else 0
    except OSError as exc:
        raise UserError(f"cannot write {out}: {os_reason(exc)}") from None
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
            with _opened_for_writing(part, "ab" if resumed else "wb") as fh:
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
    try:
        os.replace(part, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {os_reason(exc)}") from None
    return out


@contextlib.contextmanager
def _opened_for_writing(path: Path, mode: str) -> Iterator[BinaryIO]:
    """`open`, with OSError (while opening, writing or closing: a full disk) as one UserError line."""
    try:
        with path.open(mode) as fh:
            yield fh  # type: ignore[misc]
    except OSError as exc:
        raise UserError(f"cannot write {path}: {os_reason(exc)}") from None
