"""A run's record: one type, one key, one check, used by both storages (the SQLite store and the results file).

A record is the dict `bench.job.train_job` returns. `RunRecord` is its one builder (`RunRecord.from_row`, the
check below) and its one writer (`to_json`, `line`): its attributes are the fields every record holds
(`RESULT_FIELDS`, the SQLite store's columns, `KEY` first), its `more` what only the results file keeps
(`MACHINE_FIELDS`: the trick options, speed and machine) and any other field a record carries; a field is added
in one place, here. `merge` keeps one record per `KEY`.

`problem(record)` says what is wrong with one (a missing field, a value of the wrong type, an accuracy outside
0..100, a time that is not ISO 8601, a number that is NaN or infinite), or None; a reader skips such a record
and counts it, so one damaged run never stops a report. `loads(text)` is
`json.loads` that refuses what a record can never hold: NaN and Infinity (json.loads takes them by default)
and nesting too deep for Python's recursion. Written by hand: no library checks a dict against these ranges.
"""
from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

MAX_SEED = 2 ** 63 - 1  # what SQLite's INTEGER and a recipe's seed hold
KEY = ("row_id", "recipe", "budget", "seed", "code_version", "dataset_checksum")  # one run: the data too
# A field's kind says what its value must be: "text" (not empty), "seed", "accuracy" (%, 0..100), "accuracies" (a
# list of them), "amount" (a finite number >= 0), "count" (an integer >= 1), "object" (a JSON object), "time"
# (ISO 8601 text); a "?" suffix: None is allowed too. RunRecord's attributes carry theirs (`_field`).


class RecordRefused(ValueError):
    """Text that `loads` does not take as a record's JSON, or a row `RunRecord.from_row` does not take as a
    record (the reason in words)."""


def _refuse_constant(name: str) -> Any:
    raise RecordRefused(f"holds {name}, which is not a number a record can keep")


def loads(text: str | bytes) -> Any:
    """`json.loads`, refusing NaN, Infinity and -Infinity and nesting too deep to decode: a RecordRefused.
    Bytes must be UTF-8 (json.loads would also take UTF-16 and UTF-32)."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text, parse_constant=_refuse_constant)
    except RecursionError:
        raise RecordRefused("is nested too deep to read") from None
    except json.JSONDecodeError as e:
        raise RecordRefused(f"is not JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise RecordRefused("is not UTF-8") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        if isinstance(e, RecordRefused):
            raise
        raise RecordRefused(f"is not JSON a record can hold ({e})") from None


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finished(record: dict) -> datetime:
    """`finished_at` as an aware datetime (a time without zone is taken as UTC)."""
    t = datetime.fromisoformat(record["finished_at"])
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def value_problem(name: str, kind: str, value: Any) -> str | None:
    """What is wrong with one field's value for its kind (see KEY's comment), or None."""
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    shown = reprlib.repr(value)
    if kind == "text":
        return None if isinstance(value, str) and value else f"{name} {shown}, not a non-empty text"
    if kind == "seed":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED
        return None if ok else f"{name} {shown}, not an integer in 0..{MAX_SEED}"
    if kind == "accuracy":
        return None if is_number(value) and 0 <= value <= 100 else f"{name} {shown}, not an accuracy in 0..100"
    if kind == "accuracies":
        ok = isinstance(value, list) and all(is_number(v) and 0 <= v <= 100 for v in value)
        return None if ok else f"{name} {shown}, not a list of accuracies in 0..100"
    if kind == "amount":
        return None if is_number(value) and value >= 0 else f"{name} {shown}, not a finite number >= 0"
    if kind == "count":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else f"{name} {shown}, not an integer >= 1"
    if kind == "object":
        return None if isinstance(value, dict) else f"{name} {shown}, not a JSON object"
    if kind == "time":
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return f"{name} {shown}, not an ISO 8601 time"
        return None
    raise ValueError(f"unknown kind {kind!r} of field {name}")


def problem(record: Any, kinds: dict[str, str] | None = None) -> str | None:
    """What is wrong with `record` against `kinds` (field -> kind; RESULT_FIELDS by default), in words, or None
    when it is sound."""
    kinds = RESULT_FIELDS if kinds is None else kinds
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    missing = [k for k in kinds if k not in record]
    if missing:
        return f"lacks the key(s) {', '.join(missing)}"
    wrong = [p for k, kind in kinds.items() if (p := value_problem(k, kind, record[k])) is not None]
    return "has " + "; ".join(wrong) if wrong else None


def _field(kind: str) -> Any:
    """A RunRecord attribute of this kind (see KEY's comment)."""
    return field(metadata={"kind": kind})


@dataclass(frozen=True)
class RunRecord:
    """One finished run, checked: the fields every record holds, then `more` (MACHINE_FIELDS and any other)."""

    row_id: str = _field("text")
    recipe: str = _field("text")
    budget: str = _field("text")
    seed: int = _field("seed")
    code_version: str = _field("text")
    dataset_checksum: str = _field("text")
    epoch_acc: list[float] = _field("accuracies")
    test_acc: float = _field("accuracy")
    best_test_acc: float = _field("accuracy")
    generation_acc: list[float] | None = _field("accuracies?")  # None: not a refinery run
    wall_seconds: float = _field("amount")
    finished_at: str = _field("time")
    more: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Any, kinds: dict[str, str] | None = None) -> RunRecord:
        """The record of `row` (a results file's line, a store's row with its lists decoded, `train_job`'s dict),
        checked by `problem` against `kinds` (RESULT_FIELDS by default): a RecordRefused saying what is wrong."""
        wrong = problem(row, kinds)
        if wrong:
            raise RecordRefused(wrong)
        return cls(**{k: row[k] for k in RESULT_FIELDS}, more={k: v for k, v in row.items() if k not in RESULT_FIELDS})

    @property
    def key(self) -> tuple:
        """The run's KEY values: one run."""
        return tuple(getattr(self, k) for k in KEY)

    def to_json(self) -> dict[str, Any]:
        """The record as the dict it was built from: every field, `more`'s too."""
        return {**{k: getattr(self, k) for k in RESULT_FIELDS}, **self.more}

    def line(self) -> bytes:
        """The record as a line of the results file: `json.dumps(..., sort_keys=True)` and a newline, UTF-8."""
        return (json.dumps(self.to_json(), sort_keys=True) + "\n").encode("utf-8")


# field -> kind: what every record holds (the SQLite store's columns), from RunRecord's attributes
RESULT_FIELDS: dict[str, str] = {f.name: f.metadata["kind"] for f in fields(RunRecord) if "kind" in f.metadata}
# what only the results file keeps, in RunRecord.more: the trick options, speed and machine
MACHINE_FIELDS = {"options": "object", "train_images_per_second": "amount", "device": "text", "gpu": "text?",
                  "torch": "text", "workers": "count"}
FIELDS = {**RESULT_FIELDS, **MACHINE_FIELDS}  # a line of the results file


def key_of(record: Mapping) -> tuple:
    """A record's KEY values (a dict's, as `RunRecord.key`)."""
    return tuple(record[k] for k in KEY)


def merge(*record_lists: list[dict]) -> list[dict]:
    """One record per KEY from all lists: the one with the latest finished_at (on a tie, the later given).

    Order is stable: each key stays where it first appears.
    """
    kept: dict[tuple, dict] = {}
    for records in record_lists:
        for r in records:
            k = key_of(r)
            if k not in kept or finished(r) >= finished(kept[k]):
                kept[k] = r
    return list(kept.values())
