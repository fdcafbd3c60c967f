"""The ablation table: every row of the notes as a recipe (`bench/ablations.toml`), checked. The recipe
of a row under a budget is `bench.budgets`.

`load_table()` reads the TOML into `Row`s and `Conclusion`s and refuses, with one line naming the table's
file and line and the row, anything the bench could not replay or report: duplicate ids, unknown
baseline or row references, a bad status or kind, a measured row without numbers, a recipe that does not
parse (an unknown recipe term among them). A table of your own (`bench ... --table PATH`) is read the same way.
"""
from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.generations import refine_params
from recipes.parse import parse_recipe
from recipes.recipe import PARAMS
from tricks.errors import ConfigError

TABLE = Path(__file__).with_name("ablations.toml")
STATUSES = ("measured", "unmeasured", "inexpressible")
KINDS = ("single", "runs", "generations")
EXPECTS = ("better", "worse", "same")
SECTION = re.compile(r"^S[1-9][0-9]*$")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")

ROW_KEYS = ("id", "section", "recipe", "options", "noted", "kind", "status", "why", "baseline")
CONCLUSION_KEYS = ("id", "section", "text", "row", "versus", "expect")


@dataclass(frozen=True)
class Row:
    id: str  # section + slug, e.g. "S9.mixup.a0.3"
    section: str  # "S9"
    recipe: str  # recipe string, e.g. "baseline+mixup:alpha=0.3"
    options: dict  # extra Recipe field values, e.g. {"epochs": 400}
    noted: tuple[float, ...]  # the noted accuracies (several runs, or one per refinery generation)
    kind: str  # "single" | "runs" | "generations"
    status: str  # "measured" | "unmeasured" (the notes' [no result]) | "inexpressible"
    why: str  # for inexpressible: why; for odd replays: what was odd
    baseline: str | None  # id of the row this one is compared with (its section's baseline)

    @property
    def stored_recipe(self) -> str:
        """The recipe as the results store keys it: the string, then the options as sorted JSON, if any."""
        return f"{self.recipe} {json.dumps(self.options, sort_keys=True)}" if self.options else self.recipe


@dataclass(frozen=True)
class Conclusion:
    id: str
    section: str
    text: str  # the notes' words, e.g. "mixup helps"
    row: str
    versus: str  # the row ids compared: `row` is `expect` than `versus`
    expect: str  # "better" | "worse" | "same"


def load_table(path: Path | None = None) -> tuple[list[Row], list[Conclusion]]:
    """The rows and conclusions of `path` (default bench/ablations.toml), validated (ConfigError)."""
    path = Path(path) if path is not None else TABLE
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"ablation table {path} does not exist; give the path of an ablations.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"ablation table {path} is not valid TOML: {e}") from None
    extra = set(doc) - {"row", "conclusion"}
    if extra:
        raise ConfigError(f"ablation table {path}: unknown table(s) {', '.join(sorted(extra))}; "
                          "only [[row]] and [[conclusion]]")
    for key in ("row", "conclusion"):
        if not isinstance(doc.get(key, []), list):
            raise ConfigError(f"ablation table {path}: '{key}' must be an array of tables, [[{key}]]")
    text = path.read_text(encoding="utf-8")
    row_at = lambda i: _located(path, _header_lines(text, "row"), i)
    conclusion_at = lambda i: _located(path, _header_lines(text, "conclusion"), i)
    rows = [_at(row_at(i), _row, entry, i) for i, entry in enumerate(doc.get("row", []))]
    conclusions = [_at(conclusion_at(i), _conclusion, entry, i) for i, entry in enumerate(doc.get("conclusion", []))]
    ids: dict[str, Row] = {}
    for i, row in enumerate(rows):
        _at(row_at(i), _check_one_row, row, ids)
    for i, row in enumerate(rows):
        if row.baseline is not None and row.baseline not in ids:
            raise ConfigError(f"{row_at(i)}row '{row.id}': baseline '{row.baseline}' is not a row id")
    seen: set[str] = set()
    for i, c in enumerate(conclusions):
        _at(conclusion_at(i), _check_conclusion, c, ids, seen)
    return rows, conclusions


