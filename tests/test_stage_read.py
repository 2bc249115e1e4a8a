"""read_records / find_duplicate_ids: formats, line endings, Biopython parity, every error."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import pytest

import virnucpro.stages.read as read_module
from virnucpro.errors import InputError
from virnucpro.stages.read import MASK64, IdTally, find_duplicate_ids, read_records
from virnucpro.stages.types import Record

FASTA = ">r1 first read\nACGTacgt\nNNUU\n>r2\nGGG\n>empty desc\n>r3\tx\nTTTT\n"
EXPECTED = [Record("r1", "ACGTacgtNNUU"), Record("r2", "GGG"), Record("empty", ""), Record("r3", "TTTT")]


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _records(path: Path) -> list[Record]:
    return list(read_records(path))


# --------------------------------------------------------------------------- formats


def test_plain_fasta(tmp_path: Path) -> None:
    assert _records(_write(tmp_path / "x.fa", FASTA)) == EXPECTED


def test_accepts_str_path(tmp_path: Path) -> None:
    assert _records(str(_write(tmp_path / "x.fa", FASTA))) == EXPECTED


def test_gzip_detected_by_magic_not_extension(tmp_path: Path) -> None:
    gz_named_fa = _write(tmp_path / "reads.fa", gzip.compress(FASTA.encode()))
    plain_named_gz = _write(tmp_path / "reads.fa.gz", FASTA)
    assert _records(gz_named_fa) == EXPECTED
    assert _records(plain_named_gz) == EXPECTED


def test_fastq_plain_and_gzip(tmp_path: Path) -> None:
    fastq = "@q1 desc\nACGTN\n+\nIIIII\n@q2\nGG\n+q2\n@I\n"
    expected = [Record("q1", "ACGTN"), Record("q2", "GG")]
    assert _records(_write(tmp_path / "a.fq", fastq)) == expected
    assert _records(_write(tmp_path / "a.fq.gz", gzip.compress(fastq.encode()))) == expected


def test_fastq_multiline_and_at_sign_quality(tmp_path: Path) -> None:
    """Quality lines may start with '@': the record ends only when the quality is complete."""
    fastq = "@a\nTGGG\nAAGC\n+\nIIII\n@I@I\n@b\nAC\n+\n@@\n"
    assert _records(_write(tmp_path / "a.fq", fastq)) == [Record("a", "TGGGAAGC"), Record("b", "AC")]


def test_crlf_and_lone_cr_line_endings(tmp_path: Path) -> None:
    crlf = _write(tmp_path / "crlf.fa", FASTA.replace("\n", "\r\n"))
    old_mac = _write(tmp_path / "cr.fa", FASTA.replace("\n", "\r"))
    assert _records(crlf) == EXPECTED
    assert _records(old_mac) == EXPECTED
    fastq = "@q1\r\nACGT\r\n+\r\nIIII\r\n"
    assert _records(_write(tmp_path / "crlf.fq", fastq)) == [Record("q1", "ACGT")]


def test_whitespace_inside_sequence_lines_is_removed(tmp_path: Path) -> None:
    path = _write(tmp_path / "ws.fa", ">a\nAC GT\tAC  \r\n\n  gg\n")
    assert _records(path) == [Record("a", "ACGTACgg")]


def test_empty_file_and_leading_blank_lines(tmp_path: Path) -> None:
    assert _records(_write(tmp_path / "empty.fa", "")) == []
    assert _records(_write(tmp_path / "blank.fa", "\n  \n" + FASTA)) == EXPECTED


def test_a_header_without_an_id_is_refused_naming_its_line(tmp_path: Path) -> None:
    """Biopython would give the record the id '' (and every result row would be named
    '_chunk_1F1'); a deliberate difference: an error naming the line."""
    with pytest.raises(InputError, match=r"e\.fa: line 3: a header with no id"):
        _records(_write(tmp_path / "e.fa", ">a\nACG\n>  \nT\n"))
    with pytest.raises(InputError, match=r"e\.fq: line 5: a header with no id"):
        _records(_write(tmp_path / "e.fq", "@a\nAC\n+\nII\n@\nAC\n+\nII\n"))


def test_streams_records_before_reading_the_rest(tmp_path: Path) -> None:
    """Records come out one by one: a fault late in the file surfaces only when reached."""
    # Text is decoded in blocks of a few kB: put the fault well beyond the first block.
    many = "".join(f">r{i}\n{'ACGT' * 250}\n" for i in range(200))
    path = _write(tmp_path / "late.fa", many.encode() + b">bad\nAC\xff\n")
    records = read_records(path)
    assert next(records) == Record("r0", "ACGT" * 250)
    with pytest.raises(InputError, match="not UTF-8"):
        list(records)


# --------------------------------------------------------------------------- Biopython parity


def _messy_fasta(rng: random.Random) -> str:
    """A FASTA text with the oddities Biopython has rules for."""
    lines = []
    for i in range(rng.randint(1, 12)):
        title = rng.choice([f"id{i} some text", f"id{i}", f"  id{i}\t tabbed ", f"id{i}  "])
        lines.append(">" + title)
        for _ in range(rng.randint(0, 4)):
            body = "".join(rng.choice("ACGTNacgtnRYU \t") for _ in range(rng.randint(0, 70)))
            lines.append(body + rng.choice(["", " ", "\t", "  \t"]))
            if rng.random() < 0.2:
                lines.append(rng.choice(["", "   ", "\t"]))
    ending = rng.choice(["\n", "\r\n", "\r"])
    return ending.join(lines) + rng.choice([ending, ""])


def test_fasta_matches_biopython_parser(tmp_path: Path) -> None:
    SeqIO = pytest.importorskip("Bio.SeqIO")
    rng = random.Random(7)
    for case in range(200):
        path = _write(tmp_path / f"m{case}.fa", _messy_fasta(rng))
        expected = [Record(r.id, str(r.seq)) for r in SeqIO.parse(path, "fasta")]
        assert _records(path) == expected, path.read_bytes()


def test_fastq_matches_biopython_parser(tmp_path: Path) -> None:
    QualityIO = pytest.importorskip("Bio.SeqIO.QualityIO")
    text = (
        "@071113_EAS56_0053:1:1:998:236\nTTTCTTGCCCCCATAGACTG\n+071113_EAS56_0053:1:1:998:236\n"
        "IIIIIIIIIIIIIIIII+II\n@x:182:712 more\nACCCAGCTAATTTTTGTATT\n+\n@IIIIIIIIIIICDIIIII<\n"
        "@y\nTGGGAGGTTTTATGTGGA\nAAGCAGCAATGTACAAGA\n+\nIIIIIII.IIIIII1@44\n@-7.%<&+/$/%4(++(%\n"
    )
    path = _write(tmp_path / "tricky.fq", text)
    with open(path) as handle:
        expected = [Record(t.split()[0], s) for t, s, _ in QualityIO.FastqGeneralIterator(handle)]
    assert _records(path) == expected


# --------------------------------------------------------------------------- errors


def _assert_input_error(path: Path, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        _records(path)
    message = str(caught.value)
    assert str(path) in message
    assert fragment in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    _assert_input_error(tmp_path / "nope.fa", "no such file")


def test_directory(tmp_path: Path) -> None:
    _assert_input_error(tmp_path, "directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "locked.fa", FASTA)
    path.chmod(0)
    _assert_input_error(path, "permission denied")


def test_unreadable_file_simulated(tmp_path: Path, monkeypatch) -> None:
    """The same path for root, who ignores file modes: make open() refuse."""
    path = _write(tmp_path / "locked.fa", FASTA)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(read_module, "open", refuse, raising=False)
    _assert_input_error(path, "permission denied")


def test_binary_file(tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path / "bin.fa", b">a\nAC\x00\x01GT\n"), "binary")


def test_not_utf8_text(tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path / "latin.fa", b">a\xe9\xff\nACGT\n"), "not UTF-8")


def test_not_fasta_or_fastq(tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path / "x.fa", "\nhello world\n>a\nACGT\n"), "not FASTA or FASTQ")
    _assert_input_error(_write(tmp_path / "x.csv", "id,seq\na,ACGT\n"), "not FASTA or FASTQ")


def test_non_ascii_sequence(tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path / "u.fa", ">a\nACGTé\n"), "non-ASCII")


def test_truncated_fastq(tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path / "t1.fq", "@a\nACGT\n"), "truncated FASTQ")
    _assert_input_error(_write(tmp_path / "t2.fq", "@a\nACGT\n+\nII"), "truncated FASTQ")


def test_malformed_fastq(tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path / "m1.fq", "@a\nACGT\n+\nIIIIII\n"), "4 bases but 6")
    _assert_input_error(_write(tmp_path / "m2.fq", "@a\nACGT\n+b\nIIII\n"), "malformed FASTQ")
    _assert_input_error(_write(tmp_path / "m3.fq", "@a\nAC GT\n+\nIIII\n"), "malformed FASTQ")
    _assert_input_error(_write(tmp_path / "m4.fq", "@a\nACGT\n+\nIIII\nACGT\n"), "malformed FASTQ")


def test_corrupt_gzip(tmp_path: Path) -> None:
    packed = gzip.compress((FASTA * 2000).encode())
    _assert_input_error(_write(tmp_path / "cut.fa.gz", packed[: len(packed) // 2]), "gzip")
    garbage = packed[:20] + bytes(random.Random(1).randrange(256) for _ in range(500))
    _assert_input_error(_write(tmp_path / "bad.fa.gz", garbage), "gzip")


def test_other_compression_named(tmp_path: Path) -> None:
    _assert_input_error(_write(tmp_path / "x.fa.bz2", b"BZh91AY&SY" + b"\x00" * 20), "bzip2")


# --------------------------------------------------------------------------- duplicate ids


def test_find_duplicate_ids_fasta(tmp_path: Path) -> None:
    text = ">b one\nAC\n>a\nGG\n>b two\nTT\n>c\n>a x\nA\n>a\nC\n"
    assert find_duplicate_ids(_write(tmp_path / "d.fa", text))[0] == ["a", "b"]
    assert find_duplicate_ids(_write(tmp_path / "d.fa.gz", gzip.compress(text.encode())))[0] == ["a", "b"]
    assert find_duplicate_ids(_write(tmp_path / "u.fa", FASTA))[0] == []
    assert find_duplicate_ids(_write(tmp_path / "e.fa", ""))[0] == []


def test_find_duplicate_ids_fastq(tmp_path: Path) -> None:
    text = "@q\nAC\n+\n@I\n@r\nA\n+\nI\n@q x\nG\n+\nI\n"
    assert find_duplicate_ids(_write(tmp_path / "d.fq", text))[0] == ["q"]


def test_find_duplicate_ids_errors_name_the_file(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.fa", _write(tmp_path / "t.txt", "text\n")):
        with pytest.raises(InputError, match=str(path)):
            find_duplicate_ids(path)


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_header_scan_agrees_with_parser_across_block_edges(tmp_path: Path, monkeypatch, block) -> None:
    """The fast block scanner must see exactly the parser's ids, wherever blocks split."""
    monkeypatch.setattr(read_module, "_SCAN_BLOCK", block)
    rng = random.Random(block)
    for case in range(30):
        path = _write(tmp_path / f"s{case}.fa", _messy_fasta(rng))
        ids = [record.id for record in read_records(path)]
        assert list(read_module._header_ids(path)) == ids
        expected = sorted({i for i in ids if ids.count(i) > 1})
        duplicates, tally = find_duplicate_ids(path)
        assert duplicates == expected
        # the tally a second pass over the records must find again if the file is unchanged
        assert tally == IdTally(len(ids), sum(hash(i) for i in ids) & MASK64)
