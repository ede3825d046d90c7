"""problems stage: gather problems from the synthetic task, local files and HF datasets.

Output `problems.parquet`: problem_id (content hash of the question), question, answer, source,
split, reference (worked solution or teacher trace, when the source has one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from oger.contract.artifacts import ArtifactRef, file_fingerprint
from oger.contract.keys import key_dump
from oger.contract.config import FieldMap, HFSource, LocalSource, ProblemsConfig, SyntheticSource, expand_path
from oger.contract import Stage, StageContext, StageInfo
from oger.contract.errors import ConfigError, DataError
from oger.stages.problems.files import FILES, PROBLEMS_FILE, SCHEMA
from oger.synthetic import generate_problems
from oger.verify import last_boxed
from oger.stages.problems import STAGE

STAGE_VERSION = 2  # 2: test split disjoint from train

# Local copies of HF datasets under a data root (the layout of the repository's data/).
HF_LOCAL_LAYOUT = {
    "openai/gsm8k": {"train": "train/gsm8k/train.jsonl", "test": "train/gsm8k/test.jsonl"},
    "gsm8k": {"train": "train/gsm8k/train.jsonl", "test": "train/gsm8k/test.jsonl"},
    "HuggingFaceH4/MATH-500": {"test": "benchmarks/math500/test.jsonl"},
    "math-ai/aime24": {"test": "benchmarks/aime24/test.jsonl"},
    "math-ai/aime25": {"test": "benchmarks/aime25/test.jsonl"},
    "math-ai/amc23": {"test": "benchmarks/amc23/test.jsonl"},
    "math-ai/minervamath": {"test": "benchmarks/minerva_math/test.jsonl"},
    "Hothan/OlympiadBench": {"test": "benchmarks/olympiadbench/test.jsonl"},
    "hendrycks/competition_math": {"test": "train/math_full_test/test.jsonl"},
}


def rl_pool(problems: pl.DataFrame, split: str, max_prompts: int | None) -> pl.DataFrame:
    """The RL prompt pool: the problems of `split`, the first `max_prompts` of them (train.split,
    train.max_prompts). The train stage draws its prompts from it; an index with
    `index.problems: train_pool` holds the teacher traces of these problems only."""
    pool = problems.filter(pl.col("split") == split)
    return pool.head(max_prompts) if max_prompts else pool


def problem_id(question: str) -> str:
    return hashlib.sha256(question.strip().encode()).hexdigest()[:16]


# The evaluation sets shipped with the repository (data/SOURCES.md); training sets live elsewhere.
REPO_DATA = Path(__file__).resolve().parents[3] / "data"  # <repo>/oger/stages/problems/stage.py


def data_roots() -> list[Path]:
    """Where a data file is looked up, in order: `OGER_DATA_DIR` (e.g. a folder of training sets),
    then the repository's data/ (the shipped evaluation sets), so pointing `OGER_DATA_DIR` at
    training data does not hide the benchmarks."""
    roots = [Path(d) for d in [os.environ.get("OGER_DATA_DIR")] if d]
    if REPO_DATA.is_dir() and REPO_DATA not in roots:
        roots.append(REPO_DATA)
    return roots


def find_data_file(rel: str) -> Path | None:
    """The first data root holding `rel` (a path in the data/ layout), or None."""
    return next((r / rel for r in data_roots() if (r / rel).is_file()), None)


# --------------------------------------------------------------------------- file reading


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based row number, record) from jsonl or parquet; a bad line names file and row.

    Undecodable text, a corrupt or truncated parquet file and an empty file are `DataError`s that
    name the file (never a UnicodeDecodeError or polars traceback)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; point the source at a file with problems")
    if path.suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as exc:  # polars/pyarrow: ComputeError, OSError, ArrowInvalid ...
            raise DataError(f"{path}: not a readable parquet file (corrupt or truncated: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                            f"re-export or re-download it") from None
        for i, row in enumerate(df.iter_rows(named=True), start=1):
            yield i, row
        return
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: row {i}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                f"column {exc.start + 1}); re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: row {i}: not valid JSON ({exc.msg}; a truncated or "
                                f"corrupt line); fix or remove the row") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object, got "
                                f"{type(row).__name__}")
            yield i, row


_TEXT_TYPES = (str, list, tuple, dict)


def _check_type(row: dict, name: str, where: str, allowed: tuple) -> None:
    """A field of the wrong type (a number for a question, a dict for an answer ...) is named."""
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise DataError(f"{where}: field {name!r} is {type(value).__name__} ({str(value)[:40]!r}), "
                        f"expected text; fix the row or map another field with `fields:`")


def _detect_format(row: dict) -> str:
    if "prompt" in row and "reward_model" in row:
        return "luffy"
    if isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    if "solution" in row and "answer" not in row and "final_answer" not in row:
        return "math"
    return "plain"


def _first_present(row: dict, names: list[str]) -> str | None:
    return next((n for n in names if n in row and row[n] is not None), None)


def _text_of(value: Any) -> str | None:
    """Strings stay; chat lists give their last message's content; answer lists are joined."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _text_of(value.get("content"))
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            return _text_of(value[-1])
        return ", ".join(str(v).strip().strip("$") for v in value)
    return str(value)