def _header_lines(text: str, key: str) -> list[int]:
    """The line numbers (from 1) of the `[[key]]` headers of a TOML text, in order."""
    header = re.compile(rf"^\s*\[\[\s*{key}\s*\]\]\s*(#.*)?$")
    return [n for n, line in enumerate(text.splitlines(), 1) if header.match(line)]


def _located(path: Path, lines: list[int], i: int) -> str:
    """'PATH, line N: ' for the i-th entry, or 'PATH: ' when its header line is not found."""
    return f"{path}, line {lines[i]}: " if i < len(lines) else f"{path}: "


def _at(where: str, check, *args):
    """`check(*args)`, its ConfigError prefixed with `where` (the table's file and line)."""
    try:
        return check(*args)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def _entry(entry: Any, i: int, what: str, keys: tuple[str, ...], required: tuple[str, ...]) -> str:
    """How errors name the entry ("row 'S9.x'"), after checking its keys and that its values are strings."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{what} #{i + 1} must be a table")
    label = f"{what} '{entry['id']}'" if isinstance(entry.get("id"), str) else f"{what} #{i + 1}"
    unknown = set(entry) - set(keys)
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(keys)}")
    for key in required:
        if key not in entry:
            raise ConfigError(f"{label}: missing '{key}'")
    for key, value in entry.items():
        if key not in ("options", "noted") and not isinstance(value, str):
            raise ConfigError(f"{label}: '{key}' must be a string")
    return label


def _row(entry: Any, i: int) -> Row:
    label = _entry(entry, i, "row", ROW_KEYS, ("id", "section", "recipe", "status"))
    noted = entry.get("noted", [])
    if not isinstance(noted, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in noted):
        raise ConfigError(f"{label}: 'noted' must be a list of numbers")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{label}: 'options' must be a table of Recipe field values")
    bad = [k for k in options if k not in PARAMS]
    if bad:
        raise ConfigError(f"{label}: unknown option(s) {', '.join(bad)}; options are Recipe fields: "
                          f"{', '.join(PARAMS)}")
    return Row(id=entry["id"], section=entry["section"], recipe=entry["recipe"], options=dict(options),
               noted=tuple(float(x) for x in noted), kind=entry.get("kind", "single"), status=entry["status"],
               why=entry.get("why", ""), baseline=entry.get("baseline"))


def _conclusion(entry: Any, i: int) -> Conclusion:
    _entry(entry, i, "conclusion", CONCLUSION_KEYS, CONCLUSION_KEYS)
    return Conclusion(**{k: entry[k] for k in CONCLUSION_KEYS})


def _check_one_row(row: Row, ids: dict[str, Row]) -> None:
    _check_row(row)
    if row.id in ids:
        raise ConfigError(f"row '{row.id}' is defined twice; row ids must be unique")
    ids[row.id] = row


def _check_conclusion(c: Conclusion, ids: dict[str, Row], seen: set[str]) -> None:
    if c.id in seen:
        raise ConfigError(f"conclusion '{c.id}' is defined twice; conclusion ids must be unique")
    seen.add(c.id)
    if not SECTION.match(c.section):
        raise ConfigError(f"conclusion '{c.id}': section '{c.section}' must look like S1, S12")
    if c.expect not in EXPECTS:
        raise ConfigError(f"conclusion '{c.id}': expect '{c.expect}' must be one of {', '.join(EXPECTS)}")
    if not c.text.strip():
        raise ConfigError(f"conclusion '{c.id}': 'text' must give the notes' words")
    for ref in (c.row, c.versus):
        if ref not in ids:
            raise ConfigError(f"conclusion '{c.id}': '{ref}' is not a row id")
        if ids[ref].status == "inexpressible":
            raise ConfigError(f"conclusion '{c.id}': row '{ref}' is inexpressible, so it cannot be compared")
    if c.row == c.versus:
        raise ConfigError(f"conclusion '{c.id}' compares row '{c.row}' with itself; name two rows")


def _check_row(row: Row) -> None:
    where = f"row '{row.id}'"
    if not SECTION.match(row.section):
        raise ConfigError(f"{where}: section '{row.section}' must look like S1, S12")
    if not (row.id.startswith(row.section + ".") and SLUG.match(row.id[len(row.section) + 1:])):
        raise ConfigError(f"{where}: the id must be its section, a dot and a slug of letters, digits, '.', '-' "
                          f"or '_', e.g. {row.section}.mixup.a0.3")
    if row.status not in STATUSES:
        raise ConfigError(f"{where}: status '{row.status}' must be one of {', '.join(STATUSES)}")
    if row.kind not in KINDS:
        raise ConfigError(f"{where}: kind '{row.kind}' must be one of {', '.join(KINDS)}")
    if row.status == "measured" and not row.noted:
        raise ConfigError(f"{where} is measured but has no noted numbers; give noted = [...] or status 'unmeasured'")
    if row.status == "unmeasured" and row.noted:
        raise ConfigError(f"{where} is unmeasured but has noted numbers; make it measured or drop them")
    if row.status == "inexpressible" and not row.why.strip():
        raise ConfigError(f"{where} is inexpressible; say in 'why' what the project is missing")
    if row.noted and row.kind == "single" and len(row.noted) != 1:
        raise ConfigError(f"{where}: kind 'single' takes one noted number, got {len(row.noted)}; use 'runs' "
                          "or 'generations'")
    if row.noted and row.kind != "single" and len(row.noted) < 2:
        raise ConfigError(f"{where}: kind '{row.kind}' needs at least two noted numbers; use 'single'")
    if not row.recipe.strip():
        if row.status != "inexpressible":
            raise ConfigError(f"{where} has an empty recipe; only an inexpressible row may")
        return
    try:
        recipe = parse_recipe(row.recipe, **row.options)
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: recipe '{row.recipe}' does not parse: {e}") from None
    refine = refine_params(recipe)
    if (refine is not None) != (row.kind == "generations"):
        raise ConfigError(f"{where}: kind 'generations' goes with a refine term and only with one "
                          f"(kind is '{row.kind}', refine is {'in' if refine else 'not in'} the recipe)")
    if refine is not None and row.noted and len(row.noted) != refine["gens"] + 1:
        raise ConfigError(f"{where}: {len(row.noted)} noted generations need refine:gens={len(row.noted) - 1}, "
                          f"the recipe has gens={refine['gens']}")


def select(rows: list[Row], pattern: str | None) -> list[Row]:
    """The rows whose id matches `pattern`, a glob (fnmatch, case-insensitive) or several joined by ','.

    None selects every row. A pattern that matches nothing is a ConfigError.
    """
    if pattern is None:
        return list(rows)
    globs = [p.strip().lower() for p in pattern.split(",") if p.strip()]
    if not globs:
        raise ConfigError(f"row pattern '{pattern}' is empty; give a glob such as 'S9.*' or a row id")
    chosen = [r for r in rows if any(fnmatch.fnmatchcase(r.id.lower(), g) for g in globs)]
    if not chosen:
        sections = sorted({r.section for r in rows}, key=lambda s: int(s[1:]))
        raise ConfigError(f"no row id matches '{pattern}'; ids look like S9.mixup.a0.3, e.g. 'S9.*' or "
                          f"'S7.sgdr.*' (sections {', '.join(sections)})")
    return chosen


def status_counts(rows: list[Row]) -> dict[str, int]:
    """Rows per status, every status present: {'measured': n, 'unmeasured': n, 'inexpressible': n}."""
    return {s: sum(r.status == s for r in rows) for s in STATUSES}
