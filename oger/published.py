"""Published accuracies beside ours: data/reference/published_results.json, matched by backbone.

A config names its backbone in `evaluate.backbone` (the paper configs do); otherwise it is inferred
from `policy.model` when a published backbone's name is part of it (longest name first, so
Qwen2.5-Math-1.5B never matches a 7B model). The tiny policy has no published row, and the report
says so in one line rather than printing an empty comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from oger.contract.config import load_config
from oger.contract.errors import DataError
from oger.data.roots import find_data_file

REFERENCE = "reference/published_results.json"
# The benchmark columns of the reference file, in report order (our registry uses the same names).
COLUMNS = [
    "aime24",
    "aime25",
    "amc",
    "math500",
    "minerva",
    "olympiadbench",
    "math_avg",
    "arc_c",
    "gpqa_diamond",
    "mmlu_pro",
    "ood_avg",
]


@dataclass
class Published:
    """The published methods for one backbone: method -> {benchmark: accuracy %}, and where from."""

    backbone: str | None
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # source id -> citation

    @property
    def found(self) -> bool:
        return bool(self.methods)

    def value(self, method: str, benchmark: str) -> float | None:
        return self.methods.get(method, {}).get(benchmark)

    def missing_line(self) -> str:
        who = f"backbone {self.backbone}" if self.backbone else "this policy (no backbone named)"
        return (
            f"No published row for {who} in data/{REFERENCE}; published results exist for "
            f"{', '.join(backbones()) or 'no backbone'}."
        )

    def source_line(self) -> str:
        return "Published (%): " + "; ".join(f"{k}: {v}" for k, v in self.sources.items())

    def as_dict(self) -> dict:
        """What summary.json and `oger status --json` record."""
        return {"backbone": self.backbone, "methods": self.methods, "sources": self.sources}


def _load(path: Path | None = None) -> dict:
    path = path or find_data_file(REFERENCE)
    if path is None:
        return {"results": [], "sources": {}}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read published results: {exc}") from None
    for i, row in enumerate(data.get("results", []), start=1):
        if not isinstance(row, dict) or not row.get("method") or not row.get("backbone"):
            raise DataError(f"{path}: results row {i}: needs 'method' and 'backbone'")
    return data


def backbones(path: Path | None = None) -> list[str]:
    return sorted({r["backbone"] for r in _load(path)["results"]})


def backbone_of(cfg) -> str | None:
    """`evaluate.backbone`, else the published backbone whose name is part of `policy.model`."""
    if cfg.evaluate.backbone:
        return cfg.evaluate.backbone
    model = (cfg.policy.model or "").lower() if cfg.policy.source == "model" else ""
    for name in sorted(backbones(), key=len, reverse=True):
        if model and name.lower() in model:
            return name
    return None


def published_for(backbone: str | None, path: Path | None = None) -> Published:
    """Rows of the reference file for `backbone` (case-insensitive), one entry per method; a method
    published by several sources is merged, the first source giving a number winning."""
    data = _load(path)
    out = Published(backbone)
    if not backbone:
        return out
    for row in data["results"]:
        if row["backbone"].lower() != backbone.lower():
            continue
        vals = out.methods.setdefault(row["method"], {})
        for col in COLUMNS:
            if isinstance(row.get(col), (int, float)) and col not in vals:
                vals[col] = float(row[col])
        src = row.get("source")
        if src:
            out.sources.setdefault(src, data.get("sources", {}).get(src, src))
    return out


def published_for_config(cfg) -> Published:
    return published_for(backbone_of(cfg))


def comparison_rows(ours: dict, pub: Published) -> list[dict]:
    """One row per benchmark we evaluated: our base and trained (%) and each published method."""
    rows = []
    for name, e in ours.items():
        if not isinstance(e, dict) or "base" not in e:
            continue
        row = {"benchmark": name, "base": _pct(e.get("base")), "trained": _pct(e.get("trained"))}
        row.update({m: pub.value(m, name) for m in pub.methods})
        rows.append(row)
    return rows


def comparison_markdown(ours: dict, pub: Published) -> list[str]:
    """The report's "published results" section: a table when the backbone has rows, else one line."""
    lines = ["", "## Published results (same backbone)", ""]
    if not pub.found:
        return lines + [pub.missing_line()]
    methods = list(pub.methods)
    lines += [
        f"Backbone {pub.backbone}. Ours: this run's policy-stage model (base) and trained model, "
        "accuracy (%); published columns as reported (– where not published).",
        "",
        "| benchmark | ours base | ours trained | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for r in comparison_rows(ours, pub):
        cells = [cell(r[m]) for m in methods]
        lines.append(f"| {r['benchmark']} | {cell(r['base'])} | {cell(r['trained'])} | " + " | ".join(cells) + " |")
    return lines + ["", pub.source_line()]


def _pct(v) -> float | None:
    return None if v is None else round(100 * v, 1)


def cell(v) -> str:
    """An accuracy (%) as every report shows it: one decimal, – where not published."""
    return "–" if v is None else f"{v:.1f}"


def published_for_run(run_dir: Path) -> Published:
    """The published rows for a run's config (its backbone), read from the run's summary.json."""
    try:
        data = json.loads((Path(run_dir) / "summary.json").read_text())
        cfg = load_config(data["config"], data.get("overrides") or [])
    except Exception:  # the config file moved since the run: say so rather than fail the report
        return Published(None)
    return published_for_config(cfg)
