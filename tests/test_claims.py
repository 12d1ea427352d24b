"""Two inputs may not write the same output: psfh.core.files.earlier_claimants and its users."""

from __future__ import annotations

from pathlib import Path

from psfh.batch.clips import plan_clips
from psfh.core.files import earlier_claimants


def test_the_first_source_keeps_a_target_and_later_ones_name_it(tmp_path):
    targets = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "A.png", None, tmp_path / "sub" / ".." / "b.png"]
    assert earlier_claimants(["1", "2", "3", "4", "5"], targets) == [None, None, "1", None, "2"]


def test_a_refused_item_claims_nothing(tmp_path):
    assert earlier_claimants(["x", "y"], [None, tmp_path / "a"]) == [None, None]


def test_two_clips_of_the_same_name_get_one_folder_and_a_refusal(tmp_path):
    for folder in ("day1", "day2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "loop.dcm").write_bytes(b"")
    clips = [tmp_path / "day1" / "loop.dcm", tmp_path / "day2" / "loop.dcm", tmp_path / "day1"]
    jobs = plan_clips(clips, tmp_path / "out")
    assert [job.folder for job in jobs] == [tmp_path / "out" / "loop", tmp_path / "out" / "loop", tmp_path / "out" / "day1"]
    assert jobs[0].refused is None and jobs[2].refused is None
    assert jobs[1].refused.startswith(f"{clips[1]}: its results folder {Path(tmp_path / 'out' / 'loop')} is already "
                                      f"that of {clips[0]}")
