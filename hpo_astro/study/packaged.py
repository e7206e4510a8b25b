"""The study files shipped in the package: the repository's `studies/` folder, installed as `hpo_astro.studies`
(pyproject.toml maps it there, so there is one copy, found the same way in a wheel and in an editable install).

`--config NAME` reads the packaged `NAME.toml` when NAME is a bare name (no folder, no `.toml`) and no file of that
name is in the working directory: a path always wins (`resolve_study_file`). `hpo-astro init NAME` copies one out
(`copy_study_file`) to edit."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from hpo_astro.errors import UserError
from hpo_astro.io import check_output, write_output

PACKAGE = "hpo_astro.studies"
SUFFIX = ".toml"


def packaged_names() -> list[str]:
    """The names of the packaged study files, sorted (`quick-demo` for quick-demo.toml)."""
    return sorted(
        entry.name.removesuffix(SUFFIX)
        for entry in resources.files(PACKAGE).iterdir()
        if entry.name.endswith(SUFFIX) and entry.is_file()
    )


def is_study_name(value: str | os.PathLike[str]) -> bool:
    """Whether `value` reads as the name of a packaged study, not a path: no folder part, no `.toml` suffix."""
    text = os.fspath(value)
    separators = [os.sep, *([os.altsep] if os.altsep else []), "/"]
    return text not in ("", ".", "..") and not any(s in text for s in separators) and not text.endswith(SUFFIX)


def packaged_file(name: str) -> Path:
    """The packaged study file `name` (without `.toml`), on disk where the package is installed; an unknown name is
    one line that lists the known ones."""
    names = packaged_names()
    if name not in names:
        raise UserError(f"no packaged study file named {name!r}; the packaged ones: {', '.join(names)}")
    resource = resources.files(PACKAGE).joinpath(name + SUFFIX)
    if not isinstance(resource, Path):  # a package imported from a zip archive: not how pip installs one
        raise UserError(f"the packaged study files are not on disk here ({resource}); pass a study file's path")
    return resource


def resolve_study_file(value: str | os.PathLike[str]) -> Path:
    """What `--config VALUE` reads: VALUE itself when it is a path (it has a folder part or ends in `.toml`) or
    names something in the working directory; otherwise the packaged study file of that name (`quick-demo`). A bare
    name that is neither is one line that lists the packaged names."""
    path = Path(value)
    if not is_study_name(value) or os.path.lexists(path):
        return path
    names = packaged_names()
    if os.fspath(value) not in names:
        raise UserError(
            f"study file not found: {os.fspath(value)!r} is no file here and no packaged study; "
            f"packaged: {', '.join(names)} (or pass a path to a .toml file)"
        )
    return packaged_file(os.fspath(value))


def copy_study_file(name: str, out: Path | None = None, force: bool = False) -> Path:
    """Write the packaged study file `name` to `out` (default `./NAME.toml`; into it when `out` is a folder) and
    return where. An existing file is kept unless `force`."""
    name = name.removesuffix(SUFFIX)
    source = packaged_file(name)
    target = Path(name + SUFFIX) if out is None else Path(out)
    if target.is_dir():
        target = target / (name + SUFFIX)
    if os.path.lexists(target) and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it, or --out to write elsewhere")
    check_output(target)
    return write_output(target, source.read_bytes())