def _luffy_question(prompt: Any) -> str | None:
    if isinstance(prompt, (list, tuple)):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return users[-1].get("content")
    return _text_of(prompt)


def normalize_row(row: dict, fmt: str, fields: FieldMap, where: str) -> dict:
    """Map one record to {question, answer, reference}; errors name the file, row and field."""
    if fmt == "auto":
        fmt = _detect_format(row)
    if fmt == "luffy":
        qf, af, rf = fields.question or "prompt", fields.answer or "reward_model", fields.reference or "target"
        if qf not in row:
            raise DataError(f"{where}: missing question field {qf!r}")
        question = _luffy_question(row[qf]) if qf == "prompt" else _text_of(row[qf])
        if af not in row or row[af] is None:
            raise DataError(f"{where}: missing answer field {af!r}")
        ans = row[af]
        answer = _text_of(ans.get("ground_truth") if isinstance(ans, dict) else ans)
        reference = _text_of(row.get(rf))
    else:
        qf = fields.question or _first_present(row, ["question", "problem", "Question"]) or "question"
        if qf not in row or row[qf] is None:
            raise DataError(f"{where}: missing question field {qf!r}")
        _check_type(row, qf, where, _TEXT_TYPES)
        question = _text_of(row[qf])
        if fmt == "gsm8k":
            af = fields.answer or "answer"
            if af not in row or row[af] is None:
                raise DataError(f"{where}: missing answer field {af!r}")
            full = str(row[af])
            if "####" not in full:
                raise DataError(f"{where}: field {af!r} has no '#### <answer>' line")
            answer = full.rsplit("####", 1)[1].strip()
            reference = re.sub(r"<<[^>]*>>", "", fields.reference and row.get(fields.reference) or full)
        elif fmt == "math":
            rf = fields.reference or "solution"
            af = fields.answer
            if af:
                if af not in row or row[af] is None:
                    raise DataError(f"{where}: missing answer field {af!r}")
                answer = _text_of(row[af])
            else:
                if rf not in row or row[rf] is None:
                    raise DataError(f"{where}: missing answer field (no 'answer' and no {rf!r} "
                                    "to take the last \\boxed{} from)")
                answer = last_boxed(str(row[rf]))
                if answer is None:
                    raise DataError(f"{where}: field {rf!r} has no \\boxed{{}} answer")
            reference = _text_of(row.get(rf))
        else:  # plain
            af = fields.answer or _first_present(row, ["answer", "final_answer", "gold"]) or "answer"
            if af not in row or row[af] is None:
                raise DataError(f"{where}: missing answer field {af!r}")
            _check_type(row, af, where, (str, int, float, list, tuple))
            answer = _text_of(row[af])
            rf = fields.reference or _first_present(row, ["solution", "reference"])
            reference = _text_of(row.get(rf)) if rf else None
    if not question or not str(question).strip():
        raise DataError(f"{where}: empty question")
    if answer is None or not str(answer).strip():
        raise DataError(f"{where}: empty answer")
    return {"question": str(question).strip(), "answer": str(answer).strip(),
            "reference": reference}


# --------------------------------------------------------------------------- sources


def resolve_hf_local(src: HFSource) -> Path | None:
    """The local file for an HF dataset under a data root (OGER_DATA_DIR, then data/), if laid out there."""
    split = src.hf_split or src.split
    rel = HF_LOCAL_LAYOUT.get(src.dataset, {}).get(split)
    candidates = [rel] if rel else []
    for ext in ("jsonl", "parquet"):
        candidates.append(f"{src.dataset}/{src.subset + '/' if src.subset else ''}{split}.{ext}")
    return next((f for f in map(find_data_file, candidates) if f is not None), None)


def source_file(src) -> Path | None:
    if isinstance(src, LocalSource):
        return expand_path(src.path)
    if isinstance(src, HFSource):
        return resolve_hf_local(src)
    return None


def _load_file_source(src, path: Path) -> list[dict]:
    out = []
    for i, row in iter_rows(path):
        rec = normalize_row(row, src.format, src.fields, f"{path}: row {i}")
        out.append(rec)
        if src.limit and len(out) >= src.limit:
            break
    if not out:
        raise DataError(f"{path}: problems source {src.name!r} has no rows (only blank lines or an "
                        f"empty table); point it at a file with problems")
    return out


