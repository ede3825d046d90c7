"""`oger bonus CONFIG --input FILE.jsonl [--json]`: inspect the OGER reward without training.

Each input line is one problem: {"problem", "answer", "teacher_traces": [...], "rollouts": [{"text",
"correct", "entropy" (optional)}]}. Its rollouts form one group and go through the trainer's own
reward step (`oger.algorithm.reward.compute_rewards`) with the config's `train` section and
`index.encoder`, so what is printed is what training would pay: divergence, g(H), each guard's
verdict, bonus, reward and advantage per rollout.
"""

from __future__ import annotations

import json
from pathlib import Path

from oger.algorithm.reward import cached_embedder, compute_rewards
from oger.algorithm.samples import Sample
from oger.contract.config import OgerConfig, load_config
from oger.contract.errors import ConfigError


def read_cases(path: Path) -> list[dict]:
    """The input lines, checked: a clear error names the file, line and field."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    cases = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            case = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON ({e})") from e
        for field, kind in (("problem", str), ("answer", str), ("teacher_traces", list), ("rollouts", list)):
            if not isinstance(case.get(field), kind):
                raise ConfigError(f"{where}: field {field!r} must be a {kind.__name__}")
        if not all(isinstance(t, str) for t in case["teacher_traces"]):
            raise ConfigError(f"{where}: teacher_traces must be strings")
        if not case["rollouts"]:
            raise ConfigError(f"{where}: rollouts is empty")
        for k, r in enumerate(case["rollouts"]):
            if not isinstance(r, dict) or not isinstance(r.get("text"), str) or not isinstance(r.get("correct"), bool):
                raise ConfigError(f"{where}: rollouts[{k}] needs text (str) and correct (bool)")
            if r.get("entropy") is not None and not isinstance(r["entropy"], (int, float)):
                raise ConfigError(f"{where}: rollouts[{k}].entropy must be a number")
        cases.append(case)
    if not cases:
        raise ConfigError(f"{path}: no input lines")
    return cases


def score_cases(cfg: OgerConfig, cases: list[dict], embed) -> list[dict]:
    """Per input line: {problem, rollouts: [{divergence, gate, guards, bonus, reward, advantage, ...}]}."""
    out = []
    for k, case in enumerate(cases):
        pid = f"case-{k}"
        samples = [
            Sample(
                0,
                pid,
                [],
                [],
                r["text"],
                False,
                correct=r["correct"],
                entropies=[] if r.get("entropy") is None else [float(r["entropy"])],
            )
            for r in case["rollouts"]
        ]
        teachers = {pid: (case["teacher_traces"], None)} if case["teacher_traces"] else {}
        step = compute_rewards(samples, teachers, embed, cfg.train, seed=k)
        rows = [
            {
                "text": r["text"],
                "correct": r["correct"],
                "divergence": row["divergence"],
                "gate": row["gate"],
                "guards": row["guards"],
                "bonus": row["bonus"],
                "reward": row["reward"],
                "advantage": row["advantage"],
            }
            for r, row in zip(case["rollouts"], step.rows)
        ]
        out.append({"problem": case["problem"], "rollouts": rows})
    return out


def cmd_bonus(args) -> int:
    from oger.encoder import load_encoder

    cfg = load_config(args.config, args.overrides)
    cases = read_cases(Path(args.input))
    embed = cached_embedder(load_encoder(cfg.index.encoder), cfg.index.long_text)
    results = score_cases(cfg, cases, embed)
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for r in results:
        table = Table(title=r["problem"][:100])
        for col in ("#", "rollout", "correct", "d", "g(H)", "guards failed", "bonus", "reward", "adv"):
            table.add_column(col, overflow="fold")
        for i, x in enumerate(r["rollouts"]):
            failed = ", ".join(k for k, ok in (x["guards"] or {}).items() if not ok) or "-"
            num = lambda v: "-" if v is None else f"{v:.3f}"
            table.add_row(
                str(i),
                x["text"][:40].replace("\n", " "),
                str(x["correct"]),
                num(x["divergence"]),
                num(x["gate"]),
                failed,
                num(x["bonus"]),
                num(x["reward"]),
                num(x["advantage"]),
            )
        console.print(table)
    return 0
