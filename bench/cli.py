"""The `bench` command: replay the notes' ablation table, report noted beside measured, time the data path.

    bench list   [--rows GLOB] [--format table|tsv|json]         the rows, their recipes and noted numbers
    bench replay [--rows GLOB] [--budget smoke|short|full] [--seeds N] [--workers N] [--results DIR]
                 [--until SECONDS] [--results-file PATH]
                 [--data PATH] [--dataset NAME] [--device D] [--ray ADDRESS]
                                                                 train what is not in the results yet
    bench report [--results DIR] [--budget B] [--results-file PATH] [--readme PATH]
                                                                 report.md and PNG charts; the README table
    bench decide [CONCLUSION-GLOB ...] [--budget B] [--max-seeds N] [--margin POINTS] [--until SECONDS]
                 [--dry-run] [--simulate SPEC] and replay's --workers/--results/--data/--ray options
                                                                 seeds only where a conclusion is still open
    list, replay, report and decide take --table PATH: an ablation table of your own (bench/ablations.toml's format)
    bench gap    [--budget B] [--seeds N] [--workers N] [--until SECONDS] [--start-late] and replay's
                 --results/--data/--device
                                                                 the S9 baseline three ways (issue 19)
    bench slice  --stage NAME=START:END ... --given SECONDS [--budget B] [--log PATH]
                                                                 one line of the GPU slice log
    bench load   [--dataset NAME] [--data PATH]                   decode a dataset against loading its cache
    bench perf   [--quick] [--results DIR] [--data PATH] [--device D] [--overhead | --compile-cache]
                 [--only MEASUREMENTS] [--until SECONDS] [--parity-epochs N]  (the GPU's; --quick: toy sizes)
                                                                 the trainer's cost over a plain loop, and more

Errors the user can fix print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recipes.cli import Parser, UsageError
from tricks.data import load_dataset
from tricks.errors import TricksError, describe_os_error, one_line
from tricks.files import no_space, write_atomic

DEFAULT_RESULTS = "bench-results"


def output_format(args: argparse.Namespace) -> str:
    """--format, or by default: a table on a terminal, tab-separated values (every value whole) elsewhere."""
    return args.format or ("table" if sys.stdout.isatty() else "tsv")


def cmd_list(args: argparse.Namespace, console: Console) -> None:
    from bench.table import load_table, select

    rows, _ = load_table(args.table)
    rows = select(rows, args.rows)
    records = [{"id": row.id, "recipe": row.recipe, "options": ", ".join(f"{k}={v}" for k, v in row.options.items()),
                "noted": "/".join(f"{v:.2f}" for v in row.noted) or "-", "status": row.status,
                "why": row.why if row.status == "inexpressible" else ""} for row in rows]
    counts = Counter(r.status for r in rows)
    summary = (f"{len(rows)} rows: {counts['measured']} measured, {counts['unmeasured']} unmeasured, "
               f"{counts['inexpressible']} inexpressible")
    fmt = output_format(args)
    if fmt == "json":
        print(json.dumps(records, indent=1))
        return
    if fmt == "tsv":
        print("\t".join(records[0]) if records else "id\trecipe\toptions\tnoted\tstatus\twhy")
        for r in records:
            print("\t".join(" ".join(str(v).split()) for v in r.values()))
        return
    if console.width >= 120:
        table = Table(title=f"ablation rows{f' matching {args.rows}' if args.rows else ''}")
        table.add_column("id", no_wrap=True)  # ids and accuracies are never cut; the recipe and options fold
        table.add_column("noted", no_wrap=True)
        table.add_column("recipe", overflow="fold")
        table.add_column("options", overflow="fold")
        table.add_column("status", no_wrap=True)
        for r in records:
            table.add_row(r["id"], r["noted"], r["recipe"], r["options"], r["status"])
        console.print(table)
    else:  # a narrow terminal: one line of id, noted and status per row, its recipe indented below
        wid = max((len(r["id"]) for r in records), default=2)
        wnoted = max((len(r["noted"]) for r in records), default=5)
        for r in records:
            console.print(f"{r['id']:<{wid}}  {r['noted']:<{wnoted}}  {r['status']}", highlight=False, soft_wrap=True)
            console.print(f"    {r['recipe']}" + (f" ({r['options']})" if r["options"] else ""), highlight=False,
                          markup=False)
    console.print(summary + ("; why a row is inexpressible: `bench list --format tsv`" if counts["inexpressible"]
                             else ""), highlight=False, soft_wrap=True)


def cmd_replay(args: argparse.Namespace, console: Console) -> None:
    from bench.replay import replay
    from bench.table import load_table, select

    rows, _ = load_table(args.table)
    rows = select(rows, args.rows)
    from bench.results_file import DEFAULT_PATH

    counts = replay(rows, budget=args.budget, seeds=args.seeds, workers=args.workers, results_dir=Path(args.results),
                    data=args.data, dataset=args.dataset, device=args.device, ray_address=args.ray,
                    until=args.until, results_path=Path(args.results_file) if args.results_file else DEFAULT_PATH,
                    compile_mode=args.compile_mode, start_late=args.start_late,
                    progress=lambda line: console.print(line, highlight=False, soft_wrap=True))
    console.print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()), highlight=False)
    if counts.get("failed"):
        raise SystemExit(1)


def cmd_report(args: argparse.Namespace, console: Console) -> None:
    from bench.report import (GAP_MARKERS, SLICE_MARKERS, gap_markdown, has_markers, headline_markdown,
                              load_records, readme_parts, replace_between_markers, slice_markdown, write_report)
    from bench.results_file import DEFAULT_PATH
    from bench.slices import DEFAULT_PATH as SLICES_PATH, read_checked as read_slices
    from bench.table import load_table

    rows, conclusions = load_table(args.table)
    results, results_file = Path(args.results), Path(args.results_file or DEFAULT_PATH)
    readme = Path(args.readme) if args.readme else None
    if readme is not None:  # a README that cannot be read or changed fails before a file is written
        readme_parts(readme)
    extra = [m for m in (GAP_MARKERS, SLICE_MARKERS) if readme is not None and has_markers(readme, m)]
    for markers in extra:
        readme_parts(readme, markers)
    slices, slices_skipped = read_slices(Path(args.slices_file or SLICES_PATH))
    path = write_report(results, rows, conclusions, budget=args.budget, results_file=results_file)
    console.print(f"report: {path}", highlight=False, soft_wrap=True)
    if slices_skipped:
        console.print(f"slice log: {len(slices_skipped)} lines skipped (first: {slices_skipped[0]})", highlight=False)
    if readme is not None:
        records = load_records(results, results_file)
        replace_between_markers(readme, headline_markdown(records, rows, conclusions))
        texts = {GAP_MARKERS: lambda: gap_markdown(records, rows), SLICE_MARKERS: lambda: slice_markdown(slices, rows)}
        for markers in extra:
            replace_between_markers(readme, texts[markers](), markers)
        console.print(f"full-budget table: {args.readme}", highlight=False, soft_wrap=True)


def cmd_gap(args: argparse.Namespace, console: Console) -> None:
    from bench.gap import gap
    from bench.results_file import DEFAULT_PATH
    from bench.table import load_table

    rows, _ = load_table()
    counts = gap(rows, budget=args.budget, seeds=args.seeds, workers=args.workers, results_dir=Path(args.results),
                 data=args.data, dataset=args.dataset, device=args.device, until=args.until,
                 start_late=args.start_late,
                 results_path=Path(args.results_file) if args.results_file else DEFAULT_PATH,
                 progress=lambda line: console.print(line, highlight=False, soft_wrap=True))
    console.print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()), highlight=False)
    if counts.get("failed"):
        raise SystemExit(1)


def cmd_slice(args: argparse.Namespace, console: Console) -> None:
    """Append one line to the GPU slice log (`bench.slices`) for the stages given; print it."""
    import torch

    from bench.record import merge
    from bench.results_file import DEFAULT_PATH, read
    from bench.slices import DEFAULT_PATH as SLICES_PATH, append, parse_stage, slice_entry
    from bench.store import DB_NAME, Store
    from recipes.build import resolve_device

    stages = [parse_stage(text) for text in args.stage]
    results = Path(args.results)
    stored = Store(results).records(args.budget) if (results / DB_NAME).is_file() else []
    device = resolve_device(args.device)
    entry = slice_entry(stages, merge(stored, read(Path(args.results_file or DEFAULT_PATH))),
                        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                        budget=args.budget, seconds_given=args.given)
    log = Path(args.log or SLICES_PATH)
    append(log, entry)
    print(json.dumps(entry, sort_keys=True))
    print(f"slice log: {log}")


def cmd_decide(args: argparse.Namespace, console: Console) -> None:
    from bench.decide import decide_table
    from bench.replay import default_workers
    from bench.results_file import DEFAULT_PATH
    from bench.table import load_table

    rows, conclusions = load_table(args.table)
    workers = 1 if args.simulate else default_workers(args.device) if args.workers is None else args.workers
    outcome, text = decide_table(
        rows, conclusions, args.conclusions, budget=args.budget, results_dir=Path(args.results),
        results_path=Path(args.results_file) if args.results_file else DEFAULT_PATH, data=args.data,
        dataset=args.dataset, device=args.device, workers=workers, ray_address=args.ray, until=args.until,
        max_seeds=args.max_seeds, margin=args.margin, dry_run=args.dry_run, simulate=args.simulate,
        progress=lambda line: console.print(line, highlight=False, soft_wrap=True))
    print(text, end="")
    if outcome.planned is not None:
        print("next runs: " + (", ".join(f"{rid} seed {seed}" for rid, seed in outcome.planned) or "none"))
    elif not args.simulate:
        print(f"ran {outcome.ran}, failed {outcome.failed}, abandoned {outcome.abandoned}; "
              f"verdicts: {Path(args.results) / 'decide.md'}")
    if outcome.failed:
        raise SystemExit(1)


def cmd_load(args: argparse.Namespace, console: Console) -> None:
    """Decode into a fresh cache (the reference), then load that cache, and print both and the ratio."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as cache:
        start = time.perf_counter()
        data = load_dataset(args.dataset, args.data, cache_dir=cache, download=False)
        decode = time.perf_counter() - start
        loads = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            load_dataset(args.dataset, args.data, cache_dir=cache, download=False)
            loads.append(time.perf_counter() - start)
    cached = min(loads)
    print(f"{data.name} from {data.source}: {len(data.train)} train + {len(data.test)} test images")
    print(f"decode (cold cache): {decode:.2f} s")
    print(f"cached load (best of {args.repeat}): {cached:.2f} s")
    print(f"cached / decode: {cached / decode:.3f}")


