"""The sweep report: `<workdir>/sweeps/<id>/report.md`, PNGs and the analysis in summary.json.

Tables per benchmark and arm (mean over seeds with both 95% intervals, the verdicts' one named),
paired differences against the baseline arm with a plain-language verdict each, pass@k curves,
training curves of all arms overlaid, and published numbers beside when the backbone matches
(`oger.published`: the lookup and numbers of the run report and `oger status`).
`results_section.md` is the same in short, for `docs/RESULTS.md` (`make ablate` fills it in).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from oger.contract.artifacts import atomic_write
from oger.published import Published, cell, published_for_config
from oger.stages.train.files import swept_metrics
from oger.sweep import results as res

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- sweep-results:begin -->", "<!-- sweep-results:end -->"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _ci(ci: dict) -> str:
    return "–" if ci["lo"] is None else f"[{_pct(ci['lo'])}, {_pct(ci['hi'])}]"


def _dci(ci: dict) -> str:
    return "–" if ci["lo"] is None else f"[{100 * ci['lo']:+.1f}, {100 * ci['hi']:+.1f}]"


def interval_note(method: str, confidence: float, resamples: int) -> str:
    c = round(100 * confidence)
    boot = (
        f"percentile bootstrap over seeds and problems ({resamples} resamples; each draws seeds "
        f"and, per benchmark, problems with replacement)"
    )
    t = "Student-t over the per-seed means (df = seeds − 1; needs 2 seeds)"
    chosen = boot if method == "bootstrap" else t
    other = t if method == "bootstrap" else boot
    return (
        f"Intervals are {c}% confidence intervals. Verdicts use the {method} interval: {chosen}. "
        f"The other column: {other}. Per-problem scores are avg@k; paired differences subtract per "
        f"(seed, problem) on the seeds both arms ran. Few seeds make any interval coarse."
    )


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, dpi: int = 110) -> None:
    """Lay out, write the PNG (atomically: a temp sibling, renamed) and free the figure (pyplot
    keeps every open figure alive)."""
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        _plt().close(fig)


def plot_accuracy(results: dict, out: Path, method: str) -> None:
    plt = _plt()
    targets = list(results)
    fig, axes = plt.subplots(1, len(targets), figsize=(max(4.0, 3.2 * len(targets)), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        rows = results[target]["rows"]
        names = list(rows)
        means = [100 * rows[n]["mean"] for n in names]
        err = [
            [0 if rows[n]["ci"]["lo"] is None else 100 * (rows[n]["mean"] - rows[n]["ci"]["lo"]) for n in names],
            [0 if rows[n]["ci"]["hi"] is None else 100 * (rows[n]["ci"]["hi"] - rows[n]["mean"]) for n in names],
        ]
        ax.bar(
            range(len(names)),
            means,
            yerr=err,
            capsize=4,
            color=["0.7", *[f"C{i}" for i in range(len(names))]][: len(names)],
        )
        for i, n in enumerate(names):  # the seeds themselves
            ax.plot([i] * len(rows[n]["per_seed"]), [100 * v for v in rows[n]["per_seed"]], "k.", ms=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(target, fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"mean over seeds with the 95% {method} CI; dots: seeds", fontsize=9)
    _save(fig, out)


def plot_differences(comparisons: list[dict], baseline: str, out: Path, method: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(comparisons) + 1.4))
    labels = [f"{c['arm']} − {baseline} ({c['benchmark']})" for c in comparisons]
    for i, c in enumerate(comparisons):
        ci = c["ci"]
        if ci["lo"] is not None:
            ax.plot([100 * ci["lo"], 100 * ci["hi"]], [i, i], color="C0", lw=2)
        ax.plot(
            100 * c["diff"], i, "o", color="C3" if ci["lo"] is not None and (ci["lo"] > 0 or ci["hi"] < 0) else "C0"
        )
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference (points), 95% {method} CI")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, out)


def plot_pass_at_k(pass_k: dict, out: Path) -> None:
    plt = _plt()
    benches = list(pass_k)
    fig, axes = plt.subplots(1, len(benches), figsize=(max(4.0, 3.6 * len(benches)), 3.4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        for name, ys in pass_k[bench].items():
            ax.plot(
                range(1, len(ys) + 1),
                [100 * y for y in ys],
                marker=".",
                label=name,
                ls="--" if name == res.BASE else "-",
            )
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.set_title(bench, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out)


def plot_training(curves: dict, out: Path) -> None:
    plt = _plt()
    metrics = list(curves)
    cols = min(3, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        for i, (arm, c) in enumerate(curves[metric].items()):
            ax.plot(c["step"], c["mean"], color=f"C{i}", lw=1.4, label=arm)
            ax.fill_between(c["step"], c["lo"], c["hi"], color=f"C{i}", alpha=0.15)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("training curves: mean over seeds, band = min..max", fontsize=9)
    _save(fig, out, dpi=100)


# --------------------------------------------------------------------------- report


def explore_classes(sp, upstream: dict) -> dict[str, str]:
    """The explore task's problem classes (oger.explore.problem_classes) from the sweep's shared
    problems and policy artifacts; {} for other tasks."""
    from oger.explore import problem_classes
    from oger.stages.policy import STAGE as POLICY
    from oger.stages.problems import STAGE as PROBLEMS

    first = lambda stage: (upstream.get(stage) or [{}])[0].get("path")
    if first(PROBLEMS) is None:
        return {}
    return problem_classes(first(PROBLEMS), first(POLICY), sp.base.evaluate.max_new_tokens)


def write_report(sp, record) -> Path:
    """Analyse the finished pairs, add the analysis to summary.json, write report.md, the PNGs and
    results_section.md. Returns report.md's path."""
    s = sp.settings
    arms = [a.name for a in sp.arms]
    collected = res.collect(arms, record.data["pairs"], explore_classes(sp, record.data["upstream"]))
    analysis = res.analyse(collected, arms, sp.baseline, s.interval, s.confidence, s.bootstrap_resamples)
    curves = res.training_curves(collected["histories"], swept_metrics(sp.base))
    published = published_for_config(sp.base)
    data = record.data
    data.update(analysis)
    data["interval"] = {"method": s.interval, "confidence": s.confidence, "resamples": s.bootstrap_resamples}
    data["training"] = res.last_fraction_means(curves)
    data["published"] = published.as_dict()
    started = datetime.fromisoformat(data["started_at"])
    data["wall_seconds"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    out = sp.dir
    pngs = {}
    if analysis["results"]:
        plot_accuracy(analysis["results"], out / "accuracy.png", s.interval)
        pngs["accuracy"] = "accuracy.png"
    if analysis["comparisons"]:
        plot_differences(analysis["comparisons"], sp.baseline, out / "differences.png", s.interval)
        pngs["differences"] = "differences.png"
    if analysis["pass_at_k"]:
        plot_pass_at_k(analysis["pass_at_k"], out / "pass_at_k.png")
        pngs["pass_at_k"] = "pass_at_k.png"
    if curves:
        plot_training(curves, out / "training_curves.png")
        pngs["training_curves"] = "training_curves.png"
    data["pngs"] = pngs
    record.write()
    lines = [
        f"# Sweep `{sp.sweep_id}`",
        "",
        f"config `{data['config']}`"
        + (f" with `--set {' '.join(sp.overrides)}`" if sp.overrides else "")
        + f"; workdir `{data['workdir']}`; seeds {sp.seeds} (each sets {', '.join(s.seed_fields)}); "
        f"baseline arm `{sp.baseline}`; wall time {data['wall_seconds']:.0f} s.",
        "",
        "| arm | overrides |",
        "|---|---|",
    ]
    lines += [f"| {a.name} | `{json.dumps(a.overrides)}` ({a.source}) |" for a in sp.arms]
    lines += ["", interval_note(s.interval, s.confidence, s.bootstrap_resamples)]
    lines += results_body(data, sp.baseline, pngs, prefix="")
    lines += training_section(data["training"], pngs)
    lines += published_section(published, analysis["results"])
    lines += artifacts_section(data)
    text = "\n".join(lines) + "\n"
    path = atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))
    write_results_section(sp, data, pngs)
    return path