def check_sources(cfg: ProblemsConfig) -> None:
    """Read and validate every local file source now (before a flow starts); errors name the file,
    row and field. Sources that come from the hub are checked when the stage loads them."""
    for src in cfg.sources:
        path = source_file(src)
        if path is not None:
            _load_file_source(src, path)


def _load_hf_hub(src: HFSource) -> list[dict]:
    try:
        from datasets import load_dataset

        ds = load_dataset(src.dataset, src.subset, split=src.hf_split or src.split)
    except Exception as exc:  # offline, unknown id, auth ...
        raise DataError(f"dataset {src.dataset!r} (split {src.hf_split or src.split!r}) is not laid "
                        f"out under OGER_DATA_DIR or data/ and could not be loaded from the hub: "
                        f"{type(exc).__name__}: {str(exc)[:200]}") from None
    out = []
    for i, row in enumerate(ds, start=1):
        out.append(normalize_row(dict(row), src.format, src.fields, f"{src.dataset}: row {i}"))
        if src.limit and len(out) >= src.limit:
            break
    return out


SFT_SPLIT = "sft"  # SyntheticSource.sft_split_first_above


def load_source(src) -> list[dict]:
    """Records {question, answer, reference, split} of one configured source."""
    if isinstance(src, SyntheticSource):
        rows: list[dict] = []
        for split, n in (("train", src.n_train), ("test", src.n_test)):
            taken = {r["question"] for r in rows}  # the test split never repeats a train problem
            for p in generate_problems(src.seed, n, src.min_operands, src.max_operands,
                                       src.max_value, src.ops, salt=split, exclude=taken,
                                       smallest_at_most=src.smallest_at_most):
                above = src.sft_split_first_above is not None and p.tokens[0] > src.sft_split_first_above
                rows.append({"question": p.question, "answer": str(p.answer),
                             "reference": None, "split": SFT_SPLIT if above else split})
        return rows
    path = source_file(src)
    rows = _load_file_source(src, path) if path is not None else _load_hf_hub(src)
    for r in rows:
        r["split"] = src.split
    return rows


def key_inputs(cfg: ProblemsConfig) -> tuple[dict, dict]:
    """(config slice, identity): file paths are replaced by content fingerprints."""
    sources, identity = [], {}
    for src in cfg.sources:
        d = key_dump(src)  # a local file's path is not in it: its content fingerprint is
        path = source_file(src)
        if isinstance(src, LocalSource):
            if not path.is_file():
                raise DataError(f"problems source {src.name!r}: file not found: {path}")
        if path is not None:
            identity[src.name] = file_fingerprint(path)
        sources.append(d)
    names = [s.name for s in cfg.sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"problems.sources: names must be unique, repeated: {sorted(dup)}")
    return {"sources": sources}, identity


def run_problems(cfg: ProblemsConfig, ctx: StageContext) -> ArtifactRef:
    rows, seen, dropped_dup, per_source = [], set(), 0, {}
    for src in cfg.sources:
        recs = load_source(src)
        kept = 0
        for r in recs:
            pid = problem_id(r["question"])
            if pid in seen:
                dropped_dup += 1
                continue
            seen.add(pid)
            rows.append({"problem_id": pid, "question": r["question"], "answer": r["answer"],
                         "source": src.name, "split": r["split"], "reference": r["reference"]})
            kept += 1
        per_source[src.name] = kept
    if not rows:
        raise DataError(f"problems stage: the configured sources "
                        f"{[s.name for s in cfg.sources]} yielded no problems")
    df = pl.DataFrame(rows, schema=SCHEMA)
    with ctx.output() as out:
        df.write_parquet(out.file(PROBLEMS_FILE))
        out.metrics = {
            "problems": df.height,
            "train": int((df["split"] == "train").sum()),
            "test": int((df["split"] == "test").sum()),
            "with_reference": int(df["reference"].is_not_null().sum()),
            "dropped_duplicate": dropped_dup,
            "per_source": per_source,
        }
    return ctx.ref(out)


def plan_info(cfg, counts):
    """`oger plan`: sources and problem counts (nothing is read but file sizes)."""
    splits = sorted({split for split, _ in counts.rows})
    return StageInfo(engine="polars: " + ", ".join(f"{s.name} ({s.kind})" for s in cfg.problems.sources),
                     resources="1 CPU",
                     notes=[f"{sp}: {counts.count(sp) if counts.count(sp) is not None else '?'} problems"
                            for sp in splits])


STAGE_DEF = Stage(name=STAGE, version=STAGE_VERSION, upstream=(), files=FILES,
                  key_inputs=lambda cfg: key_inputs(cfg.problems),
                  run=lambda ctx, inputs: run_problems(ctx.cfg.problems, ctx), plan_info=plan_info,
                  check_inputs=lambda cfg: check_sources(cfg.problems))
