"""The bench's results store: one SQLite file, `<results_dir>/results.sqlite`, one row per finished run.

Why SQLite: it is in the standard library, several worker processes can write to it at once
(WAL journal, a busy timeout), and a transaction is stored whole or not at all, so a replay killed
at any moment leaves a readable file holding every run it finished. Table `runs` holds the record's
fields `bench.record.RESULT_FIELDS` (`COLUMNS`, their SQLite types by kind; lists as JSON text) with the
UNIQUE key `bench.record.KEY` (row_id, recipe, budget, seed, code_version, dataset_checksum); `add` is
`INSERT OR IGNORE`, so a run is never stored twice, and a run on other data
is another run (a store written before the checksum joined the key is migrated when opened).

Nothing in the file is trusted: opening a store whose `sqlite_master` holds anything its own CREATE
statements do not make (`project_schema`: a view, a trigger, another table or index, other columns)
is a one-line RunFolderError, as such an object can hide or drop runs; `add` builds the record
(`bench.record.RunRecord.from_row`, its check) and reads it back by its key after the commit, failing
loudly when it is not there; `records_checked` skips, with a reason each, the stored runs that fail that
same check.

`code_version()` names the code that produced a run: the package version + a hash of the sources that
decide what a run trains and measures (`SOURCES`: every .py of `tricks/` and `recipes/`, and
`bench/budgets.py`, which turns a row into a recipe under a budget). The replay, store, report and CLI
modules are left out on purpose: they change no number, and editing them must not force a replay of
days of results. The row's recipe (its string and options, as in `bench/ablations.toml`) is part of
the key, so a row whose recipe is edited in the table replays again while the others stay done.
`dataset_checksum(data)` names the data by a hash of its decoded images and labels.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.record import KEY, RESULT_FIELDS, RecordRefused, RunRecord, loads
from tricks.data import ImageData
from tricks.errors import ConfigError, RunFolderError
from tricks.files import disk_full, no_space

DB_NAME = "results.sqlite"
BUSY_TIMEOUT_S = 60.0
SOURCES = ("tricks", "recipes", "bench/budgets.py")  # folders (every .py below) or single files
SOURCE_SUFFIXES = (".py",)

# a field's kind (bench.record) -> its SQLite column type; "accuracies" columns hold lists as JSON text
SQL_TYPES = {"text": "TEXT NOT NULL", "seed": "INTEGER NOT NULL", "accuracy": "REAL NOT NULL",
             "accuracies": "TEXT NOT NULL", "accuracies?": "TEXT", "amount": "REAL NOT NULL", "time": "TEXT NOT NULL"}
COLUMNS: dict[str, str] = {name: SQL_TYPES[kind] for name, kind in RESULT_FIELDS.items()}  # name -> SQLite type
JSON_COLUMNS = tuple(name for name, kind in RESULT_FIELDS.items() if kind.startswith("accuracies"))
TABLE = ("runs (id INTEGER PRIMARY KEY AUTOINCREMENT, " + ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
         + f", UNIQUE ({', '.join(KEY)}))")
SCHEMA = "CREATE TABLE IF NOT EXISTS " + TABLE
LEGACY_KEY = KEY[:-1]  # the key before the data's checksum joined it: such a store is migrated when opened
FIRST_KEY = ("row_id", "budget", "seed", "code_version")  # the first stores' key, before the recipe joined it: too


class Store:
    """Finished runs in `<results_dir>/results.sqlite`; safe to use from several processes at once.

    Each call opens its own connection, so a Store may be created before a fork or sent to a worker.
    """

    def __init__(self, results_dir: Path):
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / DB_NAME
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot create results folder '{self.results_dir}' ({e.strerror}); "
                                 "give a folder you can write to") from None
        with closing(self._connect()) as con:
            self._run(con, lambda: self._refuse_foreign(con))
            self._run(con, lambda: con.execute(SCHEMA))
            self._run(con, lambda: self._migrate(con))

    def _refuse_foreign(self, con: sqlite3.Connection) -> None:
        """A RunFolderError naming what the file holds beyond the store's own schema (`project_schema`): a view,
        a trigger, another table or index, a table runs of other columns or keys. Each could hide or drop runs."""
        rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        other_runs = " (not the bench's columns and key)"
        foreign = [f"{kind} {name}" + (other_runs if (kind, name) == ("table", "runs") else "")
                   for kind, name, table, sql in rows
                   if _schema_row(kind, name, table, sql) not in project_schema()
                   and not name.startswith("sqlite_stat")]  # ANALYZE's statistics: SQLite's own, harmless
        if foreign:
            raise RunFolderError(f"results database '{self.path}' is not the bench's store: it holds "
                                 f"{', '.join(foreign)} beyond the bench's table runs; move it aside or give another "
                                 "--results folder")

    def _migrate(self, con: sqlite3.Connection) -> None:
        """A store written before the data's checksum was part of a run's key gets the new key, rows kept."""
        (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()
        if f"UNIQUE ({', '.join(KEY)})" in sql:
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("CREATE TABLE runs_keyed " + TABLE[len("runs "):])
            con.execute(f"INSERT INTO runs_keyed (id, {', '.join(COLUMNS)}) SELECT id, {', '.join(COLUMNS)} FROM runs")
            con.execute("DROP TABLE runs")
            con.execute("ALTER TABLE runs_keyed RENAME TO runs")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            if disk_is_full(e, self.results_dir):
                raise disk_full(self.path) from None
            raise RunFolderError(f"results database '{self.path}' cannot be opened ({e}); "
                                 "move it aside or give another results folder") from None
        return con

    def _run(self, con: sqlite3.Connection, fn):
        try:
            return fn()
        except sqlite3.DatabaseError as e:
            if disk_is_full(e, self.results_dir):  # the transaction was rolled back: the stored runs are as they were
                raise disk_full(self.path) from None
            raise RunFolderError(f"results database '{self.path}' cannot be used ({e}); "
                                 "move it aside and replay again") from None

    def done(self, row_id: str, recipe: str, budget: str, seed: int, code_version: str,
             dataset_checksum: str | None = None) -> bool:
        """Whether this run (row with this recipe, budget, seed) of this code is stored, trained on the data
        `dataset_checksum` names (None: on any data)."""
        key = KEY if dataset_checksum is not None else LEGACY_KEY
        sql = "SELECT 1 FROM runs WHERE " + " AND ".join(f"{k} = ?" for k in key)
        args = (row_id, recipe, budget, int(seed), code_version, dataset_checksum)[:len(key)]
        with closing(self._connect()) as con:
            cur = self._run(con, lambda: con.execute(sql, args))
            return cur.fetchone() is not None

    def add(self, record: dict[str, Any]) -> None:
        """Store one finished run in one transaction; a run already stored (same key) is left as it is."""
        missing = [k for k in COLUMNS if k not in record and k != "generation_acc"]
        unknown = [k for k in record if k not in COLUMNS]
        if missing or unknown:
            raise ConfigError(f"a results record needs exactly the keys {', '.join(COLUMNS)}; "
                              f"missing: {', '.join(missing) or 'none'}, unknown: {', '.join(unknown) or 'none'}")
        try:
            run = RunRecord.from_row({**record, "generation_acc": record.get("generation_acc")})
        except RecordRefused as e:
            raise ConfigError(f"a results record {e}; see bench.record.RunRecord for what each field holds") from None
        values = [json.dumps([float(x) for x in v]) if k in JSON_COLUMNS and v is not None else v
                  for k, v in run.to_json().items()]
        sql = f"INSERT OR IGNORE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        with closing(self._connect()) as con:
            def insert():
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.execute(sql, values)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            self._run(con, insert)
        if not self.done(*run.key):  # read back: what was written must be there
            raise RunFolderError(f"results database '{self.path}' does not hold the run {record['row_id']} seed "
                                 f"{record['seed']} just written (something in the database removed it); move it "
                                 "aside and replay again")

    def records(self, budget: str | None = None) -> list[dict[str, Any]]:
        """Every sound stored run (of `budget`, when given), oldest first (`records_checked` without the skipped)."""
        return self.records_checked(budget)[0]

    def records_checked(self, budget: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """(every stored run of `budget` (None: of any) that `bench.record.RunRecord.from_row` builds, oldest
        first, lists decoded from JSON; one reason per run skipped: 'id N: ...'). Text that is not UTF-8 is read
        as bytes, which the check refuses, instead of failing the whole query."""
        sql = f"SELECT id, {', '.join(COLUMNS)} FROM runs"
        args: tuple = ()
        if budget is not None:
            sql, args = sql + " WHERE budget = ?", (budget,)
        with closing(self._connect()) as con:
            con.text_factory = _text
            rows = self._run(con, lambda: con.execute(sql + " ORDER BY id", args).fetchall())
        out, skipped = [], []
        for rowid, *values in rows:
            rec = dict(zip(COLUMNS, values))
            try:
                for k in JSON_COLUMNS:
                    if isinstance(rec[k], (str, bytes)):
                        rec[k] = loads(rec[k])
            except RecordRefused as e:
                skipped.append(f"id {rowid}: {k} {e}")
                continue
            try:
                out.append(RunRecord.from_row(rec).to_json())
            except RecordRefused as e:
                skipped.append(f"id {rowid}: the record {e}")
        return out, skipped


def _text(raw: bytes) -> str | bytes:
    """SQLite text as str, or as the bytes themselves when they are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