def results_body(data: dict, baseline: str, pngs: dict, prefix: str) -> list[str]:
    """Verdicts, the accuracy table, paired differences, pass@k (shared by report.md and
    results_section.md; `prefix` is where the PNGs are relative to the document)."""
    lines = ["", "## Verdicts", ""]
    lines += [f"- {c['verdict']}" for c in data["comparisons"]] or ["- (no comparison: one arm only)"]
    lines += [
        "",
        "## Accuracy per benchmark (%, mean over seeds)",
        "",
        "| benchmark | arm | seeds | problems | mean | 95% CI (bootstrap) | 95% CI (t) | per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, r in data["results"].items():
        label = target if target in r["benchmarks"] else f"{target} ({', '.join(r['benchmarks'])})"
        for name, row in r["rows"].items():
            lines.append(
                f"| {label} | {name} | {len(row['seeds'])} | {row['n_problems']} | {_pct(row['mean'])} "
                f"| {_ci(row['ci_bootstrap'])} | {_ci(row['ci_t'])} "
                f"| {', '.join(_pct(v) for v in row['per_seed'])} |"
            )
    if "accuracy" in pngs:
        lines += ["", f"![accuracy per arm]({prefix}{pngs['accuracy']})"]
    if data["comparisons"]:
        lines += [
            "",
            f"## Paired differences vs `{baseline}` (points)",
            "",
            "| benchmark | comparison | seeds | difference | 95% CI (bootstrap) | 95% CI (t) | per seed |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in data["comparisons"]:
            lines.append(
                f"| {c['benchmark']} | {c['arm']} − {baseline} | {len(c['seeds'])} | {100 * c['diff']:+.1f} "
                f"| {_dci(c['ci_bootstrap'])} | {_dci(c['ci_t'])} "
                f"| {', '.join(f'{100 * v:+.1f}' for v in c['per_seed'])} |"
            )
        if "differences" in pngs:
            lines += ["", f"![paired differences]({prefix}{pngs['differences']})"]
    if data["pass_at_k"]:
        lines += [
            "",
            "## pass@k (unbiased estimator, k = 1..samples; mean over seeds and problems)",
            "",
            "| benchmark | arm | pass@1 | pass@k max |",
            "|---|---|---|---|",
        ]
        for bench, per in data["pass_at_k"].items():
            for name, ys in per.items():
                lines.append(f"| {bench} | {name} | {_pct(ys[0])} | pass@{len(ys)} = {_pct(ys[-1])} |")
        lines += ["", f"![pass@k]({prefix}{pngs['pass_at_k']})"]
    return lines


def training_section(training: dict, pngs: dict, prefix: str = "") -> list[str]:
    if not training:
        return []
    metrics = sorted({m for per in training.values() for m in per})
    lines = [
        "",
        "## Training (mean over seeds of the last 20% of steps)",
        "",
        "| arm | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for arm, per in training.items():
        lines.append(f"| {arm} | " + " | ".join("–" if m not in per else f"{per[m]:.3g}" for m in metrics) + " |")
    if "training_curves" in pngs:
        lines += ["", f"![training curves]({prefix}training_curves.png)"]
    return lines


def published_section(pub: Published, results: dict) -> list[str]:
    """Published accuracies of the base config's backbone (`oger.published`, as the run report
    shows them) per method, then this sweep's rows, on the benchmarks both have."""
    lines = ["", "## Published numbers", ""]
    if not pub.found:
        return lines + [pub.missing_line()]
    cols = [t for t in results if any(t in v for v in pub.methods.values())]
    lines += [
        f"Backbone {pub.backbone} (accuracy %, as published; – where not published); ours: mean over seeds.",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method in pub.methods:
        lines.append(f"| {method} | " + " | ".join(cell(pub.value(method, c)) for c in cols) + " |")
    for name in next(iter(results.values()))["rows"] if results else []:
        lines.append(
            f"| **{name} (this sweep)** | "
            + " | ".join(_pct(results[c]["rows"].get(name, {}).get("mean")) for c in cols)
            + " |"
        )
    return lines + ["", pub.source_line()]


def artifacts_section(data: dict) -> list[str]:
    lines = ["", "## Artifacts", "", "| stage | key | cached | seconds |", "|---|---|---|---|"]
    for name, items in data["upstream"].items():
        lines += [f"| {name} | `{i['key'][:16]}` | {i['cached']} | {i['seconds']:.1f} |" for i in items]
    lines += ["", "| arm | seed | stage | key | cached | seconds |", "|---|---|---|---|---|---|"]
    for p in data["pairs"]:
        for stage, st in p["stages"].items():
            lines.append(
                f"| {p['arm']} | {p['seed']} | {stage} | `{st['key'][:16]}` | {st['cached']} | {st['seconds']:.1f} |"
            )
    return lines


def cache_note(pairs: list[dict]) -> str:
    """Why a rerun's wall time is short: how many pairs this invocation read from cache instead of
    computing (a cached rerun otherwise reads as a 0.3-minute sweep)."""
    cached = sum(1 for p in pairs if all(st["cached"] for st in p["stages"].values()))
    if not cached:
        return ""
    return (
        f"; {cached} of {len(pairs)} pairs read from cache, computed by an earlier invocation: "
        f"the wall time is this invocation's"
    )


def write_results_section(sp, data: dict, pngs: dict) -> Path:
    """The block `make ablate` puts into docs/RESULTS.md: command, machine, date, wall time,
    then the verdicts and tables (PNGs under `results/`, next to the document)."""
    arms = ",".join(a.name for a in sp.arms)
    seeds = ",".join(str(x) for x in sp.seeds)
    sets = "".join(f" --set {o}" for o in sp.overrides)
    config = data["config"]
    config = Path(config).relative_to(REPO) if str(config).startswith(str(REPO)) else config
    lines = [
        f"Measured {datetime.now(timezone.utc).date().isoformat()} on {os.cpu_count()} CPU cores "
        f"({platform.machine()}, no GPU used; a machine shared with other jobs, so times are "
        f"inflated): `oger sweep {config}"
        f" --arms {arms} --seeds {seeds}{sets}`, wall time {data['wall_seconds'] / 60:.1f} min "
        f"(sweep `{sp.sweep_id}`{cache_note(data['pairs'])}).",
        "",
        interval_note(sp.settings.interval, sp.settings.confidence, sp.settings.bootstrap_resamples),
    ]
    lines += results_body(data, sp.baseline, pngs, prefix="results/")
    lines += training_section(data["training"], pngs, prefix="results/")
    text = "\n".join(lines) + "\n"
    return atomic_write(sp.dir / "results_section.md", lambda tmp: tmp.write_text(text))


def markers(section: str | None = None) -> tuple[str, str]:
    """The begin/end comments a results section sits between (one pair per named section)."""
    if section is None:
        return BEGIN, END
    return f"<!-- sweep-results:{section}:begin -->", f"<!-- sweep-results:{section}:end -->"


def fill_results_doc(doc: Path, sweep_dir: Path, section: str | None = None) -> None:
    """Replace the text between the markers (of `section`, if named) in `doc` with the sweep's
    results_section.md and copy its PNGs to `<doc's folder>/results/` (named `<section>-<png>` for a
    named section, so two sections' plots do not overwrite each other). Every file is replaced whole
    (`atomic_write`): a crash leaves the tracked document as it was or as it should be, never half of it."""
    doc, sweep_dir = Path(doc), Path(sweep_dir)
    text = doc.read_text()
    begin, end = markers(section)
    if begin not in text or end not in text:
        raise ValueError(f"{doc}: no {begin} ... {end} markers to fill")
    body = (sweep_dir / "results_section.md").read_text()
    target = doc.parent / "results"
    target.mkdir(exist_ok=True)
    prefix = f"{section}-" if section else ""
    for png in sorted(set(re.findall(r"\(results/([^)]+\.png)\)", body))):
        atomic_write(target / f"{prefix}{png}", lambda tmp, src=sweep_dir / png: shutil.copyfile(src, tmp))
        body = body.replace(f"(results/{png})", f"(results/{prefix}{png})")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    filled = f"{head}{begin}\n{body}{end}{tail}"
    atomic_write(doc, lambda tmp: tmp.write_text(filled))
