"""The GPU slice log: `bench/results/slices.jsonl`, one JSON object a line, one line per call of
`bench/gpu_session.sh` (issue 19 section 3: what each GPU minute bought).

A line (`FIELDS`): `date` (ISO 8601, when the call ended), `gpu` (the device's name; null on a CPU dry run),
`budget`, `seconds_given`, `stages` ({stage: {"seconds", "runs", "images_per_second"}}), `runs_finished` and
`images_per_second` (the slice's aggregate). `slice_entry` builds one from the stages' start and end times and the
records finished within them (the results store and file, `bench.record`):

- a stage's runs: the records whose `finished_at` lies in its window (the first stage that holds it);
- a stage's aggregate img/s: the mean `train_images_per_second` of its runs that carry one (the results file's
  records do; the SQLite store keeps no speed) times how many trained at once (the most `workers` among them, at
  most its runs): the sum over runs that trained concurrently. None when no run carries a speed;
- the slice's aggregate img/s: the stages' aggregates weighted by their seconds;
- `runs_per_slice`: how many full-budget runs a slice of `SLICE_SECONDS` finishes at that aggregate speed, its
  stages that finished no run (setup, speed measurements) taking the same seconds as in this call.

`append` writes a line as `bench.results_file` writes a record (under a lock, fsync'd); `read_checked` gives the
sound lines back and skips, each with a reason naming its line, one that is not JSON or fails `problem`: a damaged
line is counted, never a crash. Written by hand: no library checks these fields.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.record import RecordRefused, finished, is_number, value_problem
from bench.results_file import _append_line, read_json_lines  # the results file's locked append and reader
from tricks.errors import ConfigError
from tricks.files import disk_full, fsync_dir, no_space

DEFAULT_PATH = Path(__file__).parent / "results" / "slices.jsonl"
SLICE_SECONDS = 900.0  # a slice of GPU time: 15 minutes
FIELDS = {"date": "time", "gpu": "text?", "budget": "text", "seconds_given": "amount", "stages": "object",
          "runs_finished": "runs", "images_per_second": "amount?"}  # kinds of bench.record, and "runs": an int >= 0
STAGE_FIELDS = {"seconds": "amount", "runs": "runs", "images_per_second": "amount?"}


def _kind_problem(name: str, kind: str, value: Any) -> str | None:
    if kind == "runs":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else f"{name} {value!r:.40}, not an integer >= 0"
    return value_problem(name, kind, value)


def problem(entry: Any) -> str | None:
    """What is wrong with a slice line's object, in words, or None when it is sound."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    missing = [k for k in FIELDS if k not in entry]
    if missing:
        return f"lacks the key(s) {', '.join(missing)}"
    wrong = [p for k, kind in FIELDS.items() if (p := _kind_problem(k, kind, entry[k])) is not None]
    for stage, fields in entry["stages"].items() if isinstance(entry["stages"], dict) else ():
        if not isinstance(fields, dict) or any(k not in fields for k in STAGE_FIELDS):
            wrong.append(f"stage {stage!r:.40} without {', '.join(STAGE_FIELDS)}")
            continue
        wrong += [p for k, kind in STAGE_FIELDS.items() if (p := _kind_problem(f"stage {stage} {k}", kind, fields[k]))]
    return "has " + "; ".join(wrong) if wrong else None


