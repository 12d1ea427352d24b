"""Many inputs with the single-process engine: manifests, the table written as rows arrive and put in
order at the end, --resume (psfh-predict and psfh-cine), and clips that would share a folder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES
from dicom_fixtures import write_cine
from PIL import Image

from psfh.batch.clips import plan_clips
from psfh.batch.predict import CSV_COLUMNS, ResultTable, plan_run, read_manifest
from psfh.cli.cine import main as cine_main
from psfh.cli.predict import main as predict_main
from psfh.core.errors import PSFHInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def test_a_manifest_lists_paths_in_a_column_or_one_a_line(tmp_path):
    (tmp_path / "sub").mkdir()
    with_header = tmp_path / "list.csv"
    with_header.write_text(f"id,path\n1,a.png\n2,sub/b.mha\n\n3,{tmp_path / 'c.png'}\n4,\n")
    assert read_manifest(with_header) == [tmp_path / "a.png", tmp_path / "sub" / "b.mha", tmp_path / "c.png"]
    plain = tmp_path / "sub" / "plain.txt"
    plain.write_text("x.png\n../y.png\n")
    assert read_manifest(plain) == [tmp_path / "sub" / "x.png", tmp_path / "sub" / "../y.png"]
    earlier_table = tmp_path / "aop.csv"  # an earlier run's table lists its inputs in "input"
    earlier_table.write_text("name,input,label_map\nq,q.png,out/q.png\n")
    assert read_manifest(earlier_table) == [tmp_path / "q.png"]

    wide = tmp_path / "wide.csv"
    wide.write_text("a.png,b.png\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("path\n\n")
    for manifest, message in [(wide, "line 1 has 2 cells"), (empty, "lists no files"),
                              (tmp_path / "missing.csv", "cannot read the manifest")]:
        with pytest.raises(PSFHInputError, match=message) as raised:
            read_manifest(manifest)
        assert str(manifest) in str(raised.value)


def test_the_table_keeps_rows_as_they_arrive_and_ends_in_the_inputs_order(tmp_path):
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"{name}.png")
    plan = plan_run([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"], tmp_path / "out")
    table = ResultTable(plan)
    for index in (2, 0):  # as a pool of workers finishes them
        table.add(index, {**dict.fromkeys(CSV_COLUMNS), "name": "abc"[index], "error": "x"})
    assert list(read_rows(plan.csv_path)) == ["c", "a"]  # an interrupted run keeps what it wrote
    table.add(1, {**dict.fromkeys(CSV_COLUMNS), "name": "b", "error": "x"})
    assert [row["name"] for row in table.finish()] == ["a", "b", "c"]
    assert list(read_rows(plan.csv_path)) == ["a", "b", "c"]


def test_predict_resume_redoes_only_what_is_missing(tiny_package, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((EXAMPLES / "image_mha").glob("*.mha"))[:2]:
        shutil.copy(path, folder / path.name)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60), dtype=np.uint8)).save(folder / "scan.png")
    (folder / "broken.png").write_text("not a PNG")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "\n".join(f"in/{name}" for name in ("03811.mha", "broken.png", "scan.png")) + "\n")
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), str(folder / "03970.mha"), "--out", str(out), "--model", str(tiny_package),
            "--device", "cpu", "--folds", "fold_0", "--no-tta"]

    assert predict_main(args) == 1  # broken.png
    first = read_rows(out / "aop.csv")
    assert list(first) == ["03970", "03811", "broken", "scan"]  # the inputs, then the manifest's, in order
    (out / "scan.png").unlink()
    capsys.readouterr()

    assert predict_main([*args, "--resume"]) == 1
    assert "resuming: 2 of 4 images were done by an earlier run" in capsys.readouterr().err
    second = read_rows(out / "aop.csv")
    assert list(second) == list(first) and (out / "scan.png").is_file()
    assert [name for name in first if first[name] != second[name]] == ["broken", "scan"]  # tried again
    assert second["broken"]["error"] and not second["scan"]["error"]

    assert predict_main(args) == 1  # without --resume everything is predicted again
    third = read_rows(out / "aop.csv")
    assert all(third[name]["seconds"] != second[name]["seconds"] for name in ("03970", "03811"))


def test_resume_refuses_a_table_that_is_not_psfhs(tmp_path, tiny_package, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "aop.csv").write_text("patient,angle\n1,120\n")
    assert predict_main([str(image), "--out", str(tmp_path / "out"), "--model", str(tiny_package), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "out" / "aop.csv") in err and "not a psfh-predict table" in err


def test_clips_that_would_share_a_folder_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write_cine(tmp_path / "a" / "clip.dcm", count=2), write_cine(tmp_path / "b" / "clip.dcm", count=2)
    jobs = plan_clips([first, second], tmp_path / "out")
    assert jobs[0].folder == tmp_path / "out" / "clip" and jobs[0].refused is None
    assert "already that of" in jobs[1].refused and str(second) in jobs[1].refused


def test_cine_resume_skips_finished_clips(tiny_package, tmp_path, capsys):
    clip = write_cine(tmp_path / "labour.dcm", count=2)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    args = [str(clip), str(broken), "--out", str(tmp_path / "out"), "--model", str(tiny_package), "--device", "cpu",
            "--folds", "fold_0", "--no-tta"]
    assert cine_main(args) == 1
    assert "broken.mp4" in capsys.readouterr().err
    frames = (tmp_path / "out" / "labour" / "frames.csv").read_bytes()
    assert cine_main([*args, "--resume"]) == 1
    captured = capsys.readouterr()
    assert f"{clip}: done by an earlier run; skipped" in captured.out and "broken.mp4" in captured.err
    assert (tmp_path / "out" / "labour" / "frames.csv").read_bytes() == frames  # not written again
