"""A fingerprint of a model's weights that a trainer and a rollout engine can both compute: float64
sums of a few fixed slices (every normalisation weight, a few rows of the embedding and of an untied
output layer), each slice summed alone, on the CPU, by the same function on both sides.

Why: a push that did not take effect (skipped, partial, or undone by waking from sleep mode: TRL #5312)
leaves log-probs that differ from the trainer's by no more than an update moves them, which at lr 1e-6
is below any tolerance a bf16 engine needs. A checksum of the weights themselves does not depend on
the step size: after a correct push the engine's slices are the trainer's cast to the engine's dtype,
bit for bit, so their sums are equal exactly; any optimizer step that moved them (AdamW moves every
normalisation weight it has a gradient for) makes them differ.

Why these slices: they keep their names and layout inside vLLM (its CPU build repacks the linear
weights, whose parameters it leaves empty), are small, and are whole on every tensor-parallel rank (the
norms) or whole rows on the one rank whose vocabulary shard holds them. A sharded trainer (FSDP2) reads
the norms gathered (a few KB each) and each probed row on the rank that holds it."""

from __future__ import annotations

from dataclasses import dataclass

ROWS = 8  # probed rows of each vocabulary-sized weight, spread over the vocabulary


@dataclass(frozen=True)
class Probe:
    name: str  # the parameter's name, the same in the trainer's model and in the engine's
    row: int | None = None  # a row of dim 0 (embedding, output layer); None: the whole tensor

    @property
    def label(self) -> str:
        return self.name if self.row is None else f"{self.name}[{self.row}]"


def slice_sum(t) -> float:
    """The one summation both sides use: the slice copied to the CPU, widened to float64, summed. Equal
    values give equal sums; the sum of a slice that differs anywhere differs, but for coincidences."""
    import torch

    return float(t.detach().to("cpu").to(torch.float64).sum())


def choose_probes(model) -> list[Probe]:
    """Every 1-D normalisation weight (`...norm.weight`), and ROWS rows of the input embedding and of
    an output layer that is not tied to it."""
    params = dict(model.named_parameters())
    probes = [Probe(n) for n, p in params.items() if n.endswith("norm.weight") and p.dim() == 1]
    by_id = {id(p): n for n, p in params.items()}
    vocab_weights = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not vocab_weights[0]:
        vocab_weights.append(out.weight)
    for w in vocab_weights:
        name, n = by_id.get(id(w)), w.shape[0]
        if name is not None:
            probes += [Probe(name, r) for r in sorted({i * (n - 1) // (ROWS - 1) for i in range(ROWS)})]
    return probes


def trainer_fingerprint(model, probes: list[Probe], dtype, gather=None) -> dict[str, float]:
    """The trainer's sums of `probes`, its weights cast to the engine's `dtype` first (a bf16 engine
    holds the bf16 rounding of the float32 master weights). Under FSDP2 (DTensor parameters) call it on
    every rank: a whole-tensor probe is gathered, a row is read on the rank whose shard holds it, and
    `gather` (`Dist.gather`) joins the ranks' readings."""
    params = dict(model.named_parameters())
    values: dict[str, float] = {}
    for probe in probes:
        p = params[probe.name].detach()
        sharded = hasattr(p, "full_tensor")
        if probe.row is None:
            values[probe.label] = slice_sum((p.full_tensor() if sharded else p).to(dtype))
        elif not sharded:
            values[probe.label] = slice_sum(p[probe.row].to(dtype))
        else:
            first, local = _shard_rows(p)
            if first <= probe.row < first + local.shape[0]:
                values[probe.label] = slice_sum(local[probe.row - first].to(dtype))
    if gather is not None:
        for part in gather(values):
            values.update(part)
    return values


def _shard_rows(p):
    """(first global row, local rows) of a DTensor sharded along dim 0."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local = p.to_local()
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return offset[0], local


def engine_fingerprint(worker, probes: list[Probe]) -> dict[str, float]:
    """Run inside a vLLM worker (`LLM.collective_rpc`): the sums of the probes this worker holds —
    every whole tensor, and the rows of its vocabulary shard (`shard_indices`) — from the weights its
    model computes with. A probe it has no parameter for (a layer the CPU build repacked) is left out."""
    model = worker.model_runner.get_model() if hasattr(worker.model_runner, "get_model") else worker.model_runner.model
    params = dict(model.named_parameters())
    values: dict[str, float] = {}
    for probe in probes:
        p = params.get(probe.name)
        if p is None or p.numel() == 0:
            continue
        if probe.row is None:
            values[probe.label] = slice_sum(p)
            continue
        shard = getattr(model.get_submodule(probe.name.rpartition(".")[0]), "shard_indices", None)
        first, end = (shard.org_vocab_start_index, shard.org_vocab_end_index) if shard is not None else (0, p.shape[0])
        if first <= probe.row < end:
            values[probe.label] = slice_sum(p[probe.row - first])
    return values


def differences(trainer: dict[str, float], engine: dict[str, float]) -> list[tuple[str, float, float]]:
    """(label, engine's sum, trainer's sum) of every probe the engine read whose sum differs."""
    return [(k, engine[k], trainer[k]) for k in trainer if k in engine and engine[k] != trainer[k]]
