"""docs/RELIABILITY.md and its script (issue 31.5): the script runs here in its reduced form
(a tiny-random package, fewer inputs), and the committed document must be the rendering of the
committed results, so no number in it is written by hand.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "results" / "reliability" / "measure_reliability.py"
# Bad files psfh itself refuses, with a message that names the file.
REFUSED_BY_PSFH = ["constant.png", "black.png", "tiny_3x3.png", "unreadable.png", "truncated.png", "empty.png",
                   "nan.mha", "volume_3d.mha", "volume_4_slices.mha", "bomb.png"]
REFUSED_BY_GRADIO = ["animation.gif", "program.exe"]  # the upload's file-type check, before psfh


@pytest.fixture(scope="module")
def reliability():
    spec = importlib.util.spec_from_file_location("measure_reliability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reduced(reliability, tmp_path_factory, app_outputs):
    folder = tmp_path_factory.mktemp("reliability")
    result = reliability.main(["--reduced", "--fuzz-every", "0", "--out", str(folder / "r.json"),
                               "--doc", str(folder / "R.md")])
    return result, folder


def test_the_reduced_run_classifies_every_input_and_nothing_crashes(reduced):
    result, _ = reduced
    rows = {row["name"]: row for row in result["inputs"]}
    assert [row["name"] for row in result["inputs"] if row["outcome"] == "crashed"] == []
    for name in REFUSED_BY_PSFH:
        assert rows[name]["outcome"] == "refused", rows[name]
        assert rows[name]["detail"].startswith(name.split(".")[0]), rows[name]  # the message names the file
    for name in REFUSED_BY_GRADIO:
        assert rows[name]["outcome"] == "refused" and "Invalid file type" in rows[name]["detail"]
    # The tiny-random package's outlines are garbage: every image it segments must be flagged.
    segmented = [row for row in result["inputs"] if row["group"] != "bad files"]
    assert segmented and all(row["outcome"] == "flagged" for row in segmented), segmented
    assert all(row["seconds"] > 0 for row in result["inputs"])
    assert result["command"] == "python docs/results/reliability/measure_reliability.py --reduced --fuzz-every 0"


def test_the_document_is_written_from_the_results(reliability, reduced):
    result, folder = reduced
    written = json.loads((folder / "r.json").read_text())
    document = (folder / "R.md").read_text()
    assert document == reliability.render(written)
    bad = [row for row in written["inputs"] if row["group"] == "bad files"]
    refused = sum(row["outcome"] == "refused" for row in bad)
    flagged = sum(row["outcome"] == "flagged" for row in bad)
    seconds = [row["seconds"] for row in bad]
    assert (f"| bad files (API) | {len(bad)} | {refused} | {flagged} | 0 | 0 | - | 0 | "
            f"{sum(seconds):.1f}, {max(seconds):.1f} |") in document
    assert "| `nan.mha` | float pixels with NaN | refused |" in document


def test_the_committed_document_is_the_rendering_of_the_committed_results(reliability):
    committed = json.loads((SCRIPT.parent / "reliability.json").read_text())
    assert (ROOT / "docs" / "RELIABILITY.md").read_text() == reliability.render(committed)
    assert "--reduced" not in committed["command"] and committed["fuzz_every"] == 1
    files = {row["group"]: row["files"] for row in committed["fuzz"]}
    assert files == {"fuzzed DICOMs": 200, "fuzzed videos": 50}
    assert len(committed["inputs"]) >= 30


@pytest.mark.slow  # the fuzz workers import the demo (gradio, torch) in their own processes
def test_the_reduced_run_reads_every_tenth_fuzz_file_without_a_crash(reliability, tmp_path, app_outputs):
    result = reliability.main(["--reduced", "--fuzz-every", "10", "--out", str(tmp_path / "r.json"),
                               "--doc", str(tmp_path / "R.md")])
    rows = {row["group"]: row for row in result["fuzz"]}
    assert rows["fuzzed DICOMs"]["files"] == 20 and rows["fuzzed videos"]["files"] == 5
    for row in rows.values():
        assert row["crashed"] == 0 and row["problems"] == [], row
        assert row["read"] + row["refused"] == row["files"]
    assert "| fuzzed DICOMs (upload) | 20 |" in (tmp_path / "R.md").read_text()
