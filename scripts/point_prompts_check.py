"""Would SAM point prompts let a user fix the head where a box does not? (issue 12; measured, not adopted.)

On some test exams (04964-04983 holds 13 of the 20 AoPs off by over 15 deg) the ensemble's head
ends at the visible edge where the expert completed the skull's curve, and a box around the head
does not change that. Here each test frame's head is re-segmented by the base's decoder (as the
product's "sam" box policy for the FH does) from a jittered ground-truth box (as
scripts/measure_correction.py makes it), then from the box plus one positive point where a user
would click to say "the head reaches here" (the expert head's pixel farthest from the ensemble's
head), then plus one negative point as well (the ensemble head's pixel farthest from the
expert's). These are oracle clicks: the best a user could place. The mean AoP error is reported
on all 100 frames, on the 20 bad ones and on the exam's 13.

The base embeddings come from the embedding cache (the frozen LiteMedSAM encoder, both flip
views; the identity view is what ``embed(..., for_prompts=True)`` keeps); the ensemble's label
maps from the members kept by scripts/cache_members.py.

    python scripts/point_prompts_check.py > docs/results/correction/point_prompts.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from cache_members import KEPT_SETS, fused_label_map, kept_frames  # noqa: E402
from calibrate_quality import BAD_AOP_ERROR_DEG  # noqa: E402
from measure_correction import jittered_box  # noqa: E402
from psfh import prompts  # noqa: E402
from psfh.measure.aop import measure_aop  # noqa: E402
from psfh.io.dataset import load_arrays  # noqa: E402
from psfh.core.labels import FH  # noqa: E402
from psfh.model.lora import make_lora_config  # noqa: E402
from psfh.model.psfh_model import PSFHModel  # noqa: E402
from psfh.training.embedding_cache import EmbeddingCache  # noqa: E402

EXAM = ("04964", "04983")  # the test exam that holds most bad AoPs (ids are zero-padded: compare as strings)


def farthest_pixel(inside: np.ndarray, away_from: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``inside`` farthest from ``away_from`` (both H x W bool)."""
    distance = ndimage.distance_transform_edt(~away_from) * inside
    y, x = np.unravel_index(np.argmax(distance), distance.shape)
    return int(x), int(y)


def prompted_head(sam, embedding: torch.Tensor, box: torch.Tensor, points: list[tuple[int, int]],
                  labels: list[int], size: tuple[int, int], input_size: int) -> np.ndarray:
    """The base decoder's H x W head mask from a box (1 x 1 x 4, model input) and image-pixel points."""
    kwargs = {}
    if points:
        scale = np.array([input_size / size[1], input_size / size[0]])
        kwargs = {"input_points": torch.tensor([[[(np.array(p) * scale).tolist() for p in points]]], dtype=torch.float32),
                  "input_labels": torch.tensor([[labels]])}
    with torch.no_grad():
        logits = sam(image_embeddings=embedding, input_boxes=box, multimask_output=False, **kwargs).pred_masks[0, 0, 0]
    return prompts.mask_from_logits(logits.float(), size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
    parser.add_argument("--jitter", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # A frozen-encoder model over the package's base: the cache serves only such models, and its
    # base (adapters off) is the decoder the product's box correction uses.
    model = PSFHModel.from_base("lite-medsam", ["fold_0"], make_lora_config(0, 16, decoder="whole"), device="cpu",
                                base_folder=args.package)
    frames = list(kept_frames(args.data, args.package, *KEPT_SETS["test"]))
    ids, images, labels = load_arrays([sample for sample, _ in frames], progress=False)
    embeddings = EmbeddingCache(model).build(ids, list(images))["identity"]
    rng = np.random.default_rng(args.seed)
    conditions = ("automatic", "box", "box + positive point", "box + positive + negative point")
    errors = {name: [] for name in conditions}
    in_exam = []
    with model._adapters_off():
        for n, (sample, members) in enumerate(frames):
            expert, size = labels[n], labels[n].shape
            automatic, _ = fused_label_map(members, size)
            truth = measure_aop(expert).angle_deg
            box = prompts.box_to_input(prompts.check_boxes({"fh": jittered_box(expert, FH, args.jitter, rng)}, size)[FH],
                                       size, model.config.input_size)
            expert_head, head = expert == FH, automatic == FH
            positive, negative = farthest_pixel(expert_head & ~head, head), farthest_pixel(head & ~expert_head, expert_head)
            prompt_sets = {"box": ([], []), "box + positive point": ([positive], [1]),
                           "box + positive + negative point": ([positive, negative], [1, 0])}
            errors["automatic"].append(abs(measure_aop(automatic).angle_deg - truth))
            embedding = embeddings[n][None].float()
            for name, (points, point_labels) in prompt_sets.items():
                mask = prompted_head(model.base_model, embedding, box, points, point_labels, size, model.config.input_size)
                angle = measure_aop(prompts.fuse(automatic, {FH: mask})).angle_deg
                errors[name].append(np.nan if angle is None else abs(angle - truth))
            in_exam.append(EXAM[0] <= sample.id <= EXAM[1])
    bad = np.array(errors["automatic"]) > BAD_AOP_ERROR_DEG
    exam_bad = bad & np.array(in_exam)
    print(f"test frames: {len(frames)}; AoP off by over {BAD_AOP_ERROR_DEG:.0f} deg: {bad.sum()}, "
          f"{exam_bad.sum()} of them in exam {EXAM[0]}-{EXAM[1]}; FH box jitter +-{args.jitter} px, seed {args.seed}")
    print("mean AoP error (deg): all frames / the bad ones / the exam's bad ones; frames still over 15 deg")
    for name in conditions:
        error = np.array(errors[name])
        print(f"  {name:32s} {np.nanmean(error):5.2f} / {np.nanmean(error[bad]):5.2f} / {np.nanmean(error[exam_bad]):5.2f}; "
              f"{(error > BAD_AOP_ERROR_DEG).sum()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
