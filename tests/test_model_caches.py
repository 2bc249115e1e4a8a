"""models/caches.py: where each model's cache is, read from the environment at every call with
the precedence of the tool that shares the cache (torch.hub, huggingface_hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from virnucpro.models import caches

VARIABLES = ("XDG_CACHE_HOME", "VIRNUCPRO_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
             "HF_HOME", "TORCH_HOME")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """No cache variable set, and HOME in a temporary folder."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path / "user"


@pytest.mark.parametrize("xdg", [None, "xdg"])
def test_every_default_is_under_the_cache_home(home, tmp_path, monkeypatch, xdg):
    if xdg:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / xdg))
    root = tmp_path / xdg if xdg else home / ".cache"
    assert caches.cache_home() == root
    assert caches.virnucpro_home() == root / "virnucpro"
    assert caches.hf_hub_cache() == root / "huggingface" / "hub"
    assert caches.torch_hub_checkpoints() == root / "torch" / "hub" / "checkpoints"


def test_each_tools_own_variable_wins(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("VIRNUCPRO_HOME", "~/mine")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert caches.virnucpro_home() == home / "mine"  # ~ expanded
    assert caches.torch_hub_checkpoints() == tmp_path / "torch" / "hub" / "checkpoints"
    assert caches.hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old_name"))
    assert caches.hf_hub_cache() == tmp_path / "old_name"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert caches.hf_hub_cache() == tmp_path / "hub"


def test_an_empty_variable_counts_as_unset(home, monkeypatch):
    for variable in VARIABLES:
        monkeypatch.setenv(variable, "")
    assert caches.virnucpro_home() == home / ".cache" / "virnucpro"
    assert caches.hf_hub_cache() == home / ".cache" / "huggingface" / "hub"


def test_dnabert_download_goes_where_the_loader_looks(home, tmp_path, monkeypatch):
    """huggingface_hub read its cache variables when it was imported; the download is told
    the cache the environment names now."""
    import huggingface_hub

    from virnucpro.models import download

    seen = {}

    def fake_snapshot_download(repo_id, cache_dir=None, **kwargs):
        seen["cache_dir"] = cache_dir
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    download.download_dnabert_s(lambda line: None)
    assert Path(seen["cache_dir"]) == tmp_path / "hf" / "hub"
