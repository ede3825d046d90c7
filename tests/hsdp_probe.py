"""One step's gradients under HSDP (`train.distributed.fsdp: hybrid`) on the trainer's own mesh and
wrapping (`distributed.init_from_env`, `Dist.wrap`), against one process on the whole batch. Run as
`torchrun --standalone --nproc_per_node 4 -m tests.hsdp_probe OUT`: four gloo ranks laid out as two
"nodes" of two (the mesh's rows), each rank a quarter of the batch; the loss is normalised by the global
token count and scaled by the world size, as the trainer's is. Rank 0 writes OUT (JSON): the largest
gradient difference per parameter, the mesh's shape and names, a parameter's placements and the shape of
its local shard."""

from __future__ import annotations

import copy
import json
import sys

import torch


def main(out_path: str) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from oger.stages.train.distributed import init_from_env

    torch.manual_seed(0)  # every rank builds the same model
    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(cfg)
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(1))
    tokens = ids.shape[0] * (ids.shape[1] - 1)

    def loss(m, rows) -> torch.Tensor:  # summed token NLL of `rows` over the whole batch's tokens
        logits = m(input_ids=ids[rows]).logits[:, :-1]
        target = ids[rows][:, 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 64), target.reshape(-1), reduction="sum") / tokens

    one = copy.deepcopy(model)
    loss(one, slice(None)).backward()
    want = {n: p.grad for n, p in one.named_parameters()}

    dist = init_from_env("gloo", "hybrid", nnodes=2)
    wrapped = dist.wrap(model)
    per = ids.shape[0] // dist.world
    (loss(wrapped, slice(dist.rank * per, (dist.rank + 1) * per)) * dist.world).backward()
    diffs = {n: (p.grad.full_tensor() - want[n]).abs().max().item() for n, p in wrapped.named_parameters()}
    emb = wrapped.model.embed_tokens.weight
    if dist.main:
        out = {
            "diffs": diffs,
            "mesh_shape": list(dist.mesh.shape),
            "mesh_dims": list(dist.mesh.mesh_dim_names),
            "placements": [str(p) for p in emb.placements],
            "local_rows": emb.to_local().shape[0],
            "rows": emb.shape[0],
        }
        with open(out_path, "w") as f:
            json.dump(out, f)
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1])
