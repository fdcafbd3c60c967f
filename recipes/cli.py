"""The `recipe` command: run, show and list recipes.

    recipe run RECIPE [--dataset NAME] [--data PATH] [--model NAME] [--epochs N] [--bs N] [--lr X]
                      [--wd X] [--subset N] [--seed N] [--out DIR] [--device D] [--resume]
    recipe show RECIPE [same options]     the resolved config as JSON, without training
    recipe list                           what is registered
    recipe eval RUN_DIR [--data PATH] [--tta] [--generation N] [--predict FOLDER]

Errors the user can fix print one line on stderr and exit with code 2; a training that went wrong
(a NaN or inf loss) prints one line and exits with code 1; a fit stopped by SIGTERM or SIGINT prints
one line and exits with 128 + the signal (143, 130): `recipe run ... --resume` continues it.
"""
from __future__ import annotations

import os
import signal
import sys


def _stopped_while_starting(signum, frame):  # before main() runs: the imports take seconds, nothing is written
    os.write(2, f"recipe: stopped by {signal.Signals(signum).name} while starting; nothing was written\n".encode())
    os._exit(128 + signum)


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "recipe":
    signal.signal(signal.SIGTERM, _stopped_while_starting)

import argparse
from pathlib import Path
import json
import threading
import warnings

# fastai's import of torch.jit.script warns on every start; the terminal shows only our own lines.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from rich.console import Console
from rich.table import Table


def _matplotlib_folder() -> None:
    """Point matplotlib (fastai imports it) at a folder it can write, where its own choice cannot be written (a
    read-only HOME): it would warn on every start and build its font cache anew in a new temporary folder. Its own
    choice (MPLCONFIGDIR, else ~/.config/matplotlib and ~/.cache/matplotlib) is tested as matplotlib tests it;
    the folder given instead is `<tempdir>/fastai-tricks-matplotlib-<uid>`, kept from one run to the next."""
    import tempfile

    if "matplotlib" in sys.modules:
        return
    home = Path(os.path.expanduser("~"))
    wanted = [Path(os.environ["MPLCONFIGDIR"])] if os.environ.get("MPLCONFIGDIR") else [
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
        Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"]
    if all(_writable_folder(folder) for folder in wanted):
        return
    folder = Path(tempfile.gettempdir()) / f"fastai-tricks-matplotlib-{os.getuid()}"
    if not _writable_folder(folder, mode=0o700) or folder.stat().st_uid != os.getuid():
        folder = Path(tempfile.mkdtemp(prefix="fastai-tricks-matplotlib-"))  # another user's: one of our own
    os.environ["MPLCONFIGDIR"] = str(folder)


def _writable_folder(folder: Path, mode: int = 0o777) -> bool:
    try:
        folder.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK) and folder.is_dir()


_matplotlib_folder()

from recipes.parse import parse_recipe
from recipes.presets import PRESETS
from tricks.registry import TRICKS
from recipes.recipe import PARAMS, Recipe
from tricks.errors import TrainingError, TricksError, describe_os_error, one_line
from tricks.files import no_space
from recipes.run_folder import fit_folder_name

OVERRIDES = ("dataset", "data", "model", "epochs", "bs", "lr", "wd", "subset", "seed", "device", "channels_last",
             "precision", "compile", "compile_mode", "compile_step")


class UsageError(Exception):
    pass


class Terminated(BaseException):
    """SIGTERM outside a fit (a fit's own handler stops it at the end of a batch: `recipes.checkpoint`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _ascii(kind):
    """argparse's `int` / `float`, for ASCII text only (int('３') is 3)."""

    def convert(text: str):
        if not text.isascii():
            raise ValueError(text)
        return kind(text)

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return convert


