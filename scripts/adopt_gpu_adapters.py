"""Put a GPU run's fold adapters and soup into the shipped package (how run 3's were adopted).

    python -c "...install_package(...)"  # docs/GPU.md: /work/.device/N/VARIANT.tar.gz -> runs/gpu26-VARIANT
    cp -r runs/gpu26-VARIANT runs/ship-VARIANT && psfh-soup runs/ship-VARIANT --default --max-rank 32
    python scripts/adopt_gpu_adapters.py VARIANT

Checks first that the run has the shipped package's base (same file, by hash), adapter form and
fold assignment; then replaces fold_*/ and soup/, and writes the config with the run's training
record (the previous one kept under training.previous). The text of the record (hardware,
command, where the warm start came from) is run 3's: edit it for another run.
"""
import json, shutil, sys, hashlib
from pathlib import Path
variant = sys.argv[1]
src, dst = Path(f"runs/ship-{variant}"), Path("models/psfh-lite-medsam")
old = json.loads((dst / "psfh_config.json").read_text())
new = json.loads((src / "psfh_config.json").read_text())
for key in ("base", "input_size", "pixel_mean", "pixel_std", "classes", "folds", "lora", "trained", "tta"):
    assert old[key] == new.get(key, old[key]) or key == "lora" and {k: v for k, v in old[key].items() if k != "peft_version"} == {k: v for k, v in new[key].items() if k != "peft_version"}, key
assert json.loads((src / "folds.json").read_text())["fold_of_id"] == json.loads((dst / "folds.json").read_text())["fold_of_id"]
h = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
assert h(src / "base" / "model.safetensors") == h(dst / "base" / "model.safetensors")
training = new["training"]
training["warm_start"] = {f"fold_{k}": {"from": "models/psfh-lite-medsam as of commit 4b4b066 (run 2's adapters, same fold)",
                                        "validation_frames_it_trained_on": 0} for k in range(5)}
training["data"] = old["training"]["data"]
training["hardware"] = "one NVIDIA H200 (lent), torch 2.11.0+cu130, bf16 autocast; 10 fold processes side by side (2 variants x 5 folds)"
training["command"] = ("scripts/gpu_train.sh --pack .gpu/psfhs-cv-webp85.zip --out $OUT --work /tmp/psfh-gpu-work "
                       "--variants paper,paper_ps_moments --init-adapters models/psfh-lite-medsam --minutes 4.5 --student 2.0; "
                       f"this package is the {variant} variant, souped with `psfh-soup PACKAGE --default --max-rank 32`")
training["epochs_per_fold"] = 4
training["test_ids"] = old["training"]["test_ids"]
training["previous"] = old["training"]
for key in ("training", "soup", "default_adapters"):
    old[key] = new[key] if key != "training" else training
for k in range(5):
    fold = f"fold_{k}"
    shutil.rmtree(dst / fold); shutil.copytree(src / fold, dst / fold)
shutil.rmtree(dst / "soup"); shutil.copytree(src / "soup", dst / "soup")
(dst / "psfh_config.json").write_text(json.dumps(old, indent=2) + "\n")
print("shipped", variant)
