from bench.cli import main
from fixtures import write_cifar10


def test_bench_load_times_decode_and_cached_load(tmp_path, capsys):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar10(root)
    assert main(["load", "--dataset", "cifar10", "--data", str(root), "--repeat", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cifar10 from ") and lines[1].startswith("decode (cold cache): ")
    assert lines[2].startswith("cached load (best of 2): ") and lines[3].startswith("cached / decode: ")


def test_bench_load_missing_data_is_one_line_exit_2(tmp_path, capsys):
    assert main(["load", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: data path ") and err.count("\n") == 1
