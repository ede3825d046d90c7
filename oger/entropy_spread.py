"""How each `train.oger.entropy_at` option spreads H and g(H) over a task's correct rollouts.

Why: the bonus is r = c + lam * c * d * g(H) (docs/ALGORITHM.md §8). With the default `last` and
m = 1 (`train.oger.entropy_tokens`), H is the entropy of the end-of-sequence decision, which right
after `\\boxed{N}` is nearly certain: H ~ 0, g(H) ~ 1 for every correct rollout, and the modulation
never moves the bonus. This measures, on a task's own policy, which option (`last`,
`before_answer`, `answer`) actually spreads g(H) over correct rollouts, so there is something for it
to modulate.

One job: run the pipeline up to the policy stage (cached in the config's workdir), sample rollouts of
the RL pool with the hf engine recording every position's entropy (`Request.entropy_window=None`),
score them (`verify.score_response`), and for each option read H at `EntropyWindow(m, at).positions`
(the engines' own selector) and g(H) with `core.modulation` (the bonus's own gate). Prints a Markdown
table per task and writes one PNG of g(H) histograms (one panel per task):

    python -m oger.entropy_spread configs/explore.yaml configs/smollm2-arith.yaml \\
        --problems 64 64 --samples 8 4 --set 'workdir=work/spread/{name}'

`summarise` (the table's numbers from per-rollout H, correct and fallback flags) is pure and tested
(tests/test_entropy_spread.py); the rest loads models and samples.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from oger.algorithm.core import ENTROPY_AT

DEFAULT_PNG = Path("docs/results/entropy_options.png")
COLUMNS = (
    "option",
    "n correct",
    "H mean",
    "H p10",
    "H p50",
    "H p90",
    "g mean",
    "g p10",
    "g p90",
    "g std",
    "fell back to last",
)


@dataclass
class TaskSpread:
    """One task's measurement: per option, each rollout's H, g(H) and whether the option fell back to
    `last`; `correct` per rollout (the same order in every option)."""

    name: str
    problems: int
    samples: int
    seconds: float
    correct: list[bool]
    cut: list[bool] = field(default_factory=list)  # per rollout: cut at max_new_tokens (no end-of-sequence)
    h: dict[str, list[float]] = field(default_factory=dict)
    fell_back: dict[str, list[bool]] = field(default_factory=dict)
    g: dict[str, list[float]] = field(default_factory=dict)
    modulation: str = "exp"
    tau: float = 1.0
    m: int = 1


def gate(h: list[float], mode: str, tau: float, vocab_size: int | None = None) -> list[float]:
    """g(H) per value, by the bonus's own gate (`core.modulation`)."""
    import torch

    from oger.algorithm.core import modulation

    if not h:
        return []
    return modulation(torch.tensor(h, dtype=torch.float64), mode, tau, vocab_size).tolist()


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), NaN for no values."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    """Population standard deviation, NaN for no values."""
    if not xs:
        return math.nan
    mu = _mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))


def summarise(h: list[float], g: list[float], correct: list[bool], fell_back: list[bool]) -> dict:
    """The table row of one option over the CORRECT rollouts: n, H mean/p10/p50/p90, g mean/p10/p90/std
    and the share of them whose option fell back to `last` (no boxed answer found, or an empty window).
    Inputs are per rollout, in the same order."""
    if not len(h) == len(g) == len(correct) == len(fell_back):
        raise ValueError("summarise: h, g, correct and fell_back need one value per rollout")
    keep = [i for i, c in enumerate(correct) if c]
    hc, gc = [h[i] for i in keep], [g[i] for i in keep]
    fb = [fell_back[i] for i in keep]
    return {
        "n correct": len(keep),
        "H mean": _mean(hc),
        "H p10": _quantile(hc, 0.1),
        "H p50": _quantile(hc, 0.5),
        "H p90": _quantile(hc, 0.9),
        "g mean": _mean(gc),
        "g p10": _quantile(gc, 0.1),
        "g p90": _quantile(gc, 0.9),
        "g std": _std(gc),
        "fell back to last": sum(fb) / len(fb) if fb else math.nan,
    }


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.3f}"


def table(spread: TaskSpread) -> str:
    """The task's Markdown table, one row per option (over its correct rollouts)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for at in spread.h:
        row = summarise(spread.h[at], spread.g[at], spread.correct, spread.fell_back[at])
        lines.append("| " + " | ".join([f"`{at}`"] + [_fmt(row[c]) for c in COLUMNS[1:]]) + " |")
    return "\n".join(lines)


def header(spread: TaskSpread) -> str:
    n, k = len(spread.correct), sum(spread.correct)
    acc = k / n if n else math.nan
    cut = sum(c and x for c, x in zip(spread.correct, spread.cut))
    return (
        f"### {spread.name}: {spread.problems} problems x {spread.samples} samples, "
        f"{k}/{n} correct ({acc:.0%}), {cut} of them cut at max_new_tokens; m = {spread.m}, "
        f"g = {spread.modulation} (tau {spread.tau}); {spread.seconds:.0f} s"
    )