ascii_int, ascii_float = _ascii(int), _ascii(float)


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of the usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe string, e.g. baseline or baseline:epochs=30,lr=0.1")
    p.add_argument("--dataset", help="cifar10 (default), cifar100, fashion-mnist or folder")
    p.add_argument("--data", help="dataset folder or .tar.gz (default: $TRICKS_DATA, then known places)")
    p.add_argument("--model", help="resnet20, preact_resnet56, wrn28_10, timm:<name>, ...")
    p.add_argument("--epochs", type=ascii_int, help="total epochs; the warmup scales with them")
    p.add_argument("--bs", type=ascii_int, help="batch size")
    p.add_argument("--lr", type=ascii_float, help="peak learning rate")
    p.add_argument("--wd", type=ascii_float, help="weight decay")
    p.add_argument("--subset", type=ascii_int, help="train on a class-balanced subset of N images")
    p.add_argument("--seed", type=ascii_int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on)")
    p.add_argument("--precision", choices=PARAMS["precision"].choices,
                   help="autocast precision: auto (default: bf16 on a CUDA GPU, fp32 elsewhere), fp32, bf16, fp16")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on a CUDA GPU only)")
    p.add_argument("--compile-mode", choices=PARAMS["compile_mode"].choices,
                   help="torch.compile mode (default auto: reduce-overhead, i.e. CUDA graphs, on CUDA)")
    p.add_argument("--compile-step", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the SGD step too, its lr a device tensor (default: off until measured faster)")


def build_parser() -> Parser:
    parser = Parser(prog="recipe", description="Train image classifiers with chains of training tricks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="train a recipe into a run folder")
    add_recipe_options(run)
    run.add_argument("--out", help="run folder (default: a new runs/<recipe>-<time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the stopped run in --out from its last checkpoint (give the same recipe and "
                          "options as when it started)")
    show = sub.add_parser("show", help="print the resolved config as JSON")
    add_recipe_options(show)
    ls = sub.add_parser("list", help="list registered recipes, tricks and models")
    ls.add_argument("--format", choices=("table", "tsv", "json"),
                    help="table (default on a terminal), tsv (default otherwise: every value whole) or json")
    ev = sub.add_parser("eval", help="re-evaluate a run folder's saved weights on the test split")
    ev.add_argument("run_dir", help="a folder `recipe run` wrote")
    ev.add_argument("--data", help="the dataset (default: the path in the run's config.json)")
    ev.add_argument("--tta", action="store_true", help="average the predictions of each image and its mirror")
    ev.add_argument("--generation", type=ascii_int, help="which refinery generation (default: the last)")
    ev.add_argument("--predict", metavar="FOLDER", help="predict the classes of the images in FOLDER instead")
    ev.add_argument("--device", default="auto")
    return parser


def recipe_from(args: argparse.Namespace) -> Recipe:
    return parse_recipe(args.recipe, **{k: getattr(args, k) for k in OVERRIDES})


def registered() -> dict[str, list[dict[str, str]]]:
    """What `recipe list` shows: the recipes (presets), the tricks, the models, one dict per entry."""
    from tricks.models import MODELS, PATTERNS

    recipes = [{"name": n, "section": PRESETS.meta(n)["section"], "what it is": PRESETS.meta(n)["description"]}
               for n in PRESETS.names()]
    tricks = []
    for name in sorted(TRICKS.names()):
        spec = TRICKS.get(name)
        tricks.append({"name": name, "what it does": spec.description,
                       "parameters (defaults)": ", ".join(f"{p.name}={p.default} {p.allowed()}" for p in spec.params)
                       or "-", "touches": ", ".join(spec.touches), "paper": spec.paper})
    models = [{"name": n, "what it is": MODELS.meta(n)["description"], "paper": MODELS.meta(n)["paper"]}
              for n in MODELS.names()]
    models += [{"name": p.pattern, "what it is": p.description, "paper": ""} for p in PATTERNS.values()]
    return {"recipes": recipes, "tricks": tricks, "models": models}


def cmd_list(console: Console, fmt: str = "table") -> None:
    """The registered recipes, then the tricks, then the models (with the name patterns that resolve too):
    rich tables, tab-separated values (a `kind` column first), or JSON."""
    groups = registered()
    if fmt == "json":
        print(json.dumps(groups, indent=1))
        return
    if fmt == "tsv":
        for kind, entries in groups.items():
            print("\t".join(["kind", *entries[0]]))
            for e in entries:
                print("\t".join([kind, *(" ".join(str(v).split()) for v in e.values())]))
        return
    titles = {"recipes": "recipes", "tricks": "tricks (name:key=value,...)", "models": "models (--model NAME)"}
    for kind, entries in groups.items():
        table = Table(title=titles[kind])
        for col in entries[0]:
            table.add_column(col, no_wrap=col == "name", overflow="fold")
        for e in entries:
            table.add_row(*e.values())
        console.print(table)


def cmd_eval(args: argparse.Namespace, console: Console) -> None:
    from recipes.evaluate import evaluate, predict_folder

    if args.predict:
        table = Table(title=f"predictions of {args.run_dir}")
        for col in ("image", "class", "probability"):
            table.add_column(col)
        for path, name, prob in predict_folder(args.run_dir, args.predict, tta=args.tta,
                                               generation=args.generation, device=args.device):
            table.add_row(path, name, f"{prob:.3f}")
        console.print(table)
        return
    result = evaluate(args.run_dir, data=args.data, tta=args.tta, generation=args.generation, device=args.device)
    table = Table(title=f"{result.folder}{' with flip TTA' if args.tta else ''}")
    for col in ("class", "images", "correct", "accuracy"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, n, correct in result.per_class:
        table.add_row(name, str(n), str(correct), f"{100.0 * correct / n:.2f}%" if n else "-")
    console.print(table)
    console.print(f"test accuracy {result.accuracy:.2f}%", highlight=False, soft_wrap=True)


def cmd_run(args: argparse.Namespace, console: Console) -> None:
    from recipes.progress import RichProgress
    from recipes.distributed import DistributedEnv
    from recipes.run import train

    recipe = recipe_from(args)
    warned: list[bool] = []
    progress: list[RichProgress] = []
    title = [recipe.recipe]

    def display(stats):
        progress.append(RichProgress(console, stats, title=title[0]))
        return [progress[-1]]

    def started(info):
        if "generation" in info:
            g, n = info["generation"], info["generations"]
            title[0] = f"gen {g}/{n}"
            console.print(f"[bold]generation {g} of 0..{n}[/] "
                          f"({'the first model' if g == 0 else 'refining generation ' + str(g - 1)}; "
                          f"tricks: {', '.join(t['name'] for t in info['tricks']) or 'none'})",
                          highlight=False, soft_wrap=True)
        console.print(setup_lines(info), highlight=False, soft_wrap=True)
        for note in info.get("speed_notes", ()) if not info.get("generation") else ():  # once, at the first fit
            console.print(note, highlight=False, soft_wrap=True)
        fit_started[0] = True
        if info.get("test_missing_classes") and not warned:
            warned.append(True)
            missing = info["test_missing_classes"]
            print(f"recipe: warning: the test split has no images of {len(missing)} of the {info['num_classes']} "
                  f"classes ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): their accuracy cannot "
                  "be measured (result.json lists them)", file=sys.stderr)
        if "resume" in info:
            if info["resume"]["note"]:
                print(f"recipe: warning: {info['resume']['note']}", file=sys.stderr)
            console.print(f"resuming after epoch {info['resume']['epoch']} of {info['epochs']}", highlight=False,
                          soft_wrap=True)

    try:
        result = train(recipe, args.out, callbacks=display, on_start=started, resume=args.resume)
    finally:
        for p in progress:
            if hasattr(p, "bars"):
                p.bars.stop()
    if DistributedEnv.from_environ().rank > 0:  # under torchrun only rank 0 prints (recipes.distributed)
        return
    if result.get("already_finished"):
        console.print(f"--resume: the run in '{result['out']}' has finished already (result.json); nothing to do: "
                      f"test accuracy {result['test_acc']:.2f}%", highlight=False, soft_wrap=True)
        return
    if "generation_test_acc" in result:
        console.print("test accuracy by generation: " + " / ".join(f"{a:.2f}" for a in result["generation_test_acc"]),
                      highlight=False, soft_wrap=True)
        print_generations(console, result)
    console.print(f"test accuracy {result['test_acc']:.2f}% (best {result['best_test_acc']:.2f}%), "
                  f"{result['train_images_per_second']:.0f} train img/s, {result['seconds']:.0f} s; "
                  f"run folder: {result['out']}", highlight=False, soft_wrap=True)


def setup_lines(info: dict) -> str:
    """What a fit's start prints, in lines that fit 80 columns (a long recipe string or path aside)."""
    return (f"[bold]{info['recipe']}[/]\n{info['model']} ({info['parameters']:,} parameters), {info['epochs']} "
            f"epochs, device {info['device']}\n{info['dataset']}: {info['train_images']:,} train / "
            f"{info['test_images']:,} test images of {info['channels']}x{info['image_size'][0]}x"
            f"{info['image_size'][1]}\nrun folder: {info['out']}")


def print_generations(console: Console, result: dict) -> None:
    """A refine run's table: each generation's test accuracy, its difference from generation 0, and its
    curves inside the run folder (named below the table, so that no column is cut at 80 columns); the seed
    in the title, so that the numbers read as one measured run."""
    accs = result["generation_test_acc"]
    folders = [fit_folder_name(i) for i in range(len(accs))]
    table = Table(title=f"generations (seed {result.get('seed', '?')})")
    for col in ("generation", "test accuracy (%)", "vs generation 0 (points)", "plot"):
        table.add_column(col, no_wrap=True)
    for i, (acc, folder) in enumerate(zip(accs, folders)):
        table.add_row(str(i), f"{acc:.2f}", "-" if i == 0 else f"{acc - accs[0]:+.2f}", f"{folder}/curves.png")
    console.print(table)
    console.print(f"generation folders (config, metrics.csv, model.pth, curves.png) in {result['out']}",
                  highlight=False, soft_wrap=True)


fit_started = [False]  # set once a fit reports its start: a SIGTERM before it had nothing to stop


def _terminate(signum, frame):
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    console = Console()
    fit_started[0] = False
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv, console)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None, console: Console) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            cmd_list(console, args.format or ("table" if sys.stdout.isatty() else "tsv"))
        elif args.command == "show":
            print(json.dumps(recipe_from(args).to_dict(), indent=2))
        elif args.command == "eval":
            cmd_eval(args, console)
        else:
            cmd_run(args, console)
    except TrainingError as e:  # the input was fine: not a usage error
        signum = getattr(e, "signum", None)  # recipes.checkpoint.Interrupted: SIGTERM / SIGINT during a fit
        if signum is not None:  # 128 + the signal, as a shell reports it
            print(f"recipe: {one_line(e)}", file=sys.stderr)
            return 128 + signum
        print(f"recipe: error: {one_line(e)}", file=sys.stderr)
        return 1
    except (TricksError, UsageError) as e:
        print(f"recipe: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recipe: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        name = signal.Signals(e.signum).name
        if fit_started[0]:
            print(f"recipe: stopped by {name} outside the fit; `recipe run ... --resume` continues the run",
                  file=sys.stderr)
        else:
            print(f"recipe: stopped by {name} before training started; nothing to resume: run the command again",
                  file=sys.stderr)
        return 128 + e.signum
    except OSError as e:  # what the code did not turn into a TricksError: the file and what the system said
        print(f"recipe: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch.save onto a file of a full disk: "unexpected pos", with the OSError as context
        if not no_space(e):
            raise
        print(f"recipe: error: no space left on device ({one_line(e)}); free some space", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
