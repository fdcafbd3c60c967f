"""Installable like a library (issue 12, section 4): `python -m build` of a clean copy of the checkout (its
git-tracked files) makes an sdist, then a wheel from that sdist; both carry the package data the code opens,
and the wheel installed on its own (`pip install --no-deps --target`, the dependencies being this venv's)
imports from its own files and runs `recipe list` and `bench list` with the checkout nowhere on the path."""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tricks", "recipes", "bench")
# Tracked files under the packages that no installed code opens: the sdist has them, the wheel does not.
REPOSITORY_ONLY = ("bench/gpu_session.sh", "bench/results/gpu-session-*.log")
NOT_IN_SDIST = (".gitignore",)
REWRITTEN_IN_SDIST = ("setup.cfg",)  # setuptools adds its [egg_info] settings
TIMEOUT_S = 300


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]  # a file deleted, not yet committed


def package_files(files: list[str]) -> list[str]:
    """The files of `files` the wheel must hold: the packages' modules and their package data."""
    return sorted(p for p in files if p.split("/")[0] in PACKAGES
                  and not any(fnmatch.fnmatch(p, pattern) for pattern in REPOSITORY_ONLY))


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict:
    """The sdist and the wheel `python -m build` makes of a copy (`src`) of the tracked files (`files`), in
    build's own isolated environment (the build-system requirements come from the package index). The copy,
    not the checkout, is what they are compared with: others may be editing the checkout meanwhile."""
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout (an unpacked sdist): which files are tracked is unknown")
    tmp = tmp_path_factory.mktemp("packaging")
    src, files = tmp / "src", tracked()
    for p in files:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / p, src / p)
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {kind: sorted((tmp / "dist").glob(glob)) for kind, glob in (("sdist", "*.tar.gz"), ("wheel", "*.whl"))}
    assert all(len(v) == 1 for v in found.values()), found
    return {**{kind: v[0] for kind, v in found.items()}, "src": src, "files": files}


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> Path:
    """The wheel installed with `pip install --no-deps --target`: the folder to put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--disable-pip-version-check", "--target", str(target), str(dists["wheel"])],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return target


def test_the_wheel_holds_the_modules_and_package_data_and_nothing_else(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = whl.namelist()
        outside = sorted(n for n in names if n.split("/")[0] not in PACKAGES and ".dist-info/" not in n)
        assert outside == []
        assert sorted(n for n in names if ".dist-info/" not in n) == package_files(dists["files"])
        for p in package_files(dists["files"]):  # the source's bytes, not a stale copy
            assert whl.read(p) == (dists["src"] / p).read_bytes(), p
        entry_points = whl.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "recipe = recipes.cli:main" in entry_points and "bench = bench.cli:main" in entry_points
    for data in ("bench/ablations.toml", "bench/results/full.jsonl"):  # what `bench list` and `bench report` read
        assert data in names


def test_the_sdist_holds_every_tracked_file(dists):
    with tarfile.open(dists["sdist"]) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.partition("/")[2] for n in tar.getnames() if tar.getmember(n).isfile()}
        for p in dists["files"]:
            if p not in NOT_IN_SDIST:
                assert p in names, f"{p} is tracked but not in the sdist {dists['sdist'].name}"
        for p in dists["files"]:
            if p not in NOT_IN_SDIST + REWRITTEN_IN_SDIST:
                assert tar.extractfile(f"{top}/{p}").read() == (dists["src"] / p).read_bytes(), p


# One interpreter (importing torch and fastai takes seconds): where the modules and data files come from, then
# the console scripts pip wrote, each run as its file, every output after a line of its own.
PROBE = """
import json, runpy, sys
import bench.results_file, bench.table, recipes, tricks
from tricks import LabelRefinery
print(json.dumps({"files": [m.__file__ for m in (tricks, recipes, bench.table)]
                  + [str(bench.table.TABLE), str(bench.results_file.DEFAULT_PATH)],
                  "records": len(bench.results_file.read(bench.results_file.DEFAULT_PATH)),
                  "refinery": LabelRefinery.__module__}))
for script in sys.argv[1:]:
    print("@@", script, flush=True)
    sys.argv = [script, "list", "--format", "json"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        assert exit.code in (0, None), (script, exit.code)
"""


def test_the_installed_wheel_imports_and_runs_its_commands_from_its_own_files(dists, installed, tmp_path):
    from bench.table import load_table
    from recipes.presets import PRESETS
    from tricks.registry import TRICKS

    scripts = [str(installed / "bin" / name) for name in ("recipe", "bench")]
    env = {**os.environ, "PYTHONPATH": str(installed)}  # the installed wheel, then this venv's dependencies
    done = subprocess.run([sys.executable, "-c", PROBE, *scripts], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)  # cwd outside the checkout: it is not importable
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe, recipe_list, bench_list = done.stdout.split("\n@@ ")
    assert recipe_list.startswith(scripts[0] + "\n") and bench_list.startswith(scripts[1] + "\n")

    seen = json.loads(probe)
    assert seen["refinery"] == "tricks.label_refinery"
    for file in seen["files"]:
        assert Path(file).resolve().is_relative_to(installed.resolve()), file
    assert seen["records"] == len([line for line in (dists["src"] / "bench/results/full.jsonl").read_text()
                                   .splitlines() if line.strip()])

    listed = json.loads(recipe_list.partition("\n")[2])
    assert [t["name"] for t in listed["tricks"]] == sorted(TRICKS.names())
    assert [r["name"] for r in listed["recipes"]] == PRESETS.names()
    rows = json.loads(bench_list.partition("\n")[2])
    assert [r["id"] for r in rows] == [row.id for row in load_table()[0]]
