"""Resumable training state, written atomically: safetensors for tensors, JSON for the rest.

A fold's checkpoint folder holds ``state.json`` and the tensor file it names
(``state-epochNNNN.safetensors``). The tensor file is written first under a temporary name and
renamed, then ``state.json`` is replaced the same way: a kill at any moment leaves either the
previous complete checkpoint or the new one, never a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from psfh.core.files import atomic_target, write_text_atomic


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, epoch: int, trainable: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler, info: dict) -> Path:
    """Write the state after ``epoch`` (1-based count of finished epochs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"trainable.{k}": v.detach().cpu().contiguous() for k, v in trainable.items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    tensors.update({k: v.cpu() for k, v in optimizer_tensors.items()})
    name = f"state-epoch{epoch:04d}.safetensors"
    with atomic_target(folder / name) as temporary:
        save_file(tensors, str(temporary))
    meta = {"epoch": epoch, "tensors": name, "optimizer": optimizer_meta,
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}, **info}
    write_text_atomic(folder / "state.json", json.dumps(meta, indent=1))
    for old in folder.glob("state-epoch*.safetensors"):
        if old.name != name:
            old.unlink()
    return folder / "state.json"


def load_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor], dict] | None:
    """(meta, trainable, best, optimizer state) of the last checkpoint, or None if there is none."""
    path = Path(folder) / "state.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    tensors = load_file(str(Path(folder) / meta["tensors"]))
    trainable = {k.removeprefix("trainable."): v for k, v in tensors.items() if k.startswith("trainable.")}
    best = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    return meta, trainable, best, _unflatten_optimizer(tensors, meta["optimizer"])
