"""The held-out greedy check through both engines on one small trained model, in a process of its own
(`python -m tests.heldout_probe FOLDER OUT`): an in-process vLLM engine replaces torch.set_num_threads for
the rest of its process, which must not leak into the pytest worker's other tests (as tests/vllm_probe.py).

The model: the tiny Qwen2 policy (`pretokenize: digits`, as configs/tiny.yaml) trained by the policy
stage's own SFT to answer "Compute a + b." with "\\boxed{a+b}" on 24 of 32 questions (200 epochs: all 24
right and none of the other 8 on this CPU), so the engines are compared on right and wrong answers alike.
Writes OUT (JSON): each engine's accuracy through `heldout_accuracy`, and its greedy response ids and
texts."""

from __future__ import annotations

import json
import sys

QUESTIONS = [(a, b) for a in range(1, 9) for b in range(1, 5)]  # 32 questions
TRAINED = 24  # the first 24 are in the SFT data; the last 8 are not


def main(folder: str, out_path: str) -> None:
    from pathlib import Path

    from oger.generation.base import Request
    from oger.generation.heldout import heldout_accuracy, vllm_greedy
    from oger.generation.hf import TransformersEngine, chat_prompt_ids
    from oger.models import load_causal_lm
    from oger.stages.policy.sft import sft
    from oger.stages.policy.tiny_model import build_model, save_policy, train_tokenizer

    questions = [f"Compute {a} + {b}." for a, b in QUESTIONS]
    answers = [str(a + b) for a, b in QUESTIONS]
    responses = [f"\\boxed{{{c}}}" for c in answers]
    tok = train_tokenizer(questions + responses, 300, "digits")
    model = build_model(tok, 64, 2, 2, 128, 256, seed=0)
    examples = [
        (chat_prompt_ids(tok, q), tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        for q, r in zip(questions[:TRAINED], responses[:TRAINED])
    ]
    losses = sft(model, examples, pad_id=tok.pad_token_id, epochs=200, lr=3e-3, batch_size=8, warmup_steps=10, seed=0)
    model_dir = Path(folder) / "model"
    save_policy(model, tok, model_dir)
    model, tok = load_causal_lm(str(model_dir), "float32")  # as the stages hold it: loaded from its folder
    check = dict(instruction="{question}", system_prompt=None, max_new_tokens=24, batch_size=8, dtype="float32")
    out = {
        "sft_loss_last": losses[-1],
        "accuracy_hf": heldout_accuracy("hf", model, tok, model_dir, questions, answers, **check),
        "accuracy_vllm": heldout_accuracy("vllm", model, tok, model_dir, questions, answers, **check),
    }
    prompts = [chat_prompt_ids(tok, q) for q in questions]
    greedy = Request(max_new_tokens=24, temperature=0.0)
    hf = sorted(TransformersEngine(model, tok).generate(prompts, greedy), key=lambda r: r.prompt_index)
    vllm = vllm_greedy(model_dir, tok, questions, max_new_tokens=24)
    out["ids_hf"], out["ids_vllm"] = [r.response_ids for r in hf], [r.response_ids for r in vllm]
    out["texts_hf"], out["texts_vllm"] = [r.text for r in hf], [r.text for r in vllm]
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
