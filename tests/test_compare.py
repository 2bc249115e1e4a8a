"""`virnucpro compare A B`: agreement of two result folders of the same input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from virnucpro.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    sample = folder / "reads.fa"
    sample.write_text("\n".join(EXAMPLE.read_text().splitlines()[:120]) + "\n")
    out = folder / "a"
    assert main(["predict", str(sample), "-m", "300", "--demo", "-q", "--devices", "cpu", "-o", str(out),
                 "--save-embeddings"]) == 0
    return out


def rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def write_rows(path: Path, table: list[list[str]]) -> None:
    path.write_text("".join("\t".join(r) + "\n" for r in table))


def test_a_folder_agrees_with_itself(result, tmp_path, capsys):
    assert main(["compare", str(result), str(result), "--min-agreement", "1", "--json", str(tmp_path / "c.json")]) == 0
    figures = json.loads((tmp_path / "c.json").read_text())
    assert figures["frames"]["agreement"] == 1.0 and figures["score2_diff_max"] == 0.0
    assert figures["cosine"]["esm2"]["min"] == pytest.approx(1.0)
    assert "frames (virus/others)" in capsys.readouterr().out


def test_differences_are_counted_and_a_low_agreement_fails(result, tmp_path, capsys):
    other = tmp_path / "b"
    shutil.copytree(result, other)
    table = rows(other / "prediction_results.txt")
    header, body = table[0], table[1:]
    n = len(body)
    first = body[0]
    first[1] = "virus" if first[1] == "others" else "others"  # one label flipped
    first[3] = str(np.float32(float(first[3]) + 0.25))  # its score moved by 0.25
    dropped = body.pop(5)  # one frame only in A
    body[1], body[2] = body[2], body[1]  # out of order from here: matched by id
    write_rows(other / "prediction_results.txt", [header, *body])
    esm = np.load(other / "embeddings" / "esm2.npy")
    esm[3] = -esm[3]  # one embedding reversed: cosine -1
    np.save(other / "embeddings" / "esm2.npy", esm)
    assert main(["compare", str(result), str(other), "--json", str(tmp_path / "c.json")]) == 0
    figures = json.loads((tmp_path / "c.json").read_text())
    assert figures["frames"]["compared"] == n - 1 and figures["frames"]["only_in_a"] == 1
    assert figures["frames"]["agree"] == n - 2 and figures["frames"]["only_in_b"] == 0
    assert figures["score2_diff_max"] == pytest.approx(0.25, abs=1e-6)
    assert figures["cosine"]["esm2"]["min"] == pytest.approx(-1.0) and figures["cosine"]["dnabert_s"]["min"] == pytest.approx(1.0)
    assert dropped[0] not in (other / "prediction_results.txt").read_text()
    capsys.readouterr()
    assert main(["compare", str(result), str(other), "--min-agreement", "0.999"]) == 1
    assert "below --min-agreement" in capsys.readouterr().err


def test_a_folder_that_is_not_one_is_an_error(result, tmp_path, capsys):
    assert main(["compare", str(result), str(tmp_path / "nothing")]) == 2
    assert "not a result folder" in capsys.readouterr().err
