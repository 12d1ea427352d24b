#!/usr/bin/env bash
# The GPU job in ONE device call: unpack the carried packages, then train every fold of both
# variants (scripts/gpu_train.py says what, and takes the same arguments).
#
# The device image has torch but other versions of transformers/peft and no MONAI: the pinned
# ones travel as .gpu/site.tar.xz (made by scripts/gpu_bundle.sh) and go first on PYTHONPATH.
# psfh is not installed there: the repository root follows them, for gpu_train.py's imports.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -f .gpu/site.tar.xz ]; then
  site=$(mktemp -d /tmp/psfh-site.XXXXXX)
  tar -xJf .gpu/site.tar.xz -C "$site"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
python=${PYTHON:-python3}
"$python" -c "import torch, transformers, peft, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'| transformers', transformers.__version__, '| peft', peft.__version__, '| monai', monai.__version__)"
exec "$python" scripts/gpu_train.py "$@"
