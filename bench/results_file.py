"""Full-budget results kept in the repository as text: `bench/results/full.jsonl`, one JSON object a line.

A 200-epoch run takes hours on a GPU, so its record is kept where a clean clone has it: each finished
run is one line, `json.dumps(record, sort_keys=True)`, appended under an exclusive `fcntl.flock` of
the file, flushed and fsync'd, so several processes can append at once and a diff shows one line per
run. `read_checked` gives the sound records back and skips, each with a reason naming its line, a line
that is not JSON (a writer killed mid-line leaves such a last line; NaN, Infinity and nesting too deep
are refused) or not a record `bench.record.RunRecord.from_row` builds with every field of `FIELDS`: a damaged
line is counted by the report, never a crash, and the other runs stay readable. A line is `RunRecord.line`, so
a record read and written again gives the same bytes.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, Callable

from bench.record import FIELDS, RecordRefused, RunRecord, loads
from tricks.errors import ConfigError, RunFolderError
from tricks.files import disk_full, fsync_dir, no_space

DEFAULT_PATH = Path(__file__).parent / "results" / "full.jsonl"
REQUIRED = tuple(FIELDS)  # every line holds them (bench.record.FIELDS)


def append(path: str | os.PathLike, record: dict) -> None:
    """Append `record` as one line to `path` (created with its folder), under an exclusive lock, fsync'd.

    A record that `RunRecord.from_row` refuses (against FIELDS) is a ValueError saying why. A last line left
    without its newline (a writer killed mid-line) gets one first, so the new record stays a line of its own.
    The file is read back after: a line that is not there (a file that does not keep what is written) is a
    RunFolderError.
    """
    try:
        line = RunRecord.from_row(record, FIELDS).line()
    except RecordRefused as e:
        raise ValueError(f"a results record {e}; every record needs {', '.join(REQUIRED)} (see FIELDS)") from None
    path = Path(path)
    try:
        created = _append_line(path, line)
    except OSError as e:
        if no_space(e):  # the part of the line that was written is cut off again: the file is as it was
            raise disk_full(path) from None
        raise
    if created:  # the new directory entry survives a power loss too
        fsync_dir(path.parent)
    if line.strip(b"\n") not in path.read_bytes().split(b"\n"):  # read back: what was written must be there
        raise RunFolderError(f"results file {path} does not hold the run {record['row_id']} seed {record['seed']} "
                             "just appended; give a regular file that keeps what is written")


def _append_line(path: Path, line: bytes) -> bool:
    """Append `line` under an exclusive lock, fsync'd; on an error (a full disk) the file is cut back to its
    size before. Returns whether the file was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with open(path, "a+b", buffering=0) as f:  # unbuffered: nothing is left to write when the file is closed
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            try:
                rest = memoryview(line)
                while rest:  # a write on a nearly full disk can write a part
                    rest = rest[f.write(rest):]
                os.fsync(f.fileno())
            except OSError:
                os.ftruncate(f.fileno(), size)
                raise
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return created


def read_json_lines(path: str | os.PathLike, what: str, take: Callable[[Any], Any]) -> tuple[list, list[str]]:
    """(`take(entry)` of each sound line of the JSON-lines file `path`, in file order; one reason per line skipped:
    'line N: ...'), a line skipped when it is not a record's JSON (`bench.record.loads`) or `take` raises
    RecordRefused. A missing file gives ([], []); blank lines are passed over. A file that cannot be read is a
    ConfigError naming it as `what` (e.g. 'results file'). Shared by this file and the slice log (`bench.slices`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read ({e.strerror}); give a readable file") from None
    lines = data.split(b"\n")
    out, skipped = [], []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        cut = " (the last line has no newline: a writer stopped mid-line?)" if number == len(lines) else ""
        try:
            entry = loads(raw)
        except RecordRefused as e:
            skipped.append(f"line {number}: {e}{cut}")
            continue
        try:
            out.append(take(entry))
        except RecordRefused as e:
            skipped.append(f"line {number}: {e}")
    return out, skipped


def _record(row: Any) -> dict:
    try:
        return RunRecord.from_row(row, FIELDS).to_json()
    except RecordRefused as e:
        raise RecordRefused(f"the record {e}") from None


def read_checked(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(the sound records of `path` in file order, one reason per line skipped: 'line N: ...').

    A missing file gives ([], []); blank lines are passed over. A file that cannot be read is a ConfigError.
    """
    return read_json_lines(path, "results file", _record)


def read(path: str | os.PathLike) -> list[dict]:
    """The sound records of `path` in file order (`read_checked` without the lines it skipped)."""
    return read_checked(path)[0]

