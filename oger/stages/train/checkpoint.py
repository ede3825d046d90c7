"""Training checkpoints: sharded model and optimizer state through `torch.distributed.checkpoint`
(DCP), the final model exported as an HF folder, and resume, with the metrics history a checkpoint
covers.

Why DCP: every rank writes its own shard (FSDP2) or its part of the replicated state (DDP, written
once), and a resume reads only what the rank holds. Gathering the full optimizer state on rank 0
and `torch.save`-ing it, as before, holds ~60 GB of AdamW state per rank in host memory for a 7B
policy, and every rank then reads the whole file back. One process writes the same format
(DCP without a process group), so a run can move between one and several ranks.

A checkpoint folder `step-NNNNNN/` holds `dcp/` (model and optimizer), `trainer_state.pt` (step,
schedule) and `COMPLETE`; it appears under its name only once whole (`atomic_write`). Checkpoints
written before DCP (an HF model folder and the full optimizer state in `trainer_state.pt`) still
resume. The model a run ends with is exported once, as an HF folder streamed tensor by tensor to
rank 0 (`export_model`): the train artifact and the next round read that.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import warnings
from pathlib import Path

import torch

from oger.contract.artifacts import atomic_write

_STEP = re.compile(r"^step-(\d{6})$")
DCP_DIR = "dcp"
STATE_FILE = "trainer_state.pt"
FINAL_MODEL = "final-model"  # in the run folder: the exported HF model of the last step
SHARD_BYTES = 2 * 2**30  # an exported safetensors file's size limit: rank 0 holds one such shard at a time


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, dist, keep: int = 2) -> Path:
    """Write step-NNNNNN/ (called on every rank): each rank's model and optimizer shards through DCP into
    one temp folder that rank 0 chose, then rank 0 adds the schedule and renames it into place; all but
    the newest `keep` checkpoints are pruned."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = root / f"step-{step:06d}"
    model_state, optim_state = get_state_dict(model, optimizer)  # sharded under FSDP2, local otherwise

    def write(tmp: Path | None) -> None:
        tmp = Path(dist.from_main(str(tmp) if tmp is not None else None))  # one folder for all ranks
        with _one_process_is_meant():
            dcp.save(
                {"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / DCP_DIR, no_dist=not dist.active
            )
        if dist.main:
            torch.save({"step": step, "scheduler": scheduler.state_dict()}, tmp / STATE_FILE)
            (tmp / "COMPLETE").write_text(str(step))

    if dist.main:
        atomic_write(final, write)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    else:
        write(None)
    dist.barrier()
    return final


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, dist) -> int:
    """Resume `model` (already wrapped for DDP / FSDP2), `optimizer` and `scheduler` from `ckpt`;
    returns the step it holds. Each rank reads its own shards of a DCP checkpoint; a checkpoint of the
    older layout (HF weights and the full optimizer state) is read whole, as it was written."""
    state = torch.load(ckpt / STATE_FILE, weights_only=False, map_location="cpu")
    if (ckpt / DCP_DIR).is_dir():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)  # the shapes to read into
        loaded = {"model": model_state, "optimizer": optim_state}
        with _one_process_is_meant():
            dcp.load(loaded, checkpoint_id=ckpt / DCP_DIR, no_dist=not dist.active)
        set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    else:
        _load_full_state(ckpt, state["optimizer"], model, optimizer, dist)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


@contextlib.contextmanager
def _one_process_is_meant():
    """DCP warns that it 'assumes' one process whenever no process group is up; here one is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _load_full_state(ckpt: Path, optim_state: dict, model, optimizer, dist) -> None:
    """A checkpoint from before DCP: HF weights and the optimizer's full state dict (FQN-keyed as
    FSDP2 gathered it, the optimizer's own under DDP and on one process)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from transformers import AutoModelForCausalLM

    full = StateDictOptions(full_state_dict=True)
    dtype = next(model.parameters()).dtype
    weights = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).state_dict()
    set_model_state_dict(model, weights, options=full)
    if dist.fsdp:
        set_optimizer_state_dict(model, optimizer, optim_state, options=full)
    else:
        optimizer.load_state_dict(optim_state)


def export_model(out: Path, model, tokenizer, dist, shard_bytes: int = SHARD_BYTES) -> Path:
    """The model as an HF folder at `out` (called on every rank). Each tensor is made whole in turn
    (FSDP2 all-gathers it on every rank) and rank 0 alone keeps it, writing safetensors files of at most
    `shard_bytes`: rank 0 never holds the whole state. A tied weight is written once, under its first
    name, as `save_pretrained` does; non-persistent buffers are not written."""
    from oger.stages.train.distributed import unwrap

    policy = unwrap(model)

    def whole_tensors():
        from torch.distributed.tensor import DTensor

        for name, tensor in _unique_state(policy):
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            yield name, full.detach().to("cpu", copy=True) if dist.main else None

    if dist.main:
        atomic_write(out, lambda tmp: _write_hf(tmp, whole_tensors(), policy, tokenizer, shard_bytes))
    else:
        for _ in whole_tensors():  # the same collectives, in the same order, as rank 0's
            pass
    dist.barrier()
    return out


def _unique_state(policy):
    """(name, tensor) of the persistent state, each parameter once (tied ones under the first name)."""
    seen, tied = set(), set()
    for name, param in policy.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    for name, tensor in policy.state_dict().items():
        if name not in tied:
            yield name, tensor


def _write_hf(folder: Path, tensors, policy, tokenizer, shard_bytes: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    policy.config.save_pretrained(folder)
    if getattr(policy, "generation_config", None) is not None:
        policy.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    files: list[tuple[str, list[str]]] = []
    shard: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        name = f"model-part-{len(files) + 1:05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        files.append((name, list(shard)))
        shard.clear()

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > shard_bytes:
            flush()
            size = 0
        shard[name], size, total = tensor.contiguous(), size + nbytes, total + nbytes
    if shard or not files:
        flush()
    if len(files) == 1:  # HF's names: model.safetensors, or numbered parts and their index
        (folder / files[0][0]).rename(folder / "model.safetensors")
        return
    weight_map = {}
    for i, (name, names) in enumerate(files, 1):
        final = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        (folder / name).rename(folder / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def final_model_dir(run_dir: Path) -> Path:
    """Where `train` exports the model it ends with (an HF folder)."""
    return run_dir / FINAL_MODEL


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP.match(p.name) and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_history(path: Path, done_steps: int) -> list[dict]:
    """Metrics of the steps a checkpoint covers; lines written after it (lost work) are dropped.

    The kept lines replace the file through `atomic_write` (a temp sibling, renamed), so a kill
    during the trim leaves the old file whole and the next resume trims it again."""
    if not path.exists():
        return []
    original = path.read_text()
    rows = []
    for line in original.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: it belongs to lost work anyway
            continue
    rows = [r for r in rows if r.get("step", done_steps + 1) <= done_steps]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if text != original:  # also drops a cut last line, which the next append would run into
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return rows
