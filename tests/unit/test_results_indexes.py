"""`microtask indexes`: decoding the index sets a status holds."""

from __future__ import annotations

import io

import pytest
from microtask_operator import cli
from microtask_runner.indexset import IndexSet

SCATTERED = IndexSet.from_indexes(range(0, 30_000, 7))


def indexes(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["indexes", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "text", [SCATTERED.format(), SCATTERED.to_compact(), SCATTERED.to_packed()]
)
def test_every_form_decodes_to_plain_ranges(capsys, text: str):
    assert SCATTERED.to_compact().startswith("z:")
    code, out, _ = indexes(capsys, text)
    assert code == 0
    assert out == SCATTERED.format() + "\n"


def test_count_and_list(capsys):
    assert indexes(capsys, "0-9,17", "--count") == (0, "11\n", "")
    code, out, _ = indexes(capsys, "3-5,9", "--list")
    assert (code, out) == (0, "3\n4\n5\n9\n")


def test_a_long_range_lists_in_pieces(capsys):
    code, out, _ = indexes(capsys, "0-199999", "--list")
    assert code == 0
    lines = out.splitlines()
    assert (len(lines), lines[0], lines[-1]) == (200_000, "0", "199999")


def test_contains(capsys):
    assert indexes(capsys, "0-9,17", "--contains", "17") == (0, "yes\n", "")
    assert indexes(capsys, "0-9,17", "--contains", "12") == (1, "no\n", "")


def test_the_empty_set(capsys):
    assert indexes(capsys, "", "--count") == (0, "0\n", "")
    assert indexes(capsys, "") == (0, "\n", "")


def test_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(SCATTERED.to_compact() + "\n"))
    assert indexes(capsys, "-", "--count") == (0, f"{len(SCATTERED)}\n", "")


@pytest.mark.parametrize("text", ["1-", "5-2", "z:not-base64!", "d:AAAA", "a,b"])
def test_what_is_not_an_index_set_exits_2(capsys, text: str):
    code, out, err = indexes(capsys, text)
    assert (code, out) == (2, "")
    assert err.startswith("microtask indexes: bad")


def test_contains_wants_an_index(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["indexes", "0-9", "--contains", "-1"])
    assert exit_info.value.code == 2
