"""Rounds of fresh teacher traces in one workdir (`teachers.round`, e.g. the nightly run's date).

Rounds are ordered by when their first teachers artifact was written, not by name, so `r10`
after `r9` and dates both order correctly and rerunning an old round never makes it "newer".
From that order come: the checkpoint a round continues from (`train.init_from: previous_round`),
the run a round's report compares against, and `oger status`'s per-round view.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from oger.contract import artifact_manifest, read_manifest, stage_root
from oger.contract.artifacts import canonical_json
from oger.contract.errors import StageError
from oger.contract.lock import is_locked
from oger.stages.evaluate import STAGE as EVALUATE
from oger.stages.index import STAGE as INDEX
from oger.stages.index.files import list_versions
from oger.stages.policy import STAGE as POLICY
from oger.stages.teachers import STAGE as TEACHERS
from oger.stages.train import STAGE as TRAIN
from oger.stages.train.files import model_dir as trained_model_dir

_NEVER = datetime.max.replace(tzinfo=timezone.utc)
TRAIN_COMPARED = (
    "reward_first_20pct",
    "reward_last_20pct",
    "env_reward_last_20pct",
    "bonus_mean",
    "mixed_group_fraction",
    "heldout_accuracy",
)


def _when(ts: str | None) -> datetime:
    if not ts:
        return _NEVER
    t = datetime.fromisoformat(ts)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def manifests(workdir: Path, stage: str) -> list[dict]:
    """Complete manifests of a stage's artifacts, each with its "path"."""
    out = []
    for d in sorted(stage_root(workdir, stage).glob("*")):
        m = read_manifest(d)
        if m and m.get("complete") and not d.name.startswith("."):
            out.append({**m, "path": str(d)})
    return out


def first_seen(workdir: Path) -> dict[str, datetime]:
    """round -> when it was first seen: its first teachers artifact or its first run, whichever came
    first (runs are on record after `oger gc` removed a round's artifacts, so the order of rounds —
    and which checkpoint `init_from: previous_round` continues from — does not change)."""
    seen: dict[str, datetime] = {}
    stamps = [(str(m.get("config", {}).get("round")), m.get("created_at")) for m in manifests(workdir, TEACHERS)]
    stamps += [(str(d.get("round")), d.get("started_at")) for d in run_summaries(workdir) if d.get("round")]
    for rnd, stamp in stamps:
        when = _when(stamp)
        if rnd not in seen or when < seen[rnd]:
            seen[rnd] = when
    return seen


def earlier_rounds(workdir: Path, rnd: str) -> list[str]:
    """Rounds first seen before `rnd`, most recent first (all rounds if `rnd` is new)."""
    seen = first_seen(workdir)
    mine = seen.get(rnd, _NEVER)
    return sorted((r for r, t in seen.items() if r != rnd and t < mine), key=seen.get, reverse=True)


def train_round(workdir: Path, m: dict) -> str | None:
    """The round a train artifact belongs to (recorded in its metrics; older ones: its index)."""
    if m.get("metrics", {}).get("round"):
        return m["metrics"]["round"]
    index_key = m.get("inputs", {}).get(INDEX, "")
    rounds = (artifact_manifest(workdir, INDEX, index_key) or {}).get("metrics", {}).get("rounds", [])
    return rounds[0] if len(rounds) == 1 else None


def _same_recipe(workdir: Path, m: dict, policy_slice) -> bool:
    """The checkpoint was trained from a policy built by the same policy config (architecture,
    tokenizer recipe, SFT), so continuing from it is meaningful."""
    policy_key = m.get("inputs", {}).get(POLICY, "")
    pm = artifact_manifest(workdir, POLICY, policy_key) or {}
    return pm.get("config") == json.loads(canonical_json(policy_slice))


