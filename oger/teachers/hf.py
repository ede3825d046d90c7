"""Teachers run with transformers `generate` (any local HF folder, GGUF file or hub id)."""

from __future__ import annotations

from oger.config import TeacherConfig
from oger.models import load_causal_lm
from oger.teachers.base import Generation, Prompt, chat_messages


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generate(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> list[Generation]:
    import torch
    from tqdm.auto import tqdm

    model, tok = load_causal_lm(tcfg.model, tcfg.dtype)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    eos = _eos_ids(model, tok)
    s = tcfg.sampling
    jobs = [(p, i) for p in prompts for i in range(tcfg.n)]
    out: list[Generation] = []
    bar = tqdm(total=len(jobs), desc=f"teacher {tcfg.name}", unit="trace")
    for b in range(0, len(jobs), tcfg.batch_size):
        batch = jobs[b:b + tcfg.batch_size]
        texts = [tok.apply_chat_template(chat_messages(tcfg, p.question), add_generation_prompt=True,
                                         tokenize=False) for p, _ in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(s.seed * 1_000_003 + b)  # deterministic per batch for a seed
        kwargs = dict(max_new_tokens=s.max_new_tokens, pad_token_id=tok.pad_token_id)
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False)
        with torch.no_grad():
            seqs = model.generate(**enc, **kwargs)
        new = seqs[:, enc["input_ids"].shape[1]:]
        for (p, i), row in zip(batch, new.tolist()):
            stop_at = next((j for j, t in enumerate(row) if t in eos), None)
            n_tokens = stop_at + 1 if stop_at is not None else len(row)
            body = row[:stop_at] if stop_at is not None else row
            text = tok.decode(body, skip_special_tokens=True).strip()
            out.append(Generation(p.problem_id, i, text, n_tokens,
                                  "stop" if stop_at is not None else "length"))
        bar.update(len(batch))
    bar.close()
    return out
