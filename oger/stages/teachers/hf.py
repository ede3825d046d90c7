"""Teachers run with transformers (any local HF folder, GGUF file or hub id): padded `generate` or,
with `engine: paged`, continuous batching (oger.generation.paged)."""

from __future__ import annotations

from oger.contract.config import TeacherConfig
from oger.models import load_causal_lm
from oger.generation.hf import generate as rollout_generate
from oger.stages.teachers.base import Generation, Prompt, chat_messages
from oger import seeds


def generate(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> list[Generation]:
    from tqdm.auto import tqdm

    model, tok = load_causal_lm(tcfg.model, tcfg.dtype)
    s = tcfg.sampling
    out: list[Generation] = []
    # batch_size // n prompts per chunk (n samples each); sampling is seeded per chunk by its first
    # prompt's position in the teacher's list, so a shard aligned to chunks samples the same.
    chunk = max(1, tcfg.batch_size // tcfg.n)
    bar = tqdm(total=len(prompts) * tcfg.n, desc=f"teacher {tcfg.name}", unit="trace")
    for c in range(0, len(prompts), chunk):
        batch = prompts[c:c + chunk]
        ids = [tok(tok.apply_chat_template(chat_messages(tcfg, p.question), add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"]
               for p in batch]
        rolls = rollout_generate(model, tok, ids, n=tcfg.n, max_new_tokens=s.max_new_tokens,
                                 temperature=s.temperature, top_p=s.top_p, seed=seeds.for_step(s.seed, batch[0].position),
                                 batch_size=tcfg.batch_size, record_entropy=False, engine=tcfg.engine)
        counters: dict[int, int] = {}
        for r in rolls:
            i = counters.get(r.prompt_index, 0)
            counters[r.prompt_index] = i + 1
            out.append(Generation(batch[r.prompt_index].problem_id, i, r.text.strip(),
                                  len(r.response_ids), r.finish_reason))
        bar.update(len(rolls))
    bar.close()
    return out