def cmd_perf(args: argparse.Namespace, console: Console) -> None:
    """One of `bench perf`'s measurements; it and the processes it starts share one Inductor cache
    (`bench.compile_cache.shared_compile_cache`), but --compile-cache, which needs empty ones of its own."""
    from bench.compile_cache import shared_compile_cache

    if args.compile_cache:
        return cmd_perf_compile_cache(args, console)
    with shared_compile_cache():
        return cmd_perf_measurements(args, console)


def cmd_perf_measurements(args: argparse.Namespace, console: Console) -> None:
    from bench.perf import run_perf, write_perf
    from recipes.build import resolve_device

    if args.overhead:
        return cmd_perf_overhead(args, console)
    if resolve_device(args.device).type == "cuda" or (args.only and args.quick):
        return cmd_perf_cuda(args, console)
    if args.only:
        raise UsageError("--only chooses among the GPU measurements; give --device cuda (or --quick for a dry run "
                         "of them at toy sizes on this device)")
    data = load_dataset(args.dataset, args.data)
    perf = run_perf(data, quick=args.quick, device=args.device,
                    log=lambda line: console.print(line, highlight=False, soft_wrap=True))
    json_path, md_path = write_perf(perf, Path(args.results))
    print(f"results: {json_path}, {md_path}")
    t, a = perf["trainer"], perf["augmentation"]
    print(f"ratio 1, trainer / plain loop, train img/s: {t['ratio']:.3f} "
          f"({max(t['recipe_images_per_second']):.1f} / {max(t['plain_images_per_second']):.1f}; goal >= {t['goal']})")
    print(f"ratio 2, batched / torchvision augmentation, img/s: {a['ratio']:.1f} "
          f"({a['batched_images_per_second']:.0f} / {max(a['torchvision_images_per_second'].values()):.0f}); "
          f"share of a training step {100 * a['share_of_step']:.2f}% (goal < {100 * a['share_goal']:.0f}%)")