def previous_checkpoint(workdir: Path, rnd: str, stage: str, plans: dict) -> dict | None:
    """Manifest of the newest artifact of `stage` (the train stage: a trained model) of the most recent
    earlier round that has one, trained from a policy of the plan's recipe (`plans`: the plan so far,
    `pipeline.plan`); None when no earlier round has one."""
    policy_slice = plans[POLICY].config_slice
    trains = [m for m in manifests(workdir, stage) if _same_recipe(workdir, m, policy_slice)]
    for earlier in earlier_rounds(workdir, rnd):
        mine = [m for m in trains if train_round(workdir, m) == earlier]
        if mine:
            return max(mine, key=lambda m: _when(m.get("created_at")))
    return None


def run_summaries(workdir: Path) -> list[dict]:
    """Every run's summary.json (those `oger gc` archived included, marked "archived"), with a
    "running" run that no longer holds the workdir lock shown as "interrupted" (`run_state`)."""
    out = []
    holder = None
    runs = Path(workdir) / "runs"
    for f in sorted(runs.glob("archive/*.json")):  # runs whose folders `oger gc` removed
        try:
            out.append({**json.loads(f.read_text()), "summary": str(f), "archived": True})
        except (OSError, ValueError):
            continue
    for f in sorted(runs.glob("*/summary.json")):
        try:
            d = {**json.loads(f.read_text()), "summary": str(f)}
        except (OSError, ValueError):
            continue  # a run being written right now
        if d.get("status") == "running":
            holder = holder if holder is not None else (is_locked(workdir) or {})
            d["status"] = run_state(d, holder)
        out.append(d)
    return out


def round_order(runs: list[dict]) -> list[str]:
    """Rounds by their first run's start (run records outlive the artifacts `oger gc` removes)."""
    first: dict[str, str] = {}
    for d in runs:
        r = str(d.get("round"))
        first[r] = min(first.get(r, "\uffff"), str(d.get("started_at")))
    return sorted(first, key=lambda r: (first[r], r))


def latest_completed(runs: list[dict], rnd: str, needs: str | None = None) -> dict | None:
    """The round's latest completed run (one that ran stage `needs`, if given), None if none."""
    done = [
        d
        for d in runs
        if str(d.get("round")) == rnd
        and d.get("status") == "completed"
        and (needs is None or needs in d.get("stages", {}))
    ]
    return max(done, key=lambda d: str(d.get("finished_at"))) if done else None


def run_state(summary: dict, holder: dict) -> str:
    """A run's state from its record and the workdir lock's holder (`oger.contract.lock.is_locked`,
    {} when free): a record that says "running" is running only while its own run holds the lock; a
    killed or crashed process released it (the kernel drops a flock with its holder), so the run is
    "interrupted" — known at once, without a timer. Other states are the record's."""
    if summary.get("status") != "running":
        return summary.get("status", "?")
    return "running" if holder.get("run_id") == summary.get("run_id") else "interrupted"


def previous_run(workdir: Path, rnd: str, exclude_run_id: str | None = None) -> dict | None:
    """The latest completed run (with train or evaluate) of the most recent earlier round."""
    runs = [
        d
        for d in run_summaries(workdir)
        if d.get("status") == "completed"
        and d.get("run_id") != exclude_run_id
        and {TRAIN, EVALUATE} & set(d.get("stages", {}))
    ]
    for earlier in earlier_rounds(workdir, rnd):
        mine = [d for d in runs if d.get("round") == earlier]
        if mine:
            return max(mine, key=lambda d: _when(d.get("finished_at")))
    return None


def _pairs(prev: dict, cur: dict) -> list[tuple[str, object, object]]:
    """(metric, previous, this) for train metrics, and evaluate metrics when both runs have them."""
    rows = []
    pt = prev["stages"].get(TRAIN, {}).get("metrics", {})
    ct = cur["stages"].get(TRAIN, {}).get("metrics", {})
    if pt and ct:
        rows += [
            (f"train.{k}", pt.get(k), ct.get(k))
            for k in TRAIN_COMPARED
            if pt.get(k) is not None or ct.get(k) is not None
        ]
    pe = prev["stages"].get(EVALUATE, {}).get("metrics", {})
    ce = cur["stages"].get(EVALUATE, {}).get("metrics", {})
    if pe and ce:
        for bench in sorted(set(pe) | set(ce)):
            a, b = pe.get(bench), ce.get(bench)
            if isinstance(a, dict) or isinstance(b, dict):
                for side in ("base", "trained"):
                    rows.append((f"evaluate.{bench}.{side}", (a or {}).get(side), (b or {}).get(side)))
    return rows