def measure(config: str, problems: int, samples: int, overrides: list[str] | None = None, seed: int = 0) -> TaskSpread:
    """Run upstream to the policy stage (cached), sample `samples` rollouts of the first `problems` of
    the RL pool with every position's entropy, and read H and g(H) under every `entropy_at` option."""
    import torch
    from transformers import AutoModelForCausalLM

    from oger import pipeline
    from oger.contract.config.load import load_config
    from oger.generation.base import Request, generate_sorted
    from oger.generation.entropy_window import EntropyWindow
    from oger.generation.hf import TransformersEngine, chat_prompt_ids
    from oger.models import tokenizer_from_folder
    from oger.stages.policy import STAGE as POLICY
    from oger.stages.policy.files import model_dir as policy_model_dir
    from oger.stages.problems import STAGE as PROBLEMS
    from oger.stages.problems.files import read_problems, rl_pool
    from oger.verify import score_response

    t0 = time.perf_counter()
    cfg = load_config(config, overrides)
    refs = pipeline.run_local(cfg, until=POLICY)
    t_up = time.perf_counter()
    policy_dir = policy_model_dir(refs[POLICY])
    dtype = torch.float32 if cfg.policy.dtype == "float32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype)
    tokenizer = tokenizer_from_folder(policy_dir)
    table_ = read_problems(refs[PROBLEMS])
    pool = rl_pool(table_, cfg.train.split, cfg.train.max_prompts).head(problems)
    questions, answers = pool["question"].to_list(), pool["answer"].to_list()
    prompts = [chat_prompt_ids(tokenizer, q, cfg.policy.instruction, cfg.policy.system_prompt) for q in questions]

    r = cfg.train.rollout
    request = Request(
        n=samples,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        seed=seed,
        record_entropy=True,
        entropy_window=None,  # every position's entropy (hf.generate: range(len(response)))
    )
    engine = TransformersEngine(model, tokenizer, "hf", batch_size=64)
    try:
        rolls = generate_sorted(engine, prompts, request)
    finally:
        engine.close()
    t_gen = time.perf_counter()

    o = cfg.train.oger
    m = o.entropy_tokens
    vocab = int(model.config.vocab_size)
    spread = TaskSpread(cfg.name, len(prompts), samples, 0.0, [], modulation=o.modulation, tau=float(o.tau), m=m)
    for at in ENTROPY_AT:
        spread.h[at], spread.fell_back[at] = [], []
    for roll in rolls:
        _, ok = score_response(roll.text, answers[roll.prompt_index])
        spread.correct.append(bool(ok))
        spread.cut.append(roll.finish_reason == "length")
        ids = roll.response_ids
        if len(roll.entropies) != len(ids):
            raise RuntimeError(f"expected one entropy per token, got {len(roll.entropies)} for {len(ids)}")
        last = EntropyWindow(m, "last").positions(ids)
        for at in ENTROPY_AT:
            pos = EntropyWindow(m, at).positions(ids, tokenizer)
            spread.h[at].append(_mean([roll.entropies[p] for p in pos]))
            spread.fell_back[at].append(at != "last" and pos == last)
    for at in ENTROPY_AT:
        spread.g[at] = gate(spread.h[at], o.modulation, float(o.tau), vocab)
    spread.seconds = time.perf_counter() - t0
    print(
        f"{cfg.name}: upstream {t_up - t0:.0f} s, sampling {len(rolls)} rollouts {t_gen - t_up:.0f} s, "
        f"total {spread.seconds:.0f} s",
        flush=True,
    )
    out = cfg.workdir_path / "entropy_spread.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spread.__dict__))
    return spread


def plot(spreads: list[TaskSpread], out: Path = DEFAULT_PNG) -> Path:
    """Histograms of g(H) over correct rollouts, one line per option, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spreads), figsize=(5.5 * len(spreads), 3.8), squeeze=False)
    bins = [i / 40 for i in range(41)]
    for ax, s in zip(axes[0], spreads):
        for at in s.g:
            gc = [g for g, c in zip(s.g[at], s.correct) if c]
            if gc:
                ax.hist(gc, bins=bins, histtype="step", linewidth=1.6, label=f"{at} (n={len(gc)})")
        ax.set_title(f"{s.name}: g(H) over correct rollouts")
        ax.set_xlabel(f"g(H) = {s.modulation}(-H/{s.tau:g})" if s.modulation == "exp" else f"g(H) ({s.modulation})")
        ax.set_ylabel("rollouts")
        ax.set_yscale("log")
        ax.set_xlim(0, 1.02)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m oger.entropy_spread", description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="config files (one panel and table each)")
    p.add_argument(
        "--problems", type=int, nargs="+", default=[64], help="RL-pool problems per config (one for all, or one each)"
    )
    p.add_argument(
        "--samples", type=int, nargs="+", default=[4], help="rollouts per problem (one for all, or one each)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override, as `oger --set`")
    p.add_argument("--out", type=Path, default=DEFAULT_PNG, help="the PNG")
    a = p.parse_args(argv)
    for option, values in (("--problems", a.problems), ("--samples", a.samples)):
        if len(values) not in (1, len(a.configs)):
            p.error(f"{option}: one value, or one per config")
    problems = a.problems * len(a.configs) if len(a.problems) == 1 else a.problems
    samples = a.samples * len(a.configs) if len(a.samples) == 1 else a.samples
    spreads = []
    for config, n, k in zip(a.configs, problems, samples):
        spreads.append(measure(config, n, k, a.overrides, a.seed))
    for s in spreads:
        print(f"\n{header(s)}\n\n{table(s)}")
    print(f"\nwrote {plot(spreads, a.out)}")


if __name__ == "__main__":
    main()
