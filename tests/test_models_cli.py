"""`virnucpro models info` and `virnucpro models download`, without a network: the download
functions are replaced by fakes that write what the real servers would (or garbage), to pin
where files land, that nothing half-written is kept, and that a bad classifier is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from virnucpro.cli import main
from virnucpro.models import download as downloads


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("VIRNUCPRO_HOME", str(tmp_path / "home"))
    return tmp_path


def test_info_says_where_each_model_is_looked_for(caches, capsys, tiny_models):
    # a missing model is exit code 4 (issue 13.6; it was 0), so a script can check a node
    assert main(["models", "info", "-m", "300"]) == 4
    out = capsys.readouterr().out
    assert out.count("MISSING") == 3
    assert str(caches / "torch" / "hub" / "checkpoints" / "esm2_t36_3B_UR50D.pt") in out
    assert str(caches / "home" / "300_model.pth") in out and "zhihan1996/DNABERT-S" in out
    (caches / "home").mkdir()
    shutil.copy(tiny_models.classifier, caches / "home" / "300_model.pth")
    assert main(["models", "info", "-m", "300"]) == 4
    out = capsys.readouterr().out
    assert out.count("MISSING") == 2 and "missing: ESM-2 3B, DNABERT-S;" in out


def test_info_exits_0_when_every_model_is_there(caches, capsys, tiny_models):
    checkpoints = caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_models.esm, checkpoints / "esm2_t36_3B_UR50D.pt")
    repo = caches / "hf" / "hub" / "models--zhihan1996--DNABERT-S"
    shutil.copytree(tiny_models.dnabert, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (caches / "home").mkdir()
    shutil.copy(tiny_models.classifier, caches / "home" / "500_model.pth")
    assert main(["models", "info"]) == 0
    assert "MISSING" not in capsys.readouterr().out
    assert main(["models", "info", "-m", "300"]) == 4  # the 300 bp classifier is not there


def test_download_places_checked_files_in_the_caches(caches, monkeypatch, tiny_models):
    urls = []

    def fake_download(url, dest, progress=True):
        urls.append(url)
        source = tiny_models.esm if url == downloads.ESM2_URL else tiny_models.classifier
        shutil.copy(source, dest)

    monkeypatch.setattr(downloads.torch.hub, "download_url_to_file", fake_download)
    assert main(["models", "download", "--only", "esm", "--only", "classifier"]) == 0
    assert (caches / "torch" / "hub" / "checkpoints" / "esm2_t36_3B_UR50D.pt").is_file()
    assert sorted(p.name for p in (caches / "home").iterdir()) == ["300_model.pth", "500_model.pth"]
    assert downloads.ESM2_URL in urls and downloads.CLASSIFIER_URL.format(chunk_len=500) in urls
    # already present: nothing fetched again
    urls.clear()
    assert main(["models", "download", "--only", "classifier"]) == 0 and urls == []


def test_a_download_that_is_not_a_classifier_is_not_kept(caches, monkeypatch, capsys):
    def fake_download(url, dest, progress=True):
        Path(dest).write_bytes(b"<html>rate limited</html>")

    monkeypatch.setattr(downloads.torch.hub, "download_url_to_file", fake_download)
    assert main(["models", "download", "--only", "classifier"]) == 4
    assert "300_model.pth" in capsys.readouterr().err
    assert not (caches / "home").exists() or list((caches / "home").iterdir()) == []


def test_a_broken_connection_leaves_nothing(caches, monkeypatch, capsys):
    def fake_download(url, dest, progress=True):
        Path(dest).write_bytes(b"partial")
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(downloads.torch.hub, "download_url_to_file", fake_download)
    assert main(["models", "download", "--only", "esm"]) == 4
    err = capsys.readouterr().err
    assert "connection reset" in err and downloads.ESM2_URL in err
    assert list((caches / "torch" / "hub" / "checkpoints").iterdir()) == []
