#!/usr/bin/env bash
# Build what a device call carries beside the tracked tree (64 MiB in all, ~50 MB of it the tree):
#   .gpu/site.tar.xz            transformers, peft, MONAI at requirements.txt's pins (pure Python), xz
#   .gpu/psfhs-cv-webp85.zip    the 978 cross-validation frames (test ids left out), WebP quality 85
# Usage: scripts/gpu_bundle.sh [DATA_DIR]   (default ../shared/data/psfhs); run with the venv active.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/psfhs}
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pins=$(grep -E '^(transformers|peft|monai)==' requirements.txt)
python -m pip download -q --no-deps --only-binary=:all: -d "$tmp/wheels" $pins
mkdir "$tmp/site"
for wheel in "$tmp"/wheels/*.whl; do python -m zipfile -e "$wheel" "$tmp/site"; done
tar -C "$tmp/site" -cf - . | xz -9 -T2 > .gpu/site.tar.xz
ls "$data/image_mha" | sed 's/\.mha$//' | grep -vxFf docs/splits/test_ids.txt > "$tmp/cv_ids.txt"
python -m psfh.data pack "$data" .gpu/psfhs-cv-webp85.zip --ids-file "$tmp/cv_ids.txt" --webp-quality 85 --overwrite
ls -l .gpu
