"""The shared plumbing: inference options, atomic writing, the CLIs' exit status for bad input."""

from __future__ import annotations

import os

import pytest

from psfh.core.errors import PSFHInputError
from psfh.core.files import atomic_target, format_cell, write_csv_atomic, write_text_atomic
from psfh.core.options import check_precision, first_folds, resolve_folds

FOLDS = ["fold_0", "fold_1", "fold_2"]


def test_fold_names_are_checked_in_one_place():
    assert resolve_folds(FOLDS) == FOLDS and resolve_folds(FOLDS, ["fold_2"]) == ["fold_2"]
    with pytest.raises(PSFHInputError, match=r"unknown folds \['fold_9'\]"):
        resolve_folds(FOLDS, ["fold_0", "fold_9"])
    with pytest.raises(PSFHInputError, match="no folds chosen"):
        resolve_folds(FOLDS, [])
    with pytest.raises(PSFHInputError, match="no fold adapters"):
        resolve_folds([], None)


def test_a_number_of_folds_picks_the_first_ones():
    assert first_folds(FOLDS, 2) == ["fold_0", "fold_1"]
    for bad in (0, 4, 1.5):
        with pytest.raises(PSFHInputError, match="number of folds must be from 1 to 3"):
            first_folds(FOLDS, bad)


def test_precision_is_fp32_or_bf16():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(PSFHInputError, match="fp32, bf16"):
        check_precision("fp16")


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "sub" / "result.json", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_target(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("the writer died")
    assert target.read_text() == "old\n"
    assert os.listdir(target.parent) == ["result.json"]


def test_csv_cells_are_written_alike(tmp_path):
    path = write_csv_atomic(tmp_path / "t.csv", ["a", "b", "c"], [{"a": 1 / 3, "b": None}, {"c": "x"}])
    assert path.read_text().splitlines() == ["a,b,c", "0.333333,,", ",,x"]
    assert format_cell(2.0) == "2" and format_cell(None) == ""


@pytest.mark.parametrize("command", [["psfh.cli.data", "check", "no/such/folder"],
                                     ["psfh.cli.cache_embeddings", "--data", "no/such/folder"]])
def test_every_cli_ends_bad_input_with_an_error_line_and_status_2(command, capsys):
    import importlib

    module = importlib.import_module(command[0])
    assert module.main(command[1:]) == 2
    assert capsys.readouterr().err.startswith("error: no/such/folder")
