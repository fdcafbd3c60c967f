"""One check of a run's record, used wherever a record is read back: from the SQLite store and the results file.

A record is the dict `bench.job.train_job` returns; the store keeps the fields of `FIELDS` (its columns), the
results file every field. `problem(record)` says what is wrong with one (a missing field, a value of the wrong
type, an accuracy outside 0..100, a time that is not ISO 8601, a number that is NaN or infinite), or None; a
reader skips such a record and counts it, so one damaged run never stops a report. `loads(text)` is
`json.loads` that refuses what a record can never hold: NaN and Infinity (json.loads takes them by default)
and nesting too deep for Python's recursion. Written by hand: no library checks a dict against these ranges.
"""
from __future__ import annotations

import json
import math
import reprlib
from datetime import datetime, timezone
from typing import Any

MAX_SEED = 2 ** 63 - 1  # what SQLite's INTEGER and a recipe's seed hold
# field -> what it must be: "text" (not empty), "seed", "accuracy" (%, 0..100), "accuracies" (a list of them),
# "amount" (a finite number >= 0), "count" (an integer >= 1), "object" (a JSON object), "time" (ISO 8601 text);
# a "?" suffix: None is allowed too
FIELDS = {"row_id": "text", "recipe": "text", "budget": "text", "seed": "seed", "code_version": "text",
          "dataset_checksum": "text", "epoch_acc": "accuracies", "test_acc": "accuracy", "best_test_acc": "accuracy",
          "generation_acc": "accuracies?", "wall_seconds": "amount", "finished_at": "time"}


class RecordRefused(ValueError):
    """Text that `loads` does not take as a record's JSON (the reason in words)."""


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
    """What is wrong with one field's value for its kind (see FIELDS), or None."""
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


def problem(record: Any, fields: dict[str, str] = FIELDS) -> str | None:
    """What is wrong with `record` against `fields` (FIELDS by default), in words, or None when it is sound."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    missing = [k for k in fields if k not in record]
    if missing:
        return f"lacks the key(s) {', '.join(missing)}"
    wrong = [p for k, kind in fields.items() if (p := value_problem(k, kind, record[k])) is not None]
    return "has " + "; ".join(wrong) if wrong else None