def append(path: str | os.PathLike, entry: dict) -> None:
    """Append `entry` as one line (`json.dumps(..., sort_keys=True)`) to `path` (created with its folder); an entry
    that fails `problem` is a ConfigError saying why."""
    wrong = problem(entry)
    if wrong:
        raise ConfigError(f"a slice log line {wrong}; every line needs {', '.join(FIELDS)}")
    path = Path(path)
    try:
        created = _append_line(path, (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
    except OSError as e:
        if no_space(e):
            raise disk_full(path) from None
        raise
    if created:
        fsync_dir(path.parent)


def _slice(entry: Any) -> dict:
    wrong = problem(entry)
    if wrong:
        raise RecordRefused(f"the slice {wrong}")
    return entry


def read_checked(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(the sound lines of `path` in file order, one reason per line skipped: 'line N: ...'); a missing file gives
    ([], []). A file that cannot be read is a ConfigError."""
    return read_json_lines(path, "slice log", _slice)


def parse_stage(text: str) -> tuple[str, float, float]:
    """'NAME=START:END' (Unix seconds, as `date +%s` prints them) -> (name, start, end); a ConfigError otherwise."""
    name, _, window = text.partition("=")
    start, _, end = window.partition(":")
    try:
        t0, t1 = float(start), float(end)
    except ValueError:
        t0 = t1 = math.nan
    if not name or not (math.isfinite(t0) and math.isfinite(t1) and t0 <= t1):
        raise ConfigError(f"--stage {text!r}: give NAME=START:END, two Unix times in seconds with START <= END "
                          "(e.g. replay=1764921600:1764922140)")
    return name, t0, t1


def stage_figures(records: list[dict], seconds: float) -> dict[str, Any]:
    """A stage's {"seconds", "runs", "images_per_second"} from the records finished in it (module docstring)."""
    speeds = [r["train_images_per_second"] for r in records if is_number(r.get("train_images_per_second"))
              and r["train_images_per_second"] > 0]
    at_once = min(max((int(r.get("workers") or 1) for r in records), default=1), len(records))
    ips = sum(speeds) / len(speeds) * at_once if speeds else None
    return {"seconds": seconds, "runs": len(records), "images_per_second": ips}


def slice_entry(stages: list[tuple[str, float, float]], records: list[dict], *, gpu: str | None, budget: str,
                seconds_given: float, now: datetime | None = None) -> dict[str, Any]:
    """The log line of a call whose stages ran in the windows `stages` ((name, start, end) in Unix seconds), from
    the `budget` records (any place) finished in them."""
    mine = [r for r in records if r["budget"] == budget]
    figures = {}
    for i, (name, t0, t1) in enumerate(stages):
        earlier = stages[:i]
        inside = [r for r in mine if t0 <= finished(r).timestamp() <= t1
                  and not any(a <= finished(r).timestamp() <= b for _, a, b in earlier)]
        key, n = name, 2
        while key in figures:  # a stage run twice (e.g. a measurement again under MPS): name#2, name#3, ...
            key, n = f"{name}#{n}", n + 1
        figures[key] = stage_figures(inside, t1 - t0)
    timed = [f for f in figures.values() if f["images_per_second"] is not None and f["seconds"] > 0]
    weight = sum(f["seconds"] for f in timed)
    return {"date": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"), "gpu": gpu, "budget": budget,
            "seconds_given": float(seconds_given), "stages": figures,
            "runs_finished": sum(f["runs"] for f in figures.values()),
            "images_per_second": sum(f["images_per_second"] * f["seconds"] for f in timed) / weight if weight else None}


def runs_per_slice(entry: dict, run_images: int, slice_seconds: float = SLICE_SECONDS) -> int | None:
    """Full-budget runs of `run_images` training images each that a slice of `slice_seconds` finishes at `entry`'s
    aggregate img/s, its stages that finished no run taking their seconds first; None without a speed."""
    if entry["images_per_second"] is None:
        return None
    overhead = sum(f["seconds"] for f in entry["stages"].values() if f["runs"] == 0)
    return math.floor(max(slice_seconds - overhead, 0.0) * entry["images_per_second"] / run_images)


def latest_slice(entries: list[dict], budget: str = "full") -> dict | None:
    """The `budget` line that ended last (on a tie, the later one), or None."""
    of_budget = [e for e in entries if e["budget"] == budget]
    return max(reversed(of_budget), key=lambda e: finished({"finished_at": e["date"]})) if of_budget else None
