"""The `bench` command.

    bench load [--dataset NAME] [--data PATH]   time decoding a dataset against loading its tensor cache

Errors the user can fix print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

from recipes.cli import Parser, UsageError, one_line
from tricks.data import load_dataset
from tricks.errors import TricksError


def cmd_load(args: argparse.Namespace) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="bench", description="Benchmarks of fastai-tricks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    load = sub.add_parser("load", help="time a dataset's decode and its cached load")
    load.add_argument("--dataset", default="cifar10")
    load.add_argument("--data", help="dataset folder or archive (default: $TRICKS_DATA, then known places)")
    load.add_argument("--repeat", type=int, default=3)
    try:
        args = parser.parse_args(argv)
        cmd_load(args)
    except (TricksError, UsageError) as e:
        print(f"bench: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
