"""train.py --distil-from: one student adapter distilled from a package's fold ensemble."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, tiny_train_args as tiny_args

import train
from psfh.model.psfh_model import PSFHModel
from psfh.training.batch_augment import AugmentRanges, BatchAugmentation
from psfh.training.loss import distillation_loss, segmentation_loss
from psfh.training.sources import ImageSource


@pytest.mark.slow  # trains a tiny teacher and a tiny student (about 20 s)
def test_a_student_is_one_adapter_on_every_frame_that_loads_and_predicts(small_dataset, tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    assert train.main(tiny_args(small_dataset, teacher, "--epochs", "1")) == 0
    from psfh.training import student as student_module

    made = []
    original = student_module.teacher_probabilities
    monkeypatch.setattr(train, "teacher_probabilities", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    out = tmp_path / "student"
    assert train.main(tiny_args(small_dataset, out, "--epochs", "2", "--augment-on", "device",
                                "--distil-from", str(teacher), "--distil-weight", "0.7")) == 0
    soft = made[0]
    size = PSFHModel.from_pretrained(teacher, device="cpu", folds=[]).config.input_size  # tiny-random: 64
    assert soft.shape == (8, 3, size, size) and soft.dtype == torch.float16
    torch.testing.assert_close(soft.float().sum(1), torch.ones(8, size, size), atol=2e-3, rtol=0)
    # the soft labels are the teacher's ensemble (both folds x flip) of the frame as the product runs it
    model_teacher = PSFHModel.from_pretrained(teacher, device="cpu")
    first = train.load_arrays(train.select_samples(train.find_samples(small_dataset), None, 1), progress=False)[1][0]
    members = model_teacher.fold_probabilities(model_teacher.preprocess(first), folds=model_teacher.folds, tta=True)
    assert members.shape[:2] == (2, 2)
    torch.testing.assert_close(soft[0].float(), members.flatten(0, 1).mean(0), atol=2e-3, rtol=0)

    student = PSFHModel.from_pretrained(out, device="cpu")
    assert student.folds == ["student"] and student.default_adapters == ["student"] and student.soup is None
    result = student.predict(EXAMPLES / "image_mha" / "03811.mha")
    assert result.label_map.shape == (256, 256) and set(np.unique(result.label_map)) <= {0, 1, 2}
    config = json.loads((out / "psfh_config.json").read_text())
    assert config["training"]["student"]["teacher_adapters"] == ["fold_0", "fold_1"]
    assert config["training"]["student"]["distil_weight"] == 0.7
    assert config["training"]["recipe"]["distil_weight"] == 0.7
    metrics = json.loads((out / "student" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["best_epoch"] == 2, "the last epoch is kept"
    assert json.loads((out / "folds.json").read_text())["fold_of_id"] == {}, "no frame was held out"


def test_soft_labels_move_with_image_and_labels():
    labels = torch.zeros(16, 64, 64, dtype=torch.long)
    labels[:, 20:30, 12:24] = 1
    labels[:, 36:56, 30:54] = 2
    images = (labels * 100).byte().numpy()
    source = ImageSource(images, labels.byte(), 64, [0.0] * 3, [1.0] * 3,
                         BatchAugmentation(AugmentRanges(noise_prob=0, smooth_prob=0)), device="cpu")
    one_hot = torch.nn.functional.one_hot(source.labels.long(), 3).permute(0, 3, 1, 2).half()
    source.set_soft_labels(one_hot)
    _, targets = source.batch(torch.arange(16), torch.Generator().manual_seed(2), augment=True)
    assert targets.shape == (16, 4, 64, 64)
    classes, soft = targets[:, 0], targets[:, 1:]
    assert torch.equal(classes, classes.round()) and set(classes.unique().tolist()) <= {0.0, 1.0, 2.0}
    torch.testing.assert_close(soft.sum(1), torch.ones(16, 64, 64), atol=1e-3, rtol=0)
    assert (soft.argmax(1) == classes.long()).float().mean() > 0.98, "the soft labels moved with the expert's"
    assert not torch.equal(classes.long(), source.labels.long()), "the batch was augmented"
    # validation batches carry the expert's classes only
    _, plain = source.batch(torch.arange(16), None, augment=False)
    assert plain.shape == (16, 64, 64)


def test_distillation_loss_mixes_the_expert_and_the_teacher():
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    classes = torch.randint(0, 3, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    teacher = torch.softmax(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)), 1)
    targets = torch.cat([classes.float(), teacher], 1)
    ground_truth = segmentation_loss()
    soft_ce = -(teacher * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(distillation_loss(ground_truth, 0.0)(logits, targets), ground_truth(logits, classes))
    torch.testing.assert_close(distillation_loss(ground_truth, 1.0)(logits, targets), soft_ce)
    torch.testing.assert_close(distillation_loss(ground_truth, 0.25)(logits, targets),
                               0.75 * ground_truth(logits, classes) + 0.25 * soft_ce)


@pytest.mark.parametrize("extra", [["--distil-from", "TEACHER"],  # the MONAI (cpu) augmentation cannot move soft labels
                                   ["--distil-from", "TEACHER", "--augment-on", "device", "--fold", "0"],
                                   ["--distil-from", "TEACHER", "--augment-on", "device", "--distil-weight", "1.5"],
                                   ["--distil-weight", "0.5"],
                                   ["--distil-from", "TEACHER", "--augment-on", "device", "--no-augment"],
                                   # a student starts from a named adapter of the package, or from scratch
                                   ["--distil-from", "TEACHER", "--augment-on", "device", "--init-adapters", "TEACHER"],
                                   ["--init-from", "fold_0"]])
def test_bad_student_options_are_refused_before_any_work(small_dataset, tiny_package, tmp_path, extra, capsys):
    extra = [str(tiny_package) if e == "TEACHER" else e for e in extra]
    assert train.main(tiny_args(small_dataset, tmp_path / "never", *extra)) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "never").exists()
