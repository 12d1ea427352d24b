"""psfh.io.dataset: finding and checking labelled data sets, grouped folds, and the pack."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, require_data
from PIL import Image

from psfh.core.errors import PSFHInputError
from psfh.io.dataset import (
    find_duplicate_images,
    find_samples,
    id_blocks,
    load_arrays,
    load_pack,
    make_folds,
    pack,
    validate_samples,
)
from psfh.cli.data import main
from psfh.io.images import load_image, load_label_map

REAL_IDS = ["03744", "04316", "04398"]  # 04316 and 04398 hold identical images


def synthetic_pair(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A size x size uint8 image and its label map with background, PS and FH."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size), dtype=np.uint8)
    label = np.zeros((size, size), np.uint8)
    label[2:8, 2:8] = 1
    label[12:28, 10:30] = 2
    return image, label


@pytest.fixture
def png_set(tmp_path) -> Path:
    """The png layout: images/ (mixed formats) + masks/, ids 9, 10, 11, 12."""
    root = tmp_path / "png_set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, id in enumerate(["9", "10", "11", "12"]):
        image, label = synthetic_pair(index)
        extension = [".png", ".bmp", ".tif", ".png"][index]
        Image.fromarray(image).save(root / "images" / f"{id}{extension}")
        Image.fromarray(label).save(root / "masks" / f"{id}.png")
    (root / "images" / "README.txt").write_text("notes are ignored")
    return root


@pytest.fixture
def published_set(tmp_path) -> Path:
    """The published layout with three real PSFHS pairs."""
    require_data()
    root = tmp_path / "published"
    for folder in ("image_mha", "label_mha"):
        (root / folder).mkdir(parents=True)
        for id in REAL_IDS:
            shutil.copy(DATA / folder / f"{id}.mha", root / folder)
    return root


def real_ids() -> list[str]:
    return sorted(path.stem for path in (require_data() / "image_mha").glob("*.mha"))


# --- finding samples -------------------------------------------------------------------------


def test_find_samples_png_layout_sorted_numerically(png_set):
    samples = find_samples(png_set)
    assert [s.id for s in samples] == ["9", "10", "11", "12"]
    assert samples[1].image_path == png_set / "images" / "10.bmp"
    assert samples[1].label_path == png_set / "masks" / "10.png"


def test_find_samples_published_layout(published_set):
    samples = find_samples(published_set)
    assert [s.id for s in samples] == REAL_IDS
    assert samples[0].label_path == published_set / "label_mha" / "03744.mha"


def test_not_a_data_set(tmp_path):
    (tmp_path / "images").mkdir()  # masks/ missing
    for root in (tmp_path / "missing", tmp_path):
        with pytest.raises(PSFHInputError, match="image_mha/ \\+ label_mha/") as caught:
            find_samples(root)
        assert str(root) in str(caught.value) and "images/ + masks/" in str(caught.value)
    (tmp_path / "masks").mkdir()
    with pytest.raises(PSFHInputError, match="no images in images/"):
        find_samples(tmp_path)


def test_unpaired_files_are_named(png_set):
    (png_set / "masks" / "12.png").unlink()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png_set / "masks" / "99.png")
    with pytest.raises(PSFHInputError) as caught:
        find_samples(png_set)
    message = str(caught.value)
    assert "1 image(s) without a label: images/12.png" in message
    assert "1 label(s) without an image: masks/99.png" in message


def test_many_unpaired_files_are_counted(png_set):
    for index in range(15):
        blank = Image.fromarray(np.zeros((32, 32), np.uint8))
        blank.save(png_set / "images" / f"{100 + index}.png")
    with pytest.raises(PSFHInputError, match=r"15 image\(s\) without a label: images/100\.png.*"
                                             r"images/109\.png, \.\.\. \(15 in all\)"):
        find_samples(png_set)


def test_same_id_twice_and_both_layouts(png_set):
    shutil.copy(png_set / "images" / "9.png", png_set / "images" / "9.tif")
    with pytest.raises(PSFHInputError, match="two files with the id '9'"):
        find_samples(png_set)
    (png_set / "images" / "9.tif").unlink()
    (png_set / "image_mha").mkdir()
    (png_set / "label_mha").mkdir()
    with pytest.raises(PSFHInputError, match="both data set layouts"):
        find_samples(png_set)


# --- checking and loading --------------------------------------------------------------------


def test_validate_summary(published_set):
    summary = validate_samples(find_samples(published_set), progress=False)
    assert summary["count"] == 3 and summary["sizes"] == {(256, 256): 3}
    assert 0 < summary["label_fraction"]["PS"] < summary["label_fraction"]["FH"] < 1
    assert summary["missing"] == {"PS": 0, "FH": 0}


def test_validate_collects_every_problem(png_set):
    (png_set / "images" / "9.png").write_text("not a png")  # unreadable
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(png_set / "masks" / "10.png")  # size
    bad_values = synthetic_pair(2)[1]
    bad_values[0, 0] = 3
    Image.fromarray(bad_values).save(png_set / "masks" / "11.png")
    with pytest.raises(PSFHInputError) as caught:
        validate_samples(find_samples(png_set), progress=False)
    message = str(caught.value)
    assert message.startswith("3 of 4 samples have problems")
    assert f"{png_set / 'images' / '9.png'}: cannot read the image file" in message
    assert f"{png_set / 'masks' / '10.png'}: label map is 24 x 16 (W x H)" in message
    assert f"{png_set / 'images' / '10.bmp'} is 32 x 32 (W x H)" in message
    assert f"{png_set / 'masks' / '11.png'} holds label values [3]" in message
    with pytest.raises(PSFHInputError, match="3 of 4 samples have problems"):
        load_arrays(find_samples(png_set), progress=False)


def test_load_arrays_real_pairs(published_set):
    ids, images, labels = load_arrays(find_samples(published_set), progress=False)
    assert ids == REAL_IDS
    assert images.shape == labels.shape == (3, 256, 256)
    assert images.dtype == labels.dtype == np.uint8
    np.testing.assert_array_equal(images[0], load_image(DATA / "image_mha" / "03744.mha").pixels)
    np.testing.assert_array_equal(labels[0], load_label_map(DATA / "label_mha" / "03744.mha"))


def test_load_arrays_resizes(png_set):
    ids, images, labels = load_arrays(find_samples(png_set), size=64, progress=False)
    assert images.shape == labels.shape == (4, 64, 64)
    assert set(np.unique(labels)) == {0, 1, 2}  # nearest neighbour: no blended classes
    np.testing.assert_array_equal(labels[0][::2, ::2], synthetic_pair(0)[1])  # exact 2x upsample
    with pytest.raises(PSFHInputError, match="size must be an integer of at least 8"):
        load_arrays(find_samples(png_set), size=4)


def test_load_arrays_needs_one_size_and_scales_deep_images(png_set):
    deep = (synthetic_pair(0)[0].astype(np.uint16) * 200) + 1000
    Image.fromarray(deep).save(png_set / "images" / "9.png")
    images = load_arrays(find_samples(png_set), progress=False)[1]
    assert images[0].min() == 0 and images[0].max() == 255
    image, label = synthetic_pair(0, size=40)
    Image.fromarray(image).save(png_set / "images" / "9.png")
    Image.fromarray(label).save(png_set / "masks" / "9.png")
    with pytest.raises(PSFHInputError, match=r"2 different sizes.*images/9\.png.*pass size="):
        load_arrays(find_samples(png_set), progress=False)


# --- folds -----------------------------------------------------------------------------------


def test_id_blocks_split_at_gaps_and_cut_long_runs():
    ids = [f"{i:05d}" for i in [*range(1, 6), *range(10, 55)]]  # runs of 5 and 45
    blocks = id_blocks(ids, block_size=20)
    assert [len(block) for block in blocks] == [5, 15, 15, 15]
    assert blocks[1][0] == "00010" and sum(blocks, []) == sorted(ids)
    assert [len(b) for b in id_blocks(["b", "a", "c"], block_size=2)] == [2, 1]  # one run


def test_folds_deterministic_complete_and_seeded():
    ids = real_ids()
    folds = make_folds(ids)
    assert folds == make_folds(list(reversed(ids)))
    assert set(folds) == set(ids) and set(folds.values()) == set(range(5))
    assert make_folds(ids, seed=1) != folds


def test_folds_on_the_real_ids_are_balanced_and_grouped():
    ids = real_ids()
    assert len(ids) == 1078
    folds = make_folds(ids)
    sizes = Counter(folds.values())
    mean = len(ids) / 5
    assert max(sizes.values()) - min(sizes.values()) <= 0.1 * mean, sizes

    # Neighbouring frames may sit in different folds only where id_blocks cut a run.
    blocks = id_blocks(ids)
    block_of = {id: index for index, block in enumerate(blocks) for id in block}
    present = set(ids)
    neighbours = [(id, f"{int(id) + 1:05d}") for id in ids if f"{int(id) + 1:05d}" in present]
    cuts = [(a, b) for a, b in neighbours if block_of[a] != block_of[b]]
    split = [(a, b) for a, b in neighbours if folds[a] != folds[b]]
    assert len(blocks) == 54 and len(cuts) == 46  # 6 runs of 160 -> 7 cuts, 80 -> 3, 38 -> 1
    assert set(split) <= set(cuts)
    assert len(split) == sum(folds[a] != folds[b] for a, b in cuts)
    assert len(split) < 0.05 * len(neighbours)  # a random split would separate ~80 %


def test_linked_ids_share_a_fold():
    ids = real_ids()
    linked = [["04316", "04398"], ["04943", "05000"], ["04959", "05012"]]
    folds = make_folds(ids, linked=linked)
    assert all(folds[a] == folds[b] for a, b in linked)
    with pytest.raises(PSFHInputError, match="linked ids not among the ids"):
        make_folds(ids, linked=[["04316", "99999"]])


def test_make_folds_refuses_bad_arguments():
    with pytest.raises(PSFHInputError, match="only 1 groups, too few for 5 folds"):
        make_folds([str(i) for i in range(10)])
    with pytest.raises(PSFHInputError, match="ids must be unique"):
        make_folds(["1", "1", "3"], n_folds=2, block_size=1)
    with pytest.raises(PSFHInputError, match="n_folds must be at least 2"):
        make_folds(["1", "3"], n_folds=1)
    with pytest.raises(PSFHInputError, match="block_size must be at least 1"):
        make_folds(["1", "3"], n_folds=2, block_size=0)


def test_find_duplicate_images(published_set):
    ids, images, _ = load_arrays(find_samples(published_set), progress=False)
    assert find_duplicate_images(ids, images) == [["04316", "04398"]]


# --- the pack --------------------------------------------------------------------------------


def test_pack_round_trip_without_pickles(png_set, tmp_path):
    out = pack(png_set, tmp_path / "set.npz", progress=False)
    ids, images, labels = load_pack(out)
    expected = load_arrays(find_samples(png_set), progress=False)
    assert ids == expected[0] == ["9", "10", "11", "12"]
    np.testing.assert_array_equal(images, expected[1])
    np.testing.assert_array_equal(labels, expected[2])
    with np.load(out, allow_pickle=False) as archive:  # plain np.load reads it too
        assert sorted(archive.files) == ["ids", "images", "labels"]
    with pytest.raises(PSFHInputError, match=r"set\.npz: file exists"):
        pack(png_set, out, progress=False)
    pack(png_set, out, overwrite=True, size=16, progress=False)
    assert load_pack(out)[1].shape == (4, 16, 16)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["png_set", "set.npz"]


def test_webp_pack_is_lossy_on_images_only_and_keeps_the_chosen_ids(published_set, tmp_path):
    samples = find_samples(published_set)
    chosen = [s.id for s in samples][1:]
    out = pack(published_set, tmp_path / "set.zip", ids=chosen, webp_quality=85, progress=False)
    ids, images, labels = load_pack(out)
    expected_ids, expected_images, expected_labels = load_arrays(
        [s for s in samples if s.id in chosen], progress=False)
    assert ids == expected_ids == chosen
    np.testing.assert_array_equal(labels, expected_labels)  # labels stay lossless
    error = images.astype(float) - expected_images
    psnr = 10 * np.log10(255**2 / np.mean(error**2))
    assert 35 < psnr < 80, psnr  # lossy, but close: the GPU bundle measured ~41 dB at quality 85
    lossless = pack(published_set, tmp_path / "lossless.zip", ids=chosen, progress=False)
    assert out.stat().st_size < lossless.stat().st_size
    with pytest.raises(PSFHInputError, match=r"1 id\(s\) not in the data set: \['nope'\]"):
        pack(published_set, tmp_path / "x.zip", ids=["nope"], progress=False)
    with pytest.raises(PSFHInputError, match="WebP quality must be 1-100"):
        pack(published_set, tmp_path / "y.zip", webp_quality=0, progress=False)


def test_load_pack_refuses_other_files(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 8, 8), np.uint8))
    np.savez(tmp_path / "odd.npz", ids=np.array(["a"]), images=np.zeros((2, 8, 8), np.uint8),
             labels=np.zeros((2, 8, 8), np.uint8))
    cases = {"missing.npz": "pack file not found", "text.npz": "cannot read the pack",
             "other.npz": "not a psfh pack", "odd.npz": "inconsistent pack"}
    for name, problem in cases.items():
        with pytest.raises(PSFHInputError, match=f"{name}: {problem}"):
            load_pack(tmp_path / name)


def test_command_line(png_set, tmp_path, capsys):
    assert main(["check", str(png_set)]) == 0
    assert "4 labelled images; sizes 32 x 32 (W x H): 4" in capsys.readouterr().out
    assert main(["pack", str(png_set), str(tmp_path / "set.npz")]) == 0
    assert "MB" in capsys.readouterr().out
    assert main(["pack", str(png_set), str(tmp_path / "set.npz")]) == 2
    assert "file exists" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nothing")]) == 2
