"""Put a GPU run's fold adapters and soup into the shipped package (how run 3's were adopted).

    python -c "...install_package(...)"  # docs/GPU.md: /work/.device/N/VARIANT.tar.gz -> runs/gpu26-VARIANT
    cp -r runs/gpu26-VARIANT runs/ship-VARIANT && psfh-soup runs/ship-VARIANT --default --max-rank 32
    python scripts/adopt_gpu_adapters.py runs/ship-VARIANT [--into models/psfh-lite-medsam]

Checks first that the run has the package's base (the same file, by hash), adapter form and fold
assignment; then replaces fold_*/ and soup/ and writes the config with the run's training record
(the previous one kept under training.previous). The record's text (hardware, command, where the
warm start came from) is run 3's: edit RUN_RECORD for another run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

SAME = ("base", "input_size", "pixel_mean", "pixel_std", "classes", "folds", "trained", "tta")
RUN_RECORD = {
    "hardware": "one NVIDIA H200 (lent), torch 2.11.0+cu130, bf16 autocast; 10 fold processes side by side "
                "(2 variants x 5 folds)",
    "command": "scripts/gpu_train.sh --pack .gpu/psfhs-cv-webp85.zip --out $OUT --work /tmp/psfh-gpu-work "
               "--variants paper,paper_ps_moments --init-adapters models/psfh-lite-medsam --minutes 4.5 --student 2.0",
    "warm_start_from": "models/psfh-lite-medsam as of commit 4b4b066 (run 2's adapters, same fold)",
    "epochs_per_fold": 4,
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def differences(run: Path, package: Path, old: dict, new: dict) -> list[str]:
    """What makes the run's adapters unfit for the package (empty: fit)."""
    problems = [f"config {key!r} differs" for key in SAME if old[key] != new.get(key)]
    lora = [{k: v for k, v in config["lora"].items() if k != "peft_version"} for config in (old, new)]
    if lora[0] != lora[1]:
        problems.append("another adapter form (lora config)")
    missing = [str(folder / "folds.json") for folder in (package, run) if not (folder / "folds.json").is_file()]
    if missing:
        problems.append(f"no fold assignment: {', '.join(missing)} not found")
    elif len({json.dumps(json.loads((folder / "folds.json").read_text())["fold_of_id"], sort_keys=True)
              for folder in (package, run)}) > 1:
        problems.append("another fold assignment (folds.json)")
    if sha256(run / "base" / "model.safetensors") != sha256(package / "base" / "model.safetensors"):
        problems.append("another base (base/model.safetensors)")
    if not (run / "soup").is_dir():
        problems.append("no soup: run psfh-soup RUN --default --max-rank 32 first")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run's installed package, with its soup")
    parser.add_argument("--into", type=Path, default=Path("models/psfh-lite-medsam"))
    args = parser.parse_args(argv)
    old = json.loads((args.into / "psfh_config.json").read_text())
    new = json.loads((args.run / "psfh_config.json").read_text())
    problems = differences(args.run, args.into, old, new)
    if problems:
        print(f"error: {args.run} cannot replace the adapters of {args.into}: " + "; ".join(problems), file=sys.stderr)
        return 2
    training = dict(new["training"])
    training["warm_start"] = {fold: {"from": RUN_RECORD["warm_start_from"], "validation_frames_it_trained_on": 0}
                              for fold in new["folds"]}
    training["data"] = old["training"]["data"]
    training["hardware"] = RUN_RECORD["hardware"]
    training["command"] = (f"{RUN_RECORD['command']}; this package is the "
                           f"{args.run.name.removeprefix('ship-')} variant, souped with "
                           "`psfh-soup PACKAGE --default --max-rank 32`")
    training["epochs_per_fold"] = RUN_RECORD["epochs_per_fold"]
    training["test_ids"] = old["training"]["test_ids"]
    training["previous"] = old["training"]
    config = {**old, "training": training, "soup": new["soup"], "default_adapters": new["default_adapters"]}
    for adapter in [*new["folds"], "soup"]:
        shutil.rmtree(args.into / adapter, ignore_errors=True)  # a package may have had no soup
        shutil.copytree(args.run / adapter, args.into / adapter)
    (args.into / "psfh_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"{args.into}: adapters {', '.join(new['folds'])} and soup from {args.run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
