"""`bench replay --budget smoke` over the whole table, as CI runs it: every replayable row trains once."""
from collections import Counter

from bench.replay import replay
from bench.store import Store
from bench.table import load_table
from fixtures import shared_cifar10_archive, write_cifar100


def test_smoke_replay_of_every_row(cifar10_jpeg, cifar10_jpeg_cache, tmp_path, monkeypatch):
    # CIFAR-10 rows read the shared archive (decoded once by the fixture); the CIFAR-100 row reads a
    # small fixture in the exact `cifar-100-python` format through TRICKS_DATA.
    monkeypatch.setenv("TRICKS_CACHE", str(cifar10_jpeg_cache))
    write_cifar100(tmp_path / "data" / "cifar100" / "cifar-100-python", n_train=200, n_test=200)
    monkeypatch.setenv("TRICKS_DATA", str(tmp_path / "data"))
    rows, _ = load_table()
    lines: list[str] = []
    counts = replay(rows, budget="smoke", seeds=1, workers=1, results_dir=tmp_path / "results",
                    data=str(shared_cifar10_archive()), device="cpu", progress=lines.append)
    replayable = [r.id for r in rows if r.status != "inexpressible"]
    assert counts["failed"] == 0, [line for line in lines if "failed" in line]
    assert counts["ran"] == len(replayable) and counts["skipped_inexpressible"] == len(rows) - len(replayable)
    stored = Counter(r["row_id"] for r in Store(tmp_path / "results").records("smoke"))
    assert set(stored) == set(replayable) and set(stored.values()) == {1}