def _cell(v) -> str:
    return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def round_comparison_section(data: dict) -> list[str]:
    """Markdown comparing this run with the previous round's latest completed run; records what
    it compared with in `data["compared_with"]` (so summary.json says it too)."""
    if not {TRAIN, EVALUATE} & set(data.get("stages", {})):
        return []
    prev = previous_run(Path(data["workdir"]), str(data["round"]), data["run_id"])
    if prev is None:
        data["compared_with"] = None
        return [
            "",
            "## Rounds",
            "",
            f"Round `{data['round']}` is the first round with a completed "
            "training run in this workdir: nothing to compare with.",
        ]
    rows = _pairs(prev, data)
    data["compared_with"] = {
        "round": prev["round"],
        "run_id": prev["run_id"],
        "summary": prev["summary"],
        "metrics": {m: {"previous": a, "this": b} for m, a, b in rows},
    }
    lines = [
        "",
        f"## Rounds: `{data['round']}` vs `{prev['round']}`",
        "",
        f"Previous round `{prev['round']}`: run `{prev['run_id']}` (finished {prev.get('finished_at', '?')}).",
        "",
        f"| metric | {prev['round']} | {data['round']} | change |",
        "|---|---|---|---|",
    ]
    for metric, a, b in rows:
        delta = (
            _cell(round(b - a, 4))
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
            else ""
        )
        lines.append(f"| {metric} | {_cell(a)} | {_cell(b)} | {delta} |")
    return lines


def round_status(workdir: Path, table: str) -> list[dict]:
    """Per round, oldest first: index tags, trained checkpoints, evaluation summaries, last run."""
    workdir = Path(workdir)
    seen = first_seen(workdir)
    rounds: dict[str, dict] = {}

    def row(r: str) -> dict:
        return rounds.setdefault(
            r,
            {
                "round": r,
                "first_seen": seen.get(r),
                "index_tags": [],
                "checkpoints": [],
                "evaluations": [],
                "last_run": None,
            },
        )

    try:
        versions = list_versions(workdir, table)
    except StageError:
        versions = []
    for v in versions:
        for r in v["rounds"] or ["?"]:
            row(r)["index_tags"].append(v)
    train_rounds = {}
    by_time = lambda m: _when(m.get("created_at"))  # noqa: E731
    for m in sorted(manifests(workdir, TRAIN), key=by_time):
        r = train_round(workdir, m) or "?"
        train_rounds[m["key"]] = r
        met = m.get("metrics", {})
        row(r)["checkpoints"].append(
            {
                "key": m["key"],
                "path": str(trained_model_dir(m["path"])),
                "created_at": m.get("created_at"),
                "algorithm": met.get("algorithm"),
                "init_from": met.get("init_from", "policy"),  # the option's value
                "index_tag": m.get("inputs", {}).get(INDEX),
                "reward_last_20pct": met.get("reward_last_20pct"),
                "heldout_accuracy": met.get("heldout_accuracy"),
            }
        )
    for m in sorted(manifests(workdir, EVALUATE), key=by_time):
        r = train_rounds.get(m.get("inputs", {}).get(TRAIN, ""), "?")
        row(r)["evaluations"].append(
            {
                "key": m["key"],
                TRAIN: m.get("inputs", {}).get(TRAIN),
                "created_at": m.get("created_at"),
                "metrics": m.get("metrics", {}),
            }
        )
    for d in run_summaries(workdir):
        r = row(str(d.get("round")))
        if r["last_run"] is None or _when(d.get("started_at")) > _when(r["last_run"]["started_at"]):
            r["last_run"] = {k: d.get(k) for k in ("run_id", "status", "started_at", "finished_at")}
    return sorted(rounds.values(), key=lambda r: (r["first_seen"] or _NEVER, r["round"]))
