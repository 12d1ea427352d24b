"""Candidate measures of the model's uncertainty, ranked against the AoP error out of fold (issue 12).

From the members kept by scripts/cache_members.py --mode oof and the rows of
scripts/measure_views.py: for each candidate, its Spearman correlation with the AoP error and,
flagging its worst 5 % of frames, their mean AoP error and how many of the frames with errors
over 15 deg they hold. psfh.measure.quality uses the two views' PS agreement and AoP gap.

    python scripts/rank_uncertainty_measures.py > docs/results/quality/uncertainty_candidates.txt
"""
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from cache_members import load_members, members_folder  # noqa: E402
folder = members_folder(ROOT / "models" / "psfh-lite-medsam", "oof")
rows = {r["id"]: r for r in csv.DictReader(open(ROOT / "docs/results/views/oof/both/per_image.csv"))}
feats = []
for i, r in rows.items():
    m, folds = load_members(folder, i)  # 1 x 2 x 3 x S x S
    views = m[0]
    mean = views.mean(0)
    lab = mean.argmax(0)
    vlab = views.argmax(1)
    def dice(a, b):
        return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    ps_dice = dice(vlab[0] == 1, vlab[1] == 1)
    fh_dice = dice(vlab[0] == 2, vlab[1] == 2)
    ps_conf = float(mean[1][lab == 1].mean()) if (lab == 1).any() else 0
    ent = -(mean.clamp_min(1e-6) * mean.clamp_min(1e-6).log()).sum(0)
    ps_ent = float(ent[lab == 1].mean()) if (lab == 1).any() else 1
    unsure = float(((mean.max(0).values < 0.7) & (lab > 0)).float().sum() / max((lab > 0).sum(), 1))
    err = float(r["aop_error"] or "nan")
    feats.append((err, float(r["flip_aop_gap"] or "nan"), 1 - ps_dice, 1 - fh_dice, 1 - ps_conf, ps_ent, unsure, float(r["ps_solidity"]), float(r["aop_pred"] or "nan")))
F = np.array(feats)
names = ["gap", "1-ps_view_dice", "1-fh_view_dice", "1-ps_conf", "ps_entropy", "unsure_frac", "ps_solidity", "aop_pred"]
ok = ~np.isnan(F[:, 0])
bad = F[:, 0] > 15
for j, n in enumerate(names, 1):
    x = F[ok, j]; rho = spearmanr(x, F[ok, 0]).correlation
    thr = np.nanpercentile(F[:, j], 95)
    fl = F[:, j] > thr
    print(f"{n:16s} rho={rho:+.2f}  top5%: flagged err mean {np.nanmean(F[fl,0]):.1f}, caught {int((fl&bad).sum())}/{int(bad.sum())}")

