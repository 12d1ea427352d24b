"""A learned check (issue 12): does a ridge regression of the log AoP error on twelve uncertainty
and outline features, fitted out of fold, pick out the bad AoPs better than the fixed checks?

Features per frame (per fold, averaged over folds, so that out-of-fold frames (one fold) and the
product (five) mean the same): the views' PS / FH disagreement (1 - Dice), PS confidence and
entropy, the share of unsure structure pixels, PS and FH areas, the flip AoP gap, the outlines'
solidity, the AoP itself and the PS/FH area ratio; from the members kept by
scripts/cache_members.py and the rows of scripts/measure_views.py. Fitted on the 245 out-of-fold
frames (cross-validated over the package's own exam-grouped folds, folds.json, for the estimate), then applied once to the 100 test frames with
the out-of-fold 95th-percentile threshold.

    python scripts/learned_uncertainty.py > docs/results/quality/learned_check.txt
"""
import csv, sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
from cache_members import load_members, members_folder
from scipy.stats import spearmanr

def fold_feats(views):
    mean = views.mean(0); lab = mean.argmax(0); vlab = views.argmax(1)
    dice = lambda a, b: float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    ps_conf = float(mean[1][lab == 1].mean()) if (lab == 1).any() else 0
    ent = -(mean.clamp_min(1e-6) * mean.clamp_min(1e-6).log()).sum(0)
    ps_ent = float(ent[lab == 1].mean()) if (lab == 1).any() else 1
    unsure = float(((mean.max(0).values < 0.7) & (lab > 0)).float().sum() / max((lab > 0).sum(), 1))
    ps_area = float((lab == 1).float().mean()); fh_area = float((lab == 2).float().mean())
    return [1 - dice(vlab[0] == 1, vlab[1] == 1), 1 - dice(vlab[0] == 2, vlab[1] == 2), 1 - ps_conf, ps_ent, unsure, ps_area, fh_area]

def table(mode, split):
    folder = members_folder(ROOT / "models" / "psfh-lite-medsam", mode)
    rows = list(csv.DictReader(open(ROOT / f"docs/results/views/{split}/both/per_image.csv")))
    X, y, ids = [], [], []
    for r in rows:
        if not r["aop_error"]: continue
        m, _ = load_members(folder, r["id"])
        f = np.mean([fold_feats(m[k]) for k in range(m.shape[0])], axis=0)
        X.append([*f, float(r["flip_aop_gap"] or 90), float(r["ps_solidity"]), float(r["fh_solidity"]), float(r["aop_pred"]), float(r["ps_to_fh_area"])])
        y.append(float(r["aop_error"])); ids.append(r["id"])
    return np.array(X), np.array(y), ids

names = ["1-ps_view_dice", "1-fh_view_dice", "1-ps_conf", "ps_entropy", "unsure", "ps_area", "fh_area", "gap", "ps_solidity", "fh_solidity", "aop_pred", "ps_to_fh"]
Xo, yo, io = table("oof", "oof"); Xt, yt, it = table("all", "test")
print("oof", Xo.shape, "bad", (yo > 15).sum(), "test", Xt.shape, "bad", (yt > 15).sum())
mu, sd = Xo.mean(0), Xo.std(0) + 1e-9
def fit(X, y, lam=1.0):
    Z = np.c_[np.ones(len(X)), (X - mu) / sd]
    w = np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ np.log1p(y))  # ridge on log error
    return w
def score(w, X): return np.c_[np.ones(len(X)), (X - mu) / sd] @ w
# CV on OOF over the package's own folds (exam blocks kept whole, psfh.io.dataset.id_blocks)
from psfh.model.package import read_fold_assignment
fold_of = read_fold_assignment(ROOT / "models" / "psfh-lite-medsam")
exam = np.array([fold_of[i] for i in io])
for lam in [1, 10, 30, 100]:
    pred = np.zeros(len(yo))
    for g in np.unique(exam):
        te = exam == g; w = fit(Xo[~te], yo[~te], lam); pred[te] = score(w, Xo[te])
    rho = spearmanr(pred, yo).correlation
    thr = np.percentile(pred, 95); fl = pred > thr
    print(f"lam {lam}: OOF-CV rho {rho:+.2f}; top5% err {yo[fl].mean():.1f} vs {yo[~fl].mean():.1f}, caught {(fl & (yo > 15)).sum()}/{(yo > 15).sum()}")
w = fit(Xo, yo, 30); so = score(w, Xo); thr = np.percentile(so, 95)
st = score(w, Xt); fl = st > thr
print("coef", dict(zip(names, np.round(w[1:], 3))))
print(f"test: flagged {fl.sum()}/{len(yt)}, err {yt[fl].mean() if fl.any() else float('nan'):.1f} vs {yt[~fl].mean():.1f}, caught {(fl & (yt > 15)).sum()}/{(yt > 15).sum()}, rho {spearmanr(st, yt).correlation:+.2f}")
for q in [90, 80]:
    thr = np.percentile(so, q); fl = st > thr
    print(f"  at OOF top {100-q}%: test flagged {fl.sum()}, err {yt[fl].mean():.1f} vs {yt[~fl].mean():.1f}, caught {(fl & (yt > 15)).sum()}/{(yt > 15).sum()}")
