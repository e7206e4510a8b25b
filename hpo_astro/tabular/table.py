"""A table: the data model (`Table`, lookup of a configuration's row; its rows are `row.TableRow`) and its JSON
file format.

The format is plain data (`Table.save`): no pickle, nothing in a table file is ever executed. A file is read only
when it is a regular file, within a size and a JSON-value budget (a gzip bomb or /dev/zero stops at the budget);
every field is then checked (types here, values in `validate`), and a malformed file is one error line.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS, PAPER_SPACE, value_key
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError, one_line
from hpo_astro.io import atomic_write, read_regular_file, strict_json
from hpo_astro.tabular.row import (
    EPOCH_FIELDS,
    Malformed,
    TableRow,
    json_int,
    json_list,
    json_object,
    json_string,
    known_keys,
    row_from_json,
)
from hpo_astro.tabular.validate import (
    check_fixed,
    check_header,
    check_params,
    check_row,
    check_space,
    field_name,
    shown,
)

TABLE_FORMAT = "hpo-astro-table"
TABLE_VERSION = 2  # 2: several seeds per configuration ("seeds", each row's "seed"); a one-seed table is written as 1
READABLE_VERSIONS = (1, 2)
MAX_TABLE_SEEDS = 100
TABLE_PREFIX = "table/"  # a tabulate study is named table/<NAME>
# A table file's budget, decompressed: bytes, and JSON values (what parsing costs: an empty list is ~60 bytes of
# memory for 3 bytes of file). A table spends ~240 bytes and ~15 values an epoch: both allow ~270,000 epochs (e.g.
# 2,700 configurations of 100 epochs), and parsing a hostile file within them stays under ~0.5 GB.
MAX_TABLE_BYTES = 64 * 2**20
MAX_TABLE_VALUES = 4_000_000
_TOP_KEYS = (  # a file's fields; an unknown one is a typo or another format, refused
    "format",
    "version",
    "name",
    "space",
    "data_fingerprint",
    "seed",
    "max_epochs",
    "info",
    "epoch_fields",
    "rows",
    "seeds",
)
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # decompressed a MiB at a time


@dataclass(frozen=True)
class Table:
    """A finite space trained exhaustively: one row per configuration and training seed (`seeds` runs of each
    configuration, with seeds `seed`, `seed + 1`, ...: the training noise of a configuration, as it is).

    Rows are looked up by the values of the space's hyperparameters, compared as the study files compare them
    (1e-3 == 0.001, 64 == 64.0, "batchnorm" == "BatchNorm"), so a table survives JSON round trips. `rows` are kept
    in the space's order (the grid's, first hyperparameter slowest), whatever order they were given in. Every field is
    checked when a table is made (`validate`). A table built in code may hold fewer rows than its space has
    configurations (`missing` says how many); one read from a file or a store must hold them all."""

    name: str
    space: dict[str, Any]  # hyperparameter -> values or a finite range {low, high, step} (the space the table covers)
    rows: tuple[TableRow, ...]
    data_fingerprint: str  # of the data the rows were trained on
    seed: int  # the training seed of every row
    max_epochs: int | None
    # Provenance, free-form JSON (data source, channels, objective, version, recipe); optional, added after the
    # interface was fixed (a keyword with a default: constructors written against the skeleton still work).
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    seeds: int = 1  # runs of each configuration (rows per configuration), seeds seed ... seed + seeds - 1
    _search: SearchSpace = field(init=False, repr=False, compare=False)
    _index: dict[tuple[int, ...], tuple[TableRow, ...]] = field(init=False, repr=False, compare=False)
    # `runs` answers for a configuration it has checked once from here (a replayed benchmark asks thousands of times)
    _answered: dict[tuple, tuple[TableRow, ...]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        """Check the whole table (see `validate`) and index its rows: a bad table is refused here, once, not by every
        trial that would replay it. A row whose params leave hyperparameters out gets the defaults for them, as a
        trial's configuration does; values are kept as the space spells them (frozen: the rows are set once, here)."""
        name = check_header(self.name, self.data_fingerprint, self.seed, self.max_epochs, self.info)
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or not 1 <= self.seeds <= MAX_TABLE_SEEDS:
            raise UserError(f"table {name!r}: seeds must be a whole number from 1 to {MAX_TABLE_SEEDS}: {self.seeds!r}")
        search = check_space(name, self.space)
        index: dict[tuple[int, ...], dict[int, TableRow]] = {}
        checked: list[tuple[str, TableRow]] = []
        for number, row in enumerate(self.rows):
            where = f"table {name!r}: row {number}"
            if not isinstance(row, TableRow):
                raise UserError(f"{where} is not a TableRow")
            params = check_params(where, row.params)
            if not all(n in params for n in DEFAULT_PARAMS):
                params = {**DEFAULT_PARAMS, **params}
            seed = self.seed if row.seed is None else row.seed
            row = dataclasses.replace(row, params=params, seed=seed)
            key = space_key(search, params, where)
            label = f"row {number} ({_describe(search, key)})"
            check_row(f"table {name!r}: {label}", row, self.max_epochs)
            if not isinstance(seed, int) or not self.seed <= seed < self.seed + self.seeds:
                seeds = f"{self.seed} to {self.seed + self.seeds - 1}"
                raise UserError(f"table {name!r}: {label}: seed {seed!r} is not one of the table's, {seeds}")
            runs = index.setdefault(key, {})
            if seed in runs:
                again = "the configuration" if self.seeds == 1 else "the configuration and seed"
                raise UserError(f"table {name!r}: {label} repeats {again} of another row")
            runs[seed] = row
            checked.append((label, row))
        check_fixed(name, search, checked)
        for key, runs in index.items():
            if len(runs) != self.seeds:
                raise UserError(
                    f"table {name!r}: {_describe(search, key)} has {len(runs)} of the table's {self.seeds} seeds"
                )
        ordered = {key: tuple(runs[seed] for seed in sorted(runs)) for key, runs in sorted(index.items())}
        rows = tuple(row for runs in ordered.values() for row in runs)  # the space's order, then the seed's
        object.__setattr__(self, "rows", rows)  # whatever the source's order (a file, a store's trial order)
        object.__setattr__(self, "_search", search)
        object.__setattr__(self, "_index", ordered)

    @property
    def search_space(self) -> SearchSpace:
        return self._search

    @property
    def size(self) -> int:
        """Configurations in the space (rows present or not)."""
        return self.search_space.grid_size("a table")

    @property
    def missing(self) -> int:
        """Configurations without rows."""
        return self.size - len(self._index)

    @property
    def configurations(self) -> int:
        """Configurations with rows."""
        return len(self._index)

    def covers(self, max_epochs: int | None) -> bool:
        """Whether a replay capped at `max_epochs` (None: no cap) sees whole curves: the table was trained with at
        least that many epochs. A replay asked for more ends where the table's curves end."""
        return self.max_epochs is None or (max_epochs is not None and max_epochs <= self.max_epochs)

    def row(self, params: Mapping[str, Any], run: int = 0) -> TableRow:
        """The row of `params`'s run `run` (its seed `seed + run`); see `runs`."""
        return self.runs(params)[run]

    def runs(self, params: Mapping[str, Any]) -> tuple[TableRow, ...]:
        """The rows of `params` (a full configuration, or the table's space's hyperparameters), one per seed in seed
        order; a UserError if the table has no such configuration."""
        try:
            asked = tuple(params.items())
            answered = self._answered.get(asked)
        except TypeError:  # an unhashable value: checked below, and refused
            asked, answered = None, None
        if answered is not None:
            return answered
        search = self.search_space
        unknown = [name for name in params if name not in PAPER_SPACE]
        if unknown:
            raise UserError(f"unknown hyperparameter {unknown[0]!r}; known: {', '.join(PAPER_SPACE)}")
        key = space_key(search, params, f"configuration not in table {self.name!r}")
        runs = self._index.get(key)
        if runs is None:
            raise UserError(
                f"configuration not in table {self.name!r}: {_describe(search, key)} has no row "
                f"({self.configurations} of {self.size} configurations tabulated)"
            )
        row = runs[0]
        for name, value in params.items():  # the hyperparameters the table held fixed must agree too
            if name not in search and value_key(row.params.get(name)) != value_key(value):
                raise UserError(
                    f"configuration not in table {self.name!r}: it was trained with {name}={row.params.get(name)}, "
                    f"not {name}={value}"
                )
        if asked is not None:
            self._answered[asked] = runs
        return runs

    def to_json(self) -> dict[str, Any]:
        """The table as plain JSON data (the file format; non-finite numbers become null)."""
        search = self.search_space
        several = {"seeds": self.seeds} if self.seeds > 1 else {}  # a one-seed table: version 1, as before
        return {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION if several else 1,
            **several,
            "name": self.name,
            "space": search.to_dict(),
            "data_fingerprint": self.data_fingerprint,
            "seed": self.seed,
            "max_epochs": self.max_epochs,
            "info": self.info,
            "epoch_fields": list(EPOCH_FIELDS),
            "rows": [
                {
                    "params": row.params,
                    "history": [
                        [int(h.epoch), *(strict_json(float(getattr(h, f))) for f in EPOCH_FIELDS[1:])]
                        for h in row.history
                    ],
                    "best_epoch": row.best_epoch,
                    "stop_reason": row.stop_reason,
                    "val_metrics": strict_json({k: float(v) for k, v in row.val_metrics.items()}),
                    "test_metrics": strict_json({k: float(v) for k, v in row.test_metrics.items()}),
                    "wall_time": row.wall_time,
                    **({"seed": row.seed} if several else {}),
                }
                for row in self.rows  # in the space's order: the same table gives the same bytes
            ],
        }

    def save(self, path: Path) -> None:
        """Write the table as JSON, gzip'd when the name ends in .gz; atomically (never half-written) and
        byte-reproducibly (no time stamp in the gzip header)."""
        path = Path(path)
        text = json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()
        with atomic_write(path) as fh:
            if path.suffix == ".gz":
                with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                    gz.write(text)
            else:
                fh.write(text)

    @classmethod
    def load(cls, path: Path) -> Table:
        """The table in a file (JSON, or gzip'd JSON): a regular file only, at most `MAX_TABLE_BYTES`."""
        path = Path(path)
        return cls.from_bytes(_read_file(path, MAX_TABLE_BYTES), str(path))

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> Table:
        """A table from a file's bytes (JSON, or gzip'd JSON); `source` names it in error messages. Decompressed in
        pieces, stopping past `MAX_TABLE_BYTES`; refused before parsing past `MAX_TABLE_VALUES` JSON values."""
        try:
            text: bytes | bytearray = _gunzip(raw) if raw[:2] == _GZIP_MAGIC else raw
            if len(text) > MAX_TABLE_BYTES:
                raise Malformed(f"larger than {MAX_TABLE_BYTES // 2**20} MiB")
            # About one per value parsing would make (a comma before each but the first in a list or an object, a
            # bracket for each list and object), counted at memory speed before any object is made.
            values = text.count(b",") + text.count(b"[") + text.count(b"{")
            if values > MAX_TABLE_VALUES:
                raise Malformed(f"more than {MAX_TABLE_VALUES:,} JSON values")
            try:
                data = json.loads(text.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise Malformed(f"not JSON ({reason})") from None
            return cls.from_json(data)
        except (Malformed, UserError) as exc:  # the structure, or a check of the table itself (validate)
            raise UserError(one_line(f"{source}: not a valid hpo-astro table: {exc}")) from None

    @classmethod
    def from_json(cls, data: Any) -> Table:
        """The table in plain JSON data (`to_json`'s format): every field's type and shape is checked here, its value
        by `Table` itself (`validate`), and every configuration of the space must have its row."""
        top = json_object(data, "the file")
        known_keys(top, _TOP_KEYS, "the file")
        if top.get("format") != TABLE_FORMAT:
            raise Malformed(f"'format' must be {TABLE_FORMAT!r}")
        version = top.get("version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise Malformed(f"unsupported version {shown(version)} (this hpo-astro reads 1 and {TABLE_VERSION})")
        if version == 1 and "seeds" in top:
            raise Malformed("'seeds' is a field of version 2")
        fields = top.get("epoch_fields")
        if fields != list(EPOCH_FIELDS):
            raise Malformed(f"'epoch_fields' must be {list(EPOCH_FIELDS)}")
        space = json_object(top.get("space"), "space")
        rows = json_list(top.get("rows"), "rows")
        table = cls(
            name=json_string(top.get("name"), "name"),
            space={
                name: values if isinstance(values, dict) else json_list(values, f"space.{field_name(name)}")
                for name, values in space.items()
            },
            rows=tuple(row_from_json(row, f"rows[{i}]") for i, row in enumerate(rows)),
            data_fingerprint=json_string(top.get("data_fingerprint"), "data_fingerprint"),
            seed=json_int(top.get("seed"), "seed"),
            max_epochs=None if top.get("max_epochs") is None else json_int(top.get("max_epochs"), "max_epochs"),
            info=json_object(top.get("info", {}), "info"),
            seeds=json_int(top.get("seeds", 1), "seeds"),
        )
        if table.missing:
            absent = next(key for key in _keys(table.search_space) if key not in table._index)
            raise Malformed(
                f"table {table.name!r}: {table.missing} of {table.size} configurations of its space have no row "
                f"(the first: {_describe(table.search_space, absent)}); a table holds every configuration"
            )
        return table


# --- checks ------------------------------------------------------------------------------------------------------


def _read_file(path: Path, limit: int) -> bytes:
    """A table file's bytes (see `io.read_regular_file`), refused past `limit`."""
    data = read_regular_file(path, limit, "table", missing=f"table file not found: {path}")
    size = len(data)
    if size > limit:
        raise UserError(f"{path}: not a valid hpo-astro table: larger than {limit // 2**20} MiB")
    return data


def _gunzip(raw: bytes) -> bytearray:
    """gzip'd data (one member or several, as gzip writes them) decompressed a piece at a time, stopping as soon as
    the output passes `MAX_TABLE_BYTES`: a small file that inflates to gigabytes costs at most that."""
    out = bytearray()
    rest = raw
    while rest:
        inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending = rest
        try:
            while not inflate.eof:
                piece = inflate.decompress(pending, _CHUNK)
                if not piece and inflate.unconsumed_tail == pending and not inflate.eof:
                    raise Malformed("corrupt gzip data (truncated)")  # no input left to make progress with
                pending = inflate.unconsumed_tail
                out += piece
                if len(out) > MAX_TABLE_BYTES:
                    raise Malformed(f"larger than {MAX_TABLE_BYTES // 2**20} MiB")
        except zlib.error as exc:
            raise Malformed(f"corrupt gzip data ({exc})") from None
        rest = inflate.unused_data
        if rest[:2] != _GZIP_MAGIC:  # not another member: zero padding may follow (gzip allows it), nothing else
            if rest.strip(b"\x00"):
                raise Malformed("corrupt gzip data (trailing garbage)")
            break
    return out  # not copied into bytes: at the cap, that copy would double what a bomb costs


def _keys(search: SearchSpace) -> list[tuple[int, ...]]:
    """Every configuration's key, in the space's order."""
    return list(itertools.product(*(range(len(values)) for values in search.grid("a table").values())))


def space_key(search: SearchSpace, params: Mapping[str, Any], where: str) -> tuple[int, ...]:
    """The configuration's position in the space: the index of each hyperparameter's value."""
    key = []
    for name in search:
        values = search.values_of(name) or ()  # cached, and finite: `check_space` refused a table's endless range
        if name not in params:
            raise UserError(f"{where}: {name} is not given")
        try:
            value = search.match(name, params[name])
        except (UserError, OverflowError):
            shown_values = ", ".join(str(v) for v in values)
            raise UserError(
                f"{where}: {name}={shown(params[name])} is not in the table's space ({shown_values})"
            ) from None
        key.append(values.index(value))
    return tuple(key)


def _describe(search: SearchSpace, key: tuple[int, ...]) -> str:
    grid = search.grid("a table").items()
    return " ".join(f"{name}={values[i]}" for (name, values), i in zip(grid, key, strict=True))


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)
