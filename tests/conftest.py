"""Shared fixtures: a private cache for the whole session, and the real CIFAR-10 JPEG archive decoded once."""
from __future__ import annotations

import pytest

from fixtures import shared_cifar10_archive


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """Point TRICKS_CACHE at a session temp dir so that no test writes to ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRICKS_CACHE", str(tmp_path_factory.mktemp("tricks-cache")))
    yield
    mp.undo()


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """A per-test cache dir in TRICKS_CACHE (returned) and no TRICKS_DATA."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRICKS_CACHE", str(cache))
    monkeypatch.delenv("TRICKS_DATA", raising=False)
    return cache


@pytest.fixture(scope="session")
def cifar10_jpeg_cache(tmp_path_factory):
    """The cache dir of `cifar10_jpeg` (its extracted archive and tensors file)."""
    return tmp_path_factory.mktemp("cifar10-jpeg-cache")


@pytest.fixture(scope="session")
def cifar10_jpeg(cifar10_jpeg_cache):
    """The shared `cifar10-jpeg.tar.gz` (60,000 JPEGs) loaded as 'cifar10', decoded once a session."""
    from tricks.data import load_dataset

    archive = shared_cifar10_archive()
    if not archive.is_file():
        pytest.skip(f"shared archive not found at {archive} (set TRICKS_SHARED to the shared folder)")
    return load_dataset("cifar10", archive, cache_dir=cifar10_jpeg_cache, download=False)


@pytest.fixture
def one_torch_thread():
    """One torch thread: tiny fits gain nothing from two, and lose much when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
