#!/usr/bin/env bash
# Build what a device call carries beside the tracked tree (64 MiB in all; the tree is ~56 MB):
#   .gpu/site.tar.xz            transformers (the models psfh and peft import) and peft at requirements.txt's pins,
#                               pure Python, xz; no MONAI: the GPU job (--augment-on device, the torch
#                               Dice + CE of psfh.training.loss) does not import it
#   .gpu/psfhs-cv-webp85.zip    the 978 cross-validation frames (test ids left out), WebP quality 85
# The packages are copied from the active environment (the venv), checked against the pins: no
# network needed. transformers keeps models/ auto and sam (psfh's SamModel), bloom and encoder_decoder
# (peft and the auto classes import them); the other ~550 models are most of its size.
# GPU_BUNDLE_DIR=folder writes there instead of .gpu/ (the tests).
#   (--lossless: .gpu/psfhs-cv-lossless.zip instead, 25.8 MB: fits only once the tracked base is stored
#   in float16, docs/GPU.md)
# Then it adds up what a call with carry [".gpu"] sends (tracked + untracked-not-ignored files + .gpu/)
# and fails when that is over the 64 MiB a call may carry.
# Usage: scripts/gpu_bundle.sh [--lossless] [DATA_DIR]   (default ../shared/data/psfhs); run with the venv active
#        scripts/gpu_bundle.sh --site-only                (.gpu/site.tar.xz alone)
set -euo pipefail
cd "$(dirname "$0")/.."
site_only=0
lossless=0
if [ "${1:-}" = "--site-only" ]; then site_only=1; shift; fi
if [ "${1:-}" = "--lossless" ]; then lossless=1; shift; fi
data=${1:-../shared/data/psfhs}
out=${GPU_BUNDLE_DIR:-.gpu}
mkdir -p "$out"
# keep .gpu/ out of `git status` (a clean checkout may have no .git/info/, CI's has none)
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python - "$tmp/site" <<'PY'
import importlib, re, shutil, sys
from pathlib import Path

site = Path(sys.argv[1])
KEPT_MODELS = ("auto", "sam", "bloom", "encoder_decoder")
pins = dict(re.findall(r"^(transformers|peft)==(\S+)", Path("requirements.txt").read_text(), re.M))
skip = shutil.ignore_patterns("__pycache__", "*.pyc")
for name, version in pins.items():
    module = importlib.import_module(name)
    if module.__version__ != version:
        sys.exit(f"error: {name} {module.__version__} is installed, requirements.txt pins {version}")
    source = Path(module.__file__).parent
    if name == "transformers":  # everything but the other models
        shutil.copytree(source, site / name, ignore=lambda folder, names: (
            [n for n in names if Path(folder) == source / "models" and (source / "models" / n).is_dir()
             and n not in KEPT_MODELS] + list(skip(folder, names))))
    else:
        shutil.copytree(source, site / name, ignore=skip)
    for info in source.parent.glob(f"{name}-{version}.dist-info"):  # importlib.metadata finds the version
        shutil.copytree(info, site / info.name)
PY
tar -C "$tmp/site" -cf - . | xz -9 -T2 > "$out/site.tar.xz"
if [ "$site_only" = 0 ]; then
  ls "$data/image_mha" | sed 's/\.mha$//' | grep -vxFf docs/splits/test_ids.txt > "$tmp/cv_ids.txt"
  if [ "$lossless" = 1 ]; then  # one pack only: carry [".gpu"] sends the whole folder
    rm -f "$out/psfhs-cv-webp85.zip"
    python -m psfh.data pack "$data" "$out/psfhs-cv-lossless.zip" --ids-file "$tmp/cv_ids.txt" --overwrite
  else
    rm -f "$out/psfhs-cv-lossless.zip"
    python -m psfh.data pack "$data" "$out/psfhs-cv-webp85.zip" --ids-file "$tmp/cv_ids.txt" --webp-quality 85 --overwrite
  fi
fi
ls -l "$out"
# What a call carries: the tracked and untracked-not-ignored files, and the carried .gpu/.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
bundle=$(find "$out" -type f -exec stat -c %s {} + | awk '{s+=$1} END {print s+0}')
limit=67108864
echo "a device call carries $tree (working tree) + $bundle ($out) = $((tree + bundle)) of $limit bytes"
if [ $((tree + bundle)) -gt $limit ]; then
  echo "error: over the 64 MiB a device call may carry by $((tree + bundle - limit)) bytes" >&2
  exit 1
fi
