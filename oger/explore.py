"""The explore task's strategies, told apart exactly (configs/explore.yaml, docs/RESULTS.md).

Problems are products `a * b` with one small factor. Strategy A (the teachers' only one, the
scripted style `add_first`) adds a up b times: b - 1 lines, which run out of the token budget when b
is large. Strategy B (`swap`, rare in the policy's SFT data, never in the index) swaps the factors
and adds b up a times: a - 1 lines, short when a is the small factor. A rollout's strategy is read
from the repeated addition it announces ("Add {x} {n} times."): x = a and n = b is A, x = b and
n = a is B (with a = b, B when it says "Swap" first); anything else is "other". So every rollout's
strategy is known, and a correct rollout that moved away from the teachers is one that used B.
The reading itself is the task's labeller (`oger.labels.STRATEGY`), which the trainer logs generically;
this module is the task's analysis: problem classes, the bonus pre-check, outcomes by strategy.
"""

from __future__ import annotations

from pathlib import Path

from oger.labels import STRATEGY, factors

STRATEGIES = STRATEGY.all_labels  # ("A", "B", "other"): the task's labeller (oger.labels) reads them


def a_fits(question: str, budget: int, count_tokens) -> bool | None:
    """Whether strategy A's solution of the question fits `budget` tokens (`count_tokens(text)`),
    None for a question of another task. The problem classes of the report: A-feasible (True) and
    A-infeasible (False: only B can finish in time, when it fits)."""
    from oger.synthetic import scripted_solution

    if factors(question) is None:
        return None
    return count_tokens(scripted_solution("add_first", question, ("a_fits",), 0.0)) <= budget


CLASSES = ("A-feasible", "A-infeasible")


def problem_classes(problems_path: str, policy_path: str | None, budget: int) -> dict[str, str]:
    """{problem_id: "A-feasible" | "A-infeasible"} of the explore questions in a problems artifact,
    counted in the policy's tokenizer against `budget` (the evaluation's max_new_tokens), so the
    sweep report splits the held-out accuracy by class; {} for any other task."""
    from oger.stages.problems.files import read_problems

    problems = read_problems(problems_path, ["problem_id", "question"])
    explore = [(p, q) for p, q in problems.iter_rows() if factors(q) is not None]
    if not explore or policy_path is None:
        return {}
    from oger.models import tokenizer_from_folder
    from oger.stages.policy.files import model_dir

    tok = tokenizer_from_folder(model_dir(policy_path))
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids) + 1  # + EOS
    return {p: CLASSES[0] if a_fits(q, budget, count) else CLASSES[1] for p, q in explore}


def bonus_by_strategy(cfg, questions: list[str], entropy: float = 1.0) -> dict[str, dict[str, float]]:
    """What the trainer's reward step pays correct A and B solutions of `questions` against A-only
    references (the scripted teacher's traces, as the index holds them): mean divergence d, share
    passing every guard, mean bonus, and each guard's share of failures (`fails_<guard>`, where any
    fails) — the check, before training, that the bonus can point at B at all (MiniLM must see B as far
    from A, and no guard, e.g. the length ratio, may zero it).
    Through `oger bonus`'s scoring, so with the config's train.oger and index.encoder."""
    from oger.algorithm.reward import cached_embedder
    from oger.commands.bonus import score_cases
    from oger.encoder import load_encoder
    from oger.synthetic import scripted_solution

    cases = []
    for k, q in enumerate(questions):
        refs = [scripted_solution("add_first", q, ("ref", k, i), 0.0) for i in range(2)]
        rollouts = [
            {"text": scripted_solution(s, q, ("rollout", k), 0.0), "correct": True, "entropy": entropy}
            for s in ("add_first", "swap")
        ]
        cases.append({"problem": q, "answer": "", "teacher_traces": refs, "rollouts": rollouts})
    embed = cached_embedder(load_encoder(cfg.index.encoder), cfg.index.long_text)
    scored = score_cases(cfg, cases, embed)
    out = {}
    for i, name in enumerate(("A", "B")):
        rows = [case["rollouts"][i] for case in scored]
        out[name] = {
            "divergence": sum(r["divergence"] for r in rows) / len(rows),
            "guards_pass": sum(all((r["guards"] or {}).values()) for r in rows) / len(rows),
            "bonus": sum(r["bonus"] for r in rows) / len(rows),
        }
        guards = sorted({g for r in rows for g in (r["guards"] or {})})
        for g in guards:
            failed = sum(not (r["guards"] or {}).get(g, True) for r in rows) / len(rows)
            if failed:
                out[name][f"fails_{g}"] = failed
    return out


def strategy_outcomes(sweep_summary: str | Path, early_steps: int = 6) -> list[dict]:
    """From a sweep's training rollouts: per arm group (grpo / luffy / the bonus arms), phase (steps
    <= early_steps or later), problem class by what fits the 64-token budget (A: b <= 4, B: a <= 4; the
    test checks these bounds in the policy's tokens) and strategy, how many on-policy rollouts used
    it and the share correct — why a strategy's share moved."""
    import json

    from oger.stages.problems import STAGE as PROBLEMS
    from oger.stages.problems.files import read_problems
    from oger.stages.train import STAGE as TRAIN
    from oger.stages.train.files import ROLLOUTS_FILE

    data = json.loads(Path(sweep_summary).read_text())
    problems = read_problems(data["upstream"][PROBLEMS][0]["path"], ["problem_id", "question"])
    question = dict(problems.iter_rows())
    counts: dict[tuple, list[int]] = {}
    for pair in data["pairs"]:
        arm = pair["arm"] if pair["arm"] in ("grpo", "luffy") else "bonus arms"
        path = Path(pair["stages"][TRAIN]["path"]) / ROLLOUTS_FILE
        for line in path.read_text().splitlines():
            r = json.loads(line)
            ab = factors(question.get(r["problem_id"], ""))
            if r["off_policy"] or ab is None:
                continue
            cls = "only B fits (b > 4)" if ab[1] > 4 else "only A fits (a > 4)" if ab[0] > 4 else "both fit"
            label = r.get("label", r.get("strategy"))  # "strategy": rows of train artifacts before the labeller hook
            key = (arm, "early" if r["step"] <= early_steps else "late", cls, label)
            c = counts.setdefault(key, [0, 0])
            c[0] += 1
            c[1] += bool(r["correct"])
    return [
        {"arms": k[0], "phase": k[1], "class": k[2], "strategy": k[3], "rollouts": n, "correct": round(ok / n, 3)}
        for k, (n, ok) in sorted(counts.items())
    ]


if __name__ == "__main__":  # python -m oger.explore CONFIG: the check on the config's A-infeasible pool
    import sys

    from oger.contract.config import load_config

    if len(sys.argv) > 2:  # python -m oger.explore CONFIG SWEEP_SUMMARY: outcomes by strategy
        print("| arms | phase | class | strategy | rollouts | correct |\n|---|---|---|---|---|---|")
        for row in strategy_outcomes(sys.argv[2]):
            print("| " + " | ".join(str(v) for v in row.values()) + " |")
        sys.exit(0)
    config = load_config(sys.argv[1])
    from oger.data.sources import load_source

    pool = [r["question"] for r in load_source(config.problems.sources[0]) if r["split"] == config.train.split]
    for strategy, row in bonus_by_strategy(config, pool).items():
        print(strategy, {k: round(v, 4) for k, v in row.items()})
