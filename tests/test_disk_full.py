"""Issue 23: a full disk is one line, exit code 2, for every file the project writes, and nothing already
written is lost; the files of a run folder and of the results get the mode the umask gives a new file.

The disk is a small tmpfs mounted for each test (skipped, with the reason, where mounting is not allowed),
filled with a filler file up to the bytes a test leaves free, so that one chosen write is the first that
does not fit. tmpfs counts in pages, so "1 page free" lets exactly one small file be written.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import write_cifar10

from bench.results_file import append as append_result, read as read_results
from bench.store import Store
from recipes.checkpoint import CHECKPOINT, PREVIOUS, read_checkpoint
from tricks.errors import DiskFullError

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
DISK_SIZE = 16 * 2**20
FULL = "no space left on device to write '"


# ---- the disk ----

@pytest.fixture
def disk(tmp_path):
    """A tmpfs of DISK_SIZE bytes at tmp_path/disk, unmounted at teardown; skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("the disk-full tests mount a small tmpfs: there is no `mount` command here")
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        pytest.skip(f"the disk-full tests mount a small tmpfs, which this machine does not allow ({why}); "
                    "they run as root or where user namespaces let a user mount one")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def leave_free(disk: Path, nbytes: int) -> None:
    """Grow or shrink the filler file so that `nbytes` (rounded up to whole pages) are left free on `disk`."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    size = free_bytes(disk) - -(-nbytes // PAGE) * PAGE
    assert size >= 0, f"the tmpfs has {free_bytes(disk)} bytes free, fewer than the {nbytes} the test leaves"
    if size:
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    assert free_bytes(disk) == -(-nbytes // PAGE) * PAGE


def free_all(disk: Path) -> None:
    (disk / "filler").unlink(missing_ok=True)


def assert_one_line(code: int, err: str, path: Path, prog: str = "recipe") -> None:
    assert "Traceback" not in err, err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: {FULL}{path}' ("), err
    assert err.rstrip().endswith("free some space or give a path on another disk (the files already written are "
                                 "kept)"), err


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- `recipe run`: config.json, checkpoint.pth, metrics.csv, model.pth, result.json, the data cache ----

@pytest.fixture
def data(tmp_path, data_env) -> Path:
    """Tiny CIFAR-10 (20 train images, every class in the 10 test images) on the normal disk."""
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=4, n_test=10)
    return tmp_path / "cifar-10-batches-py"


def recipe(*argv: str) -> int:
    from recipes.cli import main

    return main(list(argv))


def run_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["run", "baseline", "--data", str(data), "--out", str(out), "--device", "cpu", "--epochs", str(epochs),
            "--bs", "4", "--seed", "0", *extra]


def weights_bytes() -> int:
    """The size of the baseline model's model.pth: about that of the checkpoint of epoch 0; the later ones hold
    twice as much (the SGD momentum buffers)."""
    from recipes.build import build_model
    from recipes.parse import parse_recipe
    buf = io.BytesIO()
    torch.save(build_model(parse_recipe("baseline"), 10, 3).state_dict(), buf)
    return len(buf.getvalue())


def test_a_fresh_run_on_a_full_disk_stops_at_config_json_and_leaves_no_folder(disk, data, capsys, one_torch_thread):
    out = disk / "run"
    leave_free(disk, PAGE)  # the claim's one page; config.json is the first file of the run
    code = recipe(*run_args(data, out, 1))
    assert_one_line(code, capsys.readouterr().err, out / "config.json")
    assert not out.exists()  # the folder this call made is removed again: nothing of the run is there
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_checkpoint_then_metrics_on_a_full_disk_keep_the_last_checkpoint_and_resume_finishes(disk, data, capsys,
                                                                                             one_torch_thread):
    out = disk / "run"
    weights = weights_bytes()
    # room for checkpoint.prev.pth (epoch 0: the weights) and checkpoint.pth (epoch 1: weights and momentum)
    # and the small files, not for the temporary file of the next checkpoint: the save after epoch 2 fails
    leave_free(disk, 4 * weights)
    code = recipe(*run_args(data, out, 3))
    assert_one_line(code, capsys.readouterr().err, out / CHECKPOINT)
    assert read_checkpoint(out / CHECKPOINT)["epoch"] == 1
    assert read_checkpoint(out / PREVIOUS)["epoch"] == 0
    assert not list(out.glob(".*.tmp"))  # the temporary file of the failed save is removed
    assert not (out / "model.pth").exists() and not (out / "result.json").exists()

    # resumed on a disk with one page free (the claim's): epoch 2 trains again, then metrics.csv cannot be
    # written; the checkpoint of epoch 1 and metrics.csv as they were stay
    before = files(out)
    leave_free(disk, PAGE)
    code = recipe(*run_args(data, out, 3, "--resume"))
    assert_one_line(code, capsys.readouterr().err, out / "metrics.csv")
    assert files(out) == before
    assert read_checkpoint(out / CHECKPOINT)["epoch"] == 1

    free_all(disk)  # space freed: --resume finishes the run
    assert recipe(*run_args(data, out, 3, "--resume")) == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 3
    assert [row.split(",")[0] for row in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    assert not (out / CHECKPOINT).exists() and not (out / PREVIOUS).exists()


def test_model_pth_then_result_json_on_a_full_disk_keep_the_checkpoint_and_resume_finishes(disk, data, capsys,
                                                                                         one_torch_thread):
    out = disk / "run"
    weights = weights_bytes()
    # room for both checkpoints of a 1-epoch run (1 + 2 times the weights), not for model.pth after them
    leave_free(disk, 3 * weights + weights // 2)
    code = recipe(*run_args(data, out, 1))
    assert_one_line(code, capsys.readouterr().err, out / "model.pth")
    assert read_checkpoint(out / CHECKPOINT)["epoch"] == 1
    assert not (out / "model.pth").exists() and not list(out.glob(".*.tmp"))

    # resumed after its last epoch: nothing trains; model.pth fits (with the claim's page), result.json not
    leave_free(disk, -(-weights // PAGE) * PAGE + PAGE)
    code = recipe(*run_args(data, out, 1, "--resume"))
    assert_one_line(code, capsys.readouterr().err, out / "result.json")
    assert read_checkpoint(out / CHECKPOINT)["epoch"] == 1
    assert not (out / "result.json").exists()

    free_all(disk)
    assert recipe(*run_args(data, out, 1, "--resume")) == 0
    capsys.readouterr()
    assert json.loads((out / "result.json").read_text())["epochs"] == 1
    assert (out / "curves.png").stat().st_size > 0


def test_the_data_cache_on_a_full_disk(disk, data, tmp_path, capsys, monkeypatch, one_torch_thread):
    cache = disk / "cache"
    monkeypatch.setenv("TRICKS_CACHE", str(cache))
    leave_free(disk, 0)
    out = tmp_path / "run"
    code = recipe(*run_args(data, out, 1))
    err = capsys.readouterr().err
    assert_one_line(code, err, cache / "tensors" / err.split("/tensors/")[1].split("'")[0])
    assert err.split("/tensors/")[1].split("'")[0].endswith(".pt")
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no part of the tensors file, no temporary
    assert not out.exists()


# ---- bench: results.sqlite, full.jsonl, report.md and its charts, the README's table ----

def record(row_id: str = "S9.baseline") -> dict:
    return {"row_id": row_id, "recipe": "baseline", "budget": "smoke", "seed": 0, "code_version": "0.1.0+abc",
            "dataset_checksum": "d" * 24, "epoch_acc": [88.5, 90.0], "test_acc": 90.0, "best_test_acc": 90.0,
            "generation_acc": None, "wall_seconds": 1.25, "finished_at": "2024-01-01T00:00:00+00:00"}


def full_record(seed: int) -> dict:
    return {**record(), "budget": "full", "seed": seed, "options": {}, "train_images_per_second": 100.0,
            "device": "cpu", "gpu": None, "torch": "2", "workers": 1}


def bench(*argv: str) -> int:
    from bench.cli import main

    return main(list(argv))


def test_bench_replay_on_a_full_disk_keeps_the_results_database(disk, data, capsys):
    results = disk / "results"
    Store(results).add(record())
    before = files(results)
    leave_free(disk, 0)
    code = bench("replay", "--rows", "S9.baseline", "--budget", "smoke", "--device", "cpu", "--data", str(data),
                 "--results", str(results), "--results-file", str(disk / "full.jsonl"))
    assert_one_line(code, capsys.readouterr().err, results / "results.sqlite", prog="bench")
    free_all(disk)
    assert (results / "results.sqlite").read_bytes() == before["results.sqlite"]  # beside it: SQLite's -wal, -shm
    assert Store(results).records() == [record()]


def test_a_store_write_on_a_full_disk_is_rolled_back(disk):
    results = disk / "results"
    store = Store(results)
    store.add(record())
    leave_free(disk, 0)
    with pytest.raises(DiskFullError, match=f"^{FULL}{results / 'results.sqlite'}' "):
        store.add(record("S9.ema"))
    free_all(disk)
    assert Store(results).records() == [record()]


def test_appending_to_the_results_file_on_a_full_disk_leaves_the_file_as_it_was(disk):
    path = disk / "full.jsonl"
    first = full_record(0)
    first["options"] = {"pad": "x" * (PAGE - 100 - len(json.dumps(first, sort_keys=True)))}
    append_result(path, first)
    before = path.read_bytes()
    assert 0 < PAGE - len(before) < len(json.dumps(full_record(1)))  # the next line's first bytes fit on the page
    leave_free(disk, 0)
    with pytest.raises(DiskFullError, match=f"^{FULL}{path}' "):
        append_result(path, full_record(1))
    assert path.read_bytes() == before  # the part that was written is cut off again
    free_all(disk)
    assert read_results(path) == [first]
    append_result(path, full_record(1))
    assert read_results(path) == [first, full_record(1)]


def test_bench_report_on_a_full_disk_keeps_the_report(disk, tmp_path, capsys):
    results = disk / "results"
    Store(results)
    no_file = str(tmp_path / "none.jsonl")
    assert bench("report", "--results", str(results), "--results-file", no_file) == 0
    capsys.readouterr()
    before = files(results)
    assert "report.md" in before and any(name.endswith(".png") for name in before)
    leave_free(disk, 32 * 1024 + PAGE)  # SQLite's WAL index (-shm) to read the store, not a chart's temporary
    code = bench("report", "--results", str(results), "--results-file", no_file)
    err = capsys.readouterr().err
    first_chart = err.split(f"{results}/")[1].split("'")[0]
    assert first_chart.startswith("report-") and first_chart.endswith(".png")
    assert_one_line(code, err, results / first_chart, prog="bench")
    assert files(results) == before


def test_bench_report_readme_on_a_full_disk_keeps_the_readme(disk, tmp_path, capsys):
    results = tmp_path / "results"
    Store(results)
    readme = disk / "README.md"
    readme.write_text("# x\n<!-- full-budget:start -->\nold table\n<!-- full-budget:end -->\nend\n")
    before = readme.read_bytes()
    leave_free(disk, 0)
    code = bench("report", "--results", str(results), "--results-file", str(tmp_path / "none.jsonl"),
                 "--readme", str(readme))
    assert_one_line(code, capsys.readouterr().err, readme, prog="bench")
    assert readme.read_bytes() == before


# ---- the mode of what is written: what the umask gives a new file, not mkstemp's 0600 ----

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_files_written_have_the_mode_the_umask_gives(umask, mode, data, tmp_path, capsys, one_torch_thread):
    from bench.report import replace_between_markers

    previous = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert recipe(*run_args(data, out, 1)) == 0
        results = tmp_path / "results"
        Store(results).add(record())
        append_result(results / "full.jsonl", full_record(0))
        assert bench("report", "--results", str(results), "--results-file", str(results / "full.jsonl")) == 0
        readme = tmp_path / "README.md"
        readme.write_text("<!-- full-budget:start -->\n<!-- full-budget:end -->\n")
        readme.chmod(0o640)  # a file replaced keeps its own mode
        replace_between_markers(readme, "a table\n")
    finally:
        os.umask(previous)
    capsys.readouterr()
    written = sorted(out.iterdir()) + sorted(results.iterdir())
    names = {p.name for p in written}
    assert {"config.json", "metrics.csv", "model.pth", "result.json", "curves.png", "results.sqlite", "full.jsonl",
            "report.md"} <= names
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(mode) for p in written}
    assert stat.S_IMODE(readme.stat().st_mode) == 0o640 and "a table" in readme.read_text()


# ---- matplotlib with a HOME that cannot be written ----

def unwritable_home(tmp_path: Path) -> Path:
    """A HOME that cannot be written: a folder of mode 0o500, or as root (who writes there anyway) a path below a
    regular file."""
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    if not os.access(home, os.W_OK):
        return home
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "home"


def recipe_process(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(unwritable_home(tmp_path)), "MPLCONFIGDIR": "", "TMPDIR": str(tmp_path / "tmp"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    for k in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        env.pop(k, None)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "recipes.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


def test_a_run_with_a_read_only_home_prints_no_matplotlib_warning(data, tmp_path):
    proc = recipe_process(tmp_path, *run_args(data, tmp_path / "run", 1))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    folder = tmp_path / "tmp" / f"fastai-tricks-matplotlib-{os.getuid()}"  # kept: the font cache is built once
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and list(folder.glob("fontlist-*.json"))
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_bad_input_with_a_read_only_home_is_one_line(data, tmp_path):
    proc = recipe_process(tmp_path, *run_args(data, tmp_path / "run", 1)[:1], "baseline+mixupp",
                          *run_args(data, tmp_path / "run", 1)[2:])
    assert proc.returncode == 2
    assert proc.stderr == "recipe: error: unknown recipe term 'mixupp'; did you mean 'mixup', 'klmixup'?\n"
