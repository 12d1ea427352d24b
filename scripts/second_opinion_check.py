"""Would a second, independently trained model catch the bad AoPs? (issue 12; measured, not adopted.)

The second opinion is the CPU recipe's model: the frozen LiteMedSAM encoder (no LoRA) with the whole
mask decoder trained on fold 0's training frames (``scripts/cpu_ablation.py --variant
b_whole_decoder``; its best epoch, read from the checkpoint it leaves under ~/.cache/psfh/ablation).
The shipped package's encoder has LoRA adapters and its decoder only LoRA, so the two differ in
encoder features, decoder weights and training frames. Each frame is segmented by both, as
PSFHModel.predict does (both flip views, soft ensemble, largest components; the shipped package's
from the members kept by scripts/cache_members.py), and the AoP gap between them is ranked against
the shipped AoP's error: on fold 0's out-of-fold frames (the only ones that model did not train on)
and on the 100 test frames.

    python scripts/cpu_ablation.py --variant b_whole_decoder     # once: 12 epochs, about an hour
    python scripts/second_opinion_check.py > docs/results/quality/second_opinion.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cache_members import KEPT_SETS, fused_label_map, kept_frames  # noqa: E402
from calibrate_quality import BAD_AOP_ERROR_DEG, rank_candidate  # noqa: E402
from psfh.measure.aop import measure_aop  # noqa: E402
from psfh.io.dataset import load_arrays  # noqa: E402
from psfh.model.lora import make_lora_config  # noqa: E402
from psfh.model.psfh_model import PSFHModel  # noqa: E402
from psfh.model.package import read_fold_assignment  # noqa: E402
from psfh.training.checkpoint import load_checkpoint  # noqa: E402
from psfh.training.embedding_cache import EmbeddingCache, cache_root  # noqa: E402
from psfh.training.loop import trainable_parameters  # noqa: E402

FOLD = "fold_0"


def second_model(package: Path) -> PSFHModel:
    """The CPU-recipe fold-0 model of the ablation, with its best epoch's weights."""
    checkpoint = cache_root() / "ablation" / "b_whole_decoder" / FOLD
    state = load_checkpoint(checkpoint)
    if state is None:
        raise SystemExit(f"no checkpoint in {checkpoint}: run scripts/cpu_ablation.py --variant b_whole_decoder first")
    model = PSFHModel.from_base("lite-medsam", [FOLD], make_lora_config(0, 16, decoder="whole"), device="cpu",
                                base_folder=package)
    model.network.set_adapter(FOLD)
    params = trainable_parameters(model.network)
    with torch.no_grad():
        for name, value in state[2].items():  # the best epoch's trainable weights
            params[name].copy_(value)
    model.network.eval()
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
    args = parser.parse_args()
    folds = read_fold_assignment(args.package)
    model = second_model(args.package)
    for title, kept_set in KEPT_SETS.items():
        frames = [(sample, members) for sample, members in kept_frames(args.data, args.package, *kept_set)
                  if kept_set[0] == "all" or folds.get(sample.id) == FOLD]
        ids, images, labels = load_arrays([sample for sample, _ in frames], progress=False)
        embeddings = EmbeddingCache(model).build(ids, list(images))  # the base's: the second model has no encoder LoRA
        rows = []
        for n, (sample, members) in enumerate(frames):
            shipped, _ = fused_label_map(members, labels[n].shape)
            views = torch.stack([embeddings[view][n] for view in embeddings]).float()
            with torch.no_grad():
                second = model.finish(model.fold_probabilities_from_embeddings(views, [FOLD], tta=True),
                                      labels[n].shape, [FOLD], True, name=ids[n]).label_map
            angles = [measure_aop(m).angle_deg for m in (labels[n], shipped, second)]
            if None not in angles:
                rows.append((sample.id, *angles))
        truth, shipped, second = (np.array([row[k] for row in rows]) for k in (1, 2, 3))
        error, gap = np.abs(shipped - truth), np.abs(shipped - second)
        bad = error > BAD_AOP_ERROR_DEG
        print(f"{title} ({len(rows)} frames{', fold 0 only' if kept_set[0] == 'oof' else ''}): AoP error mean "
              f"shipped {error.mean():.2f}, second model {np.abs(second - truth).mean():.2f} deg; gap median "
              f"{np.median(gap):.1f} deg (on the bad AoPs {np.median(gap[bad]):.1f})")
        print(f"  the gap as a check on the shipped AoP: {rank_candidate(gap, error)}")
        for (sample_id, t, a, b), is_bad in zip(rows, bad):
            if is_bad:
                print(f"  bad {sample_id}: expert {t:.1f}, shipped {a:.1f}, second model {b:.1f} deg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
