"""The held-out greedy check through both engines on one small trained model, in a process of its own
(`python -m tests.heldout_probe FOLDER OUT`): an in-process vLLM engine replaces torch.set_num_threads for
the rest of its process, which must not leak into the pytest worker's other tests (as tests/vllm_probe.py).

The model: the tiny Qwen2 policy (`pretokenize: digits`, as configs/tiny.yaml) trained by the policy
stage's own SFT to answer "Compute a + b." with "\\boxed{a+b}" on 24 of 32 questions (200 epochs: all 24
right and none of the other 8 on this CPU), so the engines are compared on right and wrong answers alike.
Writes OUT (JSON): each engine's greedy response ids and texts through `heldout_responses` (one engine
of each kind: a vLLM build is the probe's slowest step), and the accuracy `heldout.accuracy` scores them."""

from __future__ import annotations

import json
import sys

QUESTIONS = [(a, b) for a in range(1, 9) for b in range(1, 5)]  # 32 questions
TRAINED = 24  # the first 24 are in the SFT data; the last 8 are not


def main(folder: str, out_path: str) -> None:
    from pathlib import Path

    from oger.generation.heldout import accuracy, heldout_responses
    from oger.generation.hf import chat_prompt_ids
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
    out = {"sft_loss_last": losses[-1]}
    for engine in ("hf", "vllm"):
        rolls = heldout_responses(engine, model, tok, model_dir, questions, **check)
        out[f"accuracy_{engine}"] = accuracy([r.text for r in rolls], answers)
        out[f"ids_{engine}"], out[f"texts_{engine}"] = [r.response_ids for r in rolls], [r.text for r in rolls]
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
