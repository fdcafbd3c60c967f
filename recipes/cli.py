"""The `recipe` command: run, show and list recipes.

    recipe run RECIPE [--dataset NAME] [--data PATH] [--model NAME] [--epochs N] [--bs N] [--lr X]
                      [--wd X] [--subset N] [--seed N] [--out DIR] [--device D]
    recipe show RECIPE [same options]     the resolved config as JSON, without training
    recipe list                           what is registered

Errors the user can fix print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

# fastai's import of torch.jit.script warns on every start; the terminal shows only our own lines.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from rich.console import Console
from rich.table import Table

from recipes.parse import parse_recipe
from recipes.presets import PRESETS
from tricks.registry import TRICKS
from recipes.recipe import Recipe
from tricks.errors import TricksError

OVERRIDES = ("dataset", "data", "model", "epochs", "bs", "lr", "wd", "subset", "seed", "device")


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of the usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe string, e.g. baseline or baseline:epochs=30,lr=0.1")
    p.add_argument("--dataset", help="cifar10 (default), cifar100, fashion-mnist or folder")
    p.add_argument("--data", help="dataset folder or .tar.gz (default: $TRICKS_DATA, then known places)")
    p.add_argument("--model", help="resnet20, preact_resnet56, wrn28_10, timm:<name>, ...")
    p.add_argument("--epochs", type=int, help="total epochs; the warmup scales with them")
    p.add_argument("--bs", type=int, help="batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--wd", type=float, help="weight decay")
    p.add_argument("--subset", type=int, help="train on a class-balanced subset of N images")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")


def build_parser() -> Parser:
    parser = Parser(prog="recipe", description="Train image classifiers with chains of training tricks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="train a recipe into a run folder")
    add_recipe_options(run)
    run.add_argument("--out", help="run folder (default: a new runs/<recipe>-<time>)")
    show = sub.add_parser("show", help="print the resolved config as JSON")
    add_recipe_options(show)
    sub.add_parser("list", help="list registered recipes")
    return parser


def recipe_from(args: argparse.Namespace) -> Recipe:
    return parse_recipe(args.recipe, **{k: getattr(args, k) for k in OVERRIDES})


def cmd_list(console: Console) -> None:
    """The registered recipes, then the models (with the name patterns that resolve too)."""
    from tricks.models import MODELS, PATTERNS

    recipes = Table(title="recipes")
    for col in ("name", "section", "what it is"):
        recipes.add_column(col)
    for name in PRESETS.names():
        meta = PRESETS.meta(name)
        recipes.add_row(name, meta["section"], meta["description"])
    console.print(recipes)
    tricks = Table(title="tricks (name:key=value,...)")
    for col in ("name", "what it does", "parameters (defaults)", "touches", "paper"):
        tricks.add_column(col)
    for name in sorted(TRICKS.names()):
        spec = TRICKS.get(name)
        params = ", ".join(f"{p.name}={p.default} {p.allowed()}" for p in spec.params) or "-"
        tricks.add_row(name, spec.description, params, ", ".join(spec.touches), spec.paper)
    console.print(tricks)
    models = Table(title="models (--model NAME)")
    for col in ("name", "what it is", "paper"):
        models.add_column(col)
    for name in MODELS.names():
        meta = MODELS.meta(name)
        models.add_row(name, meta["description"], meta["paper"])
    for pattern, description in PATTERNS.items():
        models.add_row(pattern, description, "")
    console.print(models)


def cmd_run(args: argparse.Namespace, console: Console) -> None:
    from recipes.progress import RichProgress
    from recipes.run import train

    recipe = recipe_from(args)
    progress: list[RichProgress] = []

    def display(stats):
        progress.append(RichProgress(console, stats, title=recipe.recipe))
        return progress

    def started(info):
        console.print(f"[bold]{info['recipe']}[/]  {info['model']} ({info['parameters']:,} parameters) on "
                      f"{info['dataset']}: {info['train_images']:,} train / {info['test_images']:,} test images "
                      f"of {info['channels']}x{info['image_size'][0]}x{info['image_size'][1]}, "
                      f"{info['epochs']} epochs, device {info['device']}\nrun folder: {info['out']}",
                      highlight=False, soft_wrap=True)

    try:
        result = train(recipe, args.out, callbacks=display, on_start=started)
    finally:
        for p in progress:
            if hasattr(p, "bars"):
                p.bars.stop()
    console.print(f"test accuracy {result['test_acc']:.2f}% (best {result['best_test_acc']:.2f}%), "
                  f"{result['train_images_per_second']:.0f} train img/s, {result['seconds']:.0f} s; "
                  f"run folder: {result['out']}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    console = Console()
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            cmd_list(console)
        elif args.command == "show":
            print(json.dumps(recipe_from(args).to_dict(), indent=2))
        else:
            cmd_run(args, console)
    except (TricksError, UsageError) as e:
        print(f"recipe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recipe: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