def cmd_perf_overhead(args: argparse.Namespace, console: Console) -> None:
    """The trainer's host work per step on a tiny model (`bench.overhead`): overhead.json, and the lines printed."""
    from bench.overhead import FULL, QUICK, overhead_lines, run_overhead

    if args.only:
        raise UsageError("--only chooses among the GPU measurements; leave it out with --overhead")
    result = run_overhead(args.device, QUICK if args.quick else FULL,
                          log=lambda line: console.print(line, highlight=False, soft_wrap=True))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(results / "overhead.json", json.dumps(result, indent=2) + "\n")
    print("\n".join(overhead_lines(result)))
    print(f"results: {results / 'overhead.json'}")


def cmd_perf_compile_cache(args: argparse.Namespace, console: Console) -> None:
    """The same compiled recipe in fresh processes, the second on the first's cache (`bench.compile_cache`):
    compile-cache.json, and the table printed."""
    from bench.compile_cache import FULL, QUICK, markdown, run_compile_cache

    if args.overhead or args.only:
        raise UsageError("--compile-cache is a measurement of its own; leave out "
                         + ("--overhead" if args.overhead else f"--only {args.only}"))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)  # a --results that cannot be made fails before the minutes of compiles
    result = run_compile_cache(QUICK if args.quick else FULL, device=args.device,
                               log=lambda line: console.print(line, highlight=False, soft_wrap=True))
    write_atomic(results / "compile-cache.json", json.dumps(result, indent=2) + "\n")
    print(markdown(result), end="")
    print(f"results: {results / 'compile-cache.json'}")