LOW_SPACE = 2**20  # bytes


def disk_is_full(e: sqlite3.Error, folder: Path) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL), also where a failed ROLLBACK replaced it (its context);
    or its "disk I/O error" (SQLITE_IOERR) on a filesystem with under LOW_SPACE bytes free: a failed write of the
    WAL index (-shm) is reported so, without the system's errno."""
    seen, error = set(), e
    while error is not None and id(error) not in seen:
        code = getattr(error, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            return True
        if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
            try:
                return shutil.disk_usage(folder).free < LOW_SPACE
            except OSError:
                return False
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return no_space(e)


def _schema_row(kind: str, name: str, table: str, sql: str | None) -> tuple:
    """A sqlite_master row as compared: a table renamed by the migration (`CREATE TABLE "runs"`) as created."""
    return kind, name, table, sql.replace('CREATE TABLE "runs"', "CREATE TABLE runs", 1) if sql else sql


@functools.cache
def project_schema() -> frozenset[tuple]:
    """The sqlite_master rows (`_schema_row`) the store's own CREATE statements make, of the current key and of
    the keys before the data's checksum and the recipe joined it (`LEGACY_KEY`, `FIRST_KEY`, migrated on open):
    made in a database in memory."""
    rows = set()
    for key in (KEY, LEGACY_KEY, FIRST_KEY):
        with closing(sqlite3.connect(":memory:")) as con:
            con.execute(SCHEMA.replace(f"UNIQUE ({', '.join(KEY)})", f"UNIQUE ({', '.join(key)})"))
            rows |= {_schema_row(*row) for row in con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")}
    return frozenset(rows)


def source_hash(root: Path | None = None, sources: tuple[str, ...] = SOURCES) -> str:
    """sha256 (first 12 hex) over the sorted relative paths and bytes of the sources' .py files."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    files = sorted(p for src in sources for p in ([root / src] if (root / src).is_file() else (root / src).rglob("*"))
                   if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix().encode()
        data = p.read_bytes()
        h.update(len(rel).to_bytes(8, "big") + rel + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:12]


def code_version(root: Path | None = None) -> str:
    """`<package version>+<source hash>`, e.g. `0.1.0+3fa9c2d1e0b4` (see `short_version`)."""
    try:
        version = metadata.version("fastai-tricks")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"{version}+{source_hash(root)}"


def short_version(version: str) -> str:
    """The first 8 hex of a code version's source hash: what run folder names carry."""
    return version.rsplit("+", 1)[-1][:8]


def dataset_checksum(data: ImageData) -> str:
    """A sha256 of the decoded data: the dataset's name and classes, then every image and label of the train
    and the test split (`tensors-` + 24 hex). The same images give the same checksum on any machine, wherever
    the files lie and whatever their times, so results from a GPU machine and a clean clone compare."""
    h = hashlib.sha256(json.dumps([data.name, list(data.classes)]).encode())
    for split in (data.train, data.test):
        h.update(split.images.contiguous().numpy().tobytes())
        h.update(split.labels.contiguous().numpy().tobytes())
    return "tensors-" + h.hexdigest()[:24]
