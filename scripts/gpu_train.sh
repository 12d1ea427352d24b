#!/usr/bin/env bash
# The GPU job in ONE device call: unpack the carried packages, then train every fold of both
# variants (scripts/gpu_train.py says what, and takes the same arguments).
#
# The device image has torch but other versions of transformers/peft and no MONAI: the pinned
# ones travel as .gpu/site.tar.xz (made by scripts/gpu_bundle.sh; PSFH_GPU_SITE=file for another)
# and go first on PYTHONPATH. The job needs no MONAI (--augment-on device, torch Dice + CE).
# psfh is not installed there: the repository root follows them, for gpu_train.py's imports.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
site_archive=${PSFH_GPU_SITE:-.gpu/site.tar.xz}
if [ -f "$site_archive" ]; then
  site=$(mktemp -d /tmp/psfh-site.XXXXXX)
  tar -xJf "$site_archive" -C "$site"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
python=${PYTHON:-python3}
"$python" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'| transformers', transformers.__version__, transformers.__file__, '| peft', peft.__version__)"
exec "$python" scripts/gpu_train.py "$@"