def cmd_perf_cuda(args: argparse.Namespace, console: Console) -> None:
    from bench.gpu_perf import MEASUREMENTS, concurrency_verdict, gpu_sizes, markdown, run_gpu_perf, write_gpu_perf

    only = tuple(args.only.split(",")) if args.only else MEASUREMENTS
    unknown = [m for m in only if m not in MEASUREMENTS]
    if unknown:
        raise UsageError(f"--only {args.only}: unknown measurement {unknown[0]!r}; choose among {', '.join(MEASUREMENTS)}")
    data = load_dataset(args.dataset, args.data)
    sizes = gpu_sizes(args.device, quick=args.quick, dataset=args.dataset, parity_epochs=args.parity_epochs)
    perf = run_gpu_perf(data, args.data, device=args.device, only=only, sizes=sizes, until=args.until,
                        log=lambda line: console.print(line, highlight=False, soft_wrap=True))
    results = Path(args.results)
    perf = write_gpu_perf(perf, results, merge=not args.quick)  # toy sizes never become the committed count
    print(markdown(perf))
    if perf.get("concurrency"):
        print(concurrency_verdict(perf["concurrency"]))
    print(f"results: {results / 'perf-cuda.json'}, {results / 'perf-cuda.md'}")


def build_parser() -> Parser:
    parser = Parser(prog="bench", description="Replay the notes' ablations; benchmarks of fastai-tricks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    ls = sub.add_parser("list", help="the ablation rows with their recipes and noted numbers")
    ls.add_argument("--rows", help="a glob over row ids, e.g. 'S9.*'")
    ls.add_argument("--format", choices=("table", "tsv", "json"),
                    help="table (default on a terminal), tsv (default otherwise: every value whole) or json")
    rp = sub.add_parser("replay", help="train the rows that are not in the results yet")
    rp.add_argument("--rows", help="a glob over row ids, e.g. 'S9.*'")
    rp.add_argument("--budget", choices=("smoke", "short", "full"), default="short")
    rp.add_argument("--seeds", type=int, default=1)
    rp.add_argument("--workers", type=int, default=None,
                    help="runs at once (default: 4 on a CUDA GPU, the count measured fastest; 1 on the CPU)")
    rp.add_argument("--until", type=float, metavar="SECONDS",
                    help="start no run that would not finish within SECONDS from now; stop running ones then "
                         "(after their epoch's checkpoint; the next replay resumes them)")
    rp.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune",
                                               "max-autotune-no-cudagraphs"),
                    help="torch.compile mode for every run (default: each recipe's, auto)")
    rp.add_argument("--start-late", action="store_true",
                    help="with --until: start runs up to the deadline even if they cannot finish by then (a "
                         "later replay on the same --results resumes them)")
    rp.add_argument("--results-file", metavar="PATH",
                    help="the text file full-budget runs are also appended to (default: bench/results/full.jsonl)")
    rp.add_argument("--results", default=DEFAULT_RESULTS, help=f"results folder (default: {DEFAULT_RESULTS})")
    rp.add_argument("--data", help="dataset folder or archive (default: $TRICKS_DATA, then known places)")
    rp.add_argument("--dataset", default="cifar10")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--ray", metavar="ADDRESS",
                    help="run the jobs as tasks of the Ray cluster whose head is ADDRESS (HOST:PORT) instead of "
                         "--workers local processes")
    rr = sub.add_parser("report", help="write report.md and PNG charts from the results")
    rr.add_argument("--results", default=DEFAULT_RESULTS, help="local results folder, if any "
                                                               f"(default: {DEFAULT_RESULTS})")
    rr.add_argument("--budget", choices=("smoke", "short", "full"))
    rr.add_argument("--results-file", metavar="PATH",
                    help="the repository's full-budget records, merged in (default: bench/results/full.jsonl)")
    rr.add_argument("--readme", metavar="PATH", help="put the full-budget table between the lines "
                                                     "<!-- full-budget:start --> and <!-- full-budget:end --> of PATH "
                                                     "(and the baseline gap and the latest GPU slice between "
                                                     "<!-- baseline-gap:... --> and <!-- gpu-slice:... --> where it "
                                                     "has them)")
    rr.add_argument("--slices-file", metavar="PATH",
                    help="the GPU slice log the README's GPU section reads (default: bench/results/slices.jsonl)")
    gp = sub.add_parser("gap", help="the S9 baseline three ways (default, fp32 eager, the plain loop), issue 19")
    gp.add_argument("--budget", choices=("smoke", "short", "full"), default="full")
    gp.add_argument("--seeds", type=int, default=2)
    gp.add_argument("--workers", type=int, default=None, help="runs at once (default: 6 on a CUDA GPU, 1 on the CPU)")
    for name in ("--until", "--results-file", "--results", "--data", "--dataset", "--device"):
        action = next(a for a in rp._actions if name in a.option_strings)
        gp.add_argument(name, type=action.type, default=action.default, help=action.help, metavar=action.metavar)
    gp.add_argument("--start-late", action="store_true",
                    help="with --until: start runs up to the deadline even if they cannot finish by then (a later "
                         "bench gap on the same --results resumes them, plain runs too)")
    sl = sub.add_parser("slice", help="append one line to the GPU slice log: stages, runs finished, img/s")
    sl.add_argument("--stage", action="append", default=[], metavar="NAME=START:END",
                    help="a stage and its start and end (Unix seconds, `date +%%s`); once per stage, in order")
    sl.add_argument("--given", type=float, required=True, metavar="SECONDS", help="the seconds the call was given")
    sl.add_argument("--budget", choices=("smoke", "short", "full"), default="full")
    sl.add_argument("--results", default=DEFAULT_RESULTS, help="the results folder the stages trained into")
    sl.add_argument("--results-file", metavar="PATH",
                    help="the full-budget records (default: bench/results/full.jsonl)")
    sl.add_argument("--log", metavar="PATH", help="the slice log (default: bench/results/slices.jsonl)")
    sl.add_argument("--device", default="auto", help="whose GPU name the line records")
    dc = sub.add_parser("decide", help="run seeds only where a conclusion is still open; a verdict table")
    dc.add_argument("conclusions", nargs="*", metavar="CONCLUSION-GLOB",
                    help="globs over conclusion ids, e.g. 'S9.*' (default: every conclusion)")
    dc.add_argument("--budget", choices=("smoke", "short", "full"), default="short")
    dc.add_argument("--max-seeds", type=int, default=8, help="seeds per row at most (default 8)")
    dc.add_argument("--margin", type=float, default=0.5,
                    help="points within which 'same' is confirmed (default 0.5, the report's)")
    dc.add_argument("--dry-run", action="store_true", help="print the verdicts and the next runs; train nothing")
    dc.add_argument("--simulate", metavar="SPEC", help="draw each run from a normal distribution per row instead of "
                                                       "training (a TOML file of row globs with mean, sd, seconds)")
    for name in ("--workers", "--until", "--results-file", "--results", "--data", "--dataset", "--device", "--ray"):
        action = next(a for a in rp._actions if name in a.option_strings)
        dc.add_argument(name, type=action.type, default=action.default, help=action.help, metavar=action.metavar)
    for command in (ls, rp, rr, dc):
        command.add_argument("--table", metavar="PATH", help="an ablation table of your own in the TOML format of "
                                                             "bench/ablations.toml (default: the notes' table)")
    load = sub.add_parser("load", help="time a dataset's decode and its cached load")
    load.add_argument("--dataset", default="cifar10")
    load.add_argument("--data", help="dataset folder or archive (default: $TRICKS_DATA, then known places)")
    load.add_argument("--repeat", type=int, default=3)
    pf = sub.add_parser("perf", help="time the trainer against a plain PyTorch loop, augmentation, tricks, memory")
    pf.add_argument("--quick", action="store_true", help="small sizes: under 5 minutes on 2 CPU cores; with --only, "
                                                       "the GPU measurements at toy sizes on any device (a dry run)")
    pf.add_argument("--results", default=DEFAULT_RESULTS, help=f"where perf.json and perf.md go "
                                                               f"(default: {DEFAULT_RESULTS})")
    pf.add_argument("--dataset", default="cifar10")
    pf.add_argument("--data", help="dataset folder or archive (default: $TRICKS_DATA, then known places)")
    pf.add_argument("--device", default="auto")
    pf.add_argument("--overhead", action="store_true",
                    help="only the trainer's host work per step against the plain loop, on a tiny model (no dataset)")
    pf.add_argument("--compile-cache", action="store_true",
                    help="only the compile of one recipe in a fresh process, then in a second sharing the first's "
                         "Inductor cache (no dataset)")
    pf.add_argument("--only", help="on a CUDA device (or with --quick): a comma list of speed, "
                                   "concurrency, parity, modes (default: all)")
    pf.add_argument("--parity-epochs", type=int, default=30, help="on a CUDA device: epochs of the bf16/fp32 parity runs")
    pf.add_argument("--until", type=float, metavar="SECONDS",
                    help="with --only concurrency: start the next count of runs at once only while twice the "
                         "last count's seconds fit before SECONDS from now (the counts measured are kept)")
    return parser


