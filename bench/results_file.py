"""Full-budget results kept in the repository as text: `bench/results/full.jsonl`, one JSON object a line.

A 200-epoch run takes hours on a GPU, so its record is kept where a clean clone has it: each finished
run is one line, `json.dumps(record, sort_keys=True)`, appended under an exclusive `fcntl.flock` of
the file, flushed and fsync'd, so several processes can append at once and a diff shows one line per
run. `read` gives the records back and refuses, with one line naming the file and the line number,
a line that is not a JSON object with every `REQUIRED` key (a writer killed mid-line leaves such a
last line). `merge` keeps one record per `KEY`: the one with the latest `finished_at`.
"""
from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tricks.errors import ConfigError
from tricks.files import disk_full, no_space

DEFAULT_PATH = Path(__file__).parent / "results" / "full.jsonl"
REQUIRED = ("row_id", "recipe", "options", "budget", "seed", "code_version", "dataset_checksum", "epoch_acc",
            "test_acc", "best_test_acc", "generation_acc", "wall_seconds", "train_images_per_second",
            "finished_at", "device", "gpu", "torch", "workers")
KEY = ("row_id", "recipe", "budget", "seed", "code_version", "dataset_checksum")  # one run
TYPES = {"row_id": str, "recipe": str, "options": dict, "budget": str, "seed": int, "code_version": str,
         "dataset_checksum": str, "epoch_acc": list, "test_acc": (int, float), "best_test_acc": (int, float),
         "finished_at": str}  # what the report computes with


def problem(record: Any) -> str | None:
    """What is wrong with `record` (not an object, a REQUIRED key missing, a value of a TYPES key of another
    type, an unreadable finished_at), or None."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return f"lacks the key(s) {', '.join(missing)}"
    wrong = [k for k, t in TYPES.items() if not isinstance(record[k], t) or isinstance(record[k], bool)]
    if wrong:
        return f"has a value of the wrong type for {', '.join(wrong)}"
    try:
        finished(record)
    except (TypeError, ValueError):
        return f"has finished_at {record['finished_at']!r}, not an ISO 8601 time"
    return None


def finished(record: dict) -> datetime:
    """`finished_at` as an aware datetime (a time without zone is taken as UTC)."""
    t = datetime.fromisoformat(record["finished_at"])
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def append(path: str | os.PathLike, record: dict) -> None:
    """Append `record` as one line to `path` (created with its folder), under an exclusive lock, fsync'd.

    A missing REQUIRED key is a ValueError naming it. A last line left without its newline (a writer
    killed mid-line) gets one first, so the new record stays a line of its own.
    """
    wrong = problem(record)
    if wrong:
        raise ValueError(f"a results record {wrong}; every record needs {', '.join(REQUIRED)}")
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    path = Path(path)
    try:
        created = _append_line(path, line)
    except OSError as e:
        if no_space(e):  # the part of the line that was written is cut off again: the file is as it was
            raise disk_full(path) from None
        raise
    if created:  # the new directory entry survives a power loss too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def read(path: str | os.PathLike) -> list[dict]:
    """The records of `path` in file order; a missing file gives []; blank lines are skipped.

    A line that is not a JSON object with every REQUIRED key is a ConfigError naming the file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"results file {path} cannot be read ({e.strerror})") from None
    lines = data.split(b"\n")
    out = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        cut = " (the last line has no newline: a writer stopped mid-line?)" if number == len(lines) else ""
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise ConfigError(f"results file {path}, line {number}: not JSON ({reason}){cut}; "
                              "fix or remove that line") from None
        wrong = problem(record)
        if wrong:
            raise ConfigError(f"results file {path}, line {number}: the record {wrong}; fix or remove that line")
        out.append(record)
    return out


def merge(*record_lists: list[dict]) -> list[dict]:
    """One record per KEY from all lists: the one with the latest finished_at (on a tie, the later given).

    Order is stable: each key stays where it first appears.
    """
    kept: dict[tuple, dict] = {}
    for records in record_lists:
        for r in records:
            k = tuple(r[name] for name in KEY)
            if k not in kept or finished(r) >= finished(kept[k]):
                kept[k] = r
    return list(kept.values())