def check_numbers(args: argparse.Namespace) -> None:
    """A UsageError for a numeric option out of its range: counts below 1, a --until that is not a finite
    positive number of seconds (NaN compares false with everything, so it would run with no deadline)."""
    workers = getattr(args, "workers", 1)
    if getattr(args, "seeds", 1) < 1 or (workers is not None and workers < 1):
        shown = "" if workers is None else f" --workers {workers}"
        raise UsageError(f"--seeds and --workers must be at least 1, got --seeds {getattr(args, 'seeds', 1)}{shown}")
    until = getattr(args, "until", None)
    if until is not None and not (math.isfinite(until) and until > 0):
        raise UsageError(f"--until must be a finite number of seconds above 0, got {until:g}; leave it out to run "
                         "with no deadline")
    for option in ("repeat", "parity_epochs"):
        value = getattr(args, option, 1)
        if value < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be at least 1, got {value}")


def main(argv: list[str] | None = None) -> int:
    console = Console()
    try:
        args = build_parser().parse_args(argv)
        check_numbers(args)
        {"list": cmd_list, "replay": cmd_replay, "report": cmd_report, "decide": cmd_decide, "load": cmd_load,
         "perf": cmd_perf, "gap": cmd_gap, "slice": cmd_slice}[args.command](args, console)
    except (TricksError, UsageError) as e:
        print(f"bench: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. --results naming a file or a folder that cannot be written: the path, one line
        print(f"bench: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch.save onto a file of a full disk: "unexpected pos", with the OSError as context
        if not no_space(e):
            raise
        print(f"bench: error: no space left on device ({one_line(e)}); free some space", file=sys.stderr)
        return 2
    except sqlite3.Error as e:  # the results database cannot be opened or written
        where = getattr(args, "results", None) if "args" in locals() else None
        print(f"bench: error: the results database in '{where}' cannot be used ({one_line(e)}); give a --results "
              "folder you can write to", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished runs are kept, `bench replay` again goes on", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
