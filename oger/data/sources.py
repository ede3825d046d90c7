"""A configured problems source -> its records {question, answer, reference, split}.

The problems stage builds its table from these records, `oger plan` sizes a source by its file and
`oger.explore` reads its task's source, so the three agree on what a source holds: a synthetic task
(generated, `oger.synthetic`), a local file (`kind: local`) or a hub dataset (`kind: hf`, its local
copy under a data root when there is one)."""

from __future__ import annotations

from pathlib import Path

from oger.contract.config import HFSource, LocalSource, SyntheticSource, expand_path
from oger.contract.errors import DataError
from oger.data.hub import hub_rows, resolve_hf_local
from oger.data.normalize import normalize_row
from oger.data.rows import iter_rows
from oger.synthetic import generate_problems

SFT_SPLIT = "sft"  # SyntheticSource.sft_split_first_above


def source_file(src) -> Path | None:
    """The file a source reads (a local file, or a hub dataset's copy under a data root), or None
    (synthetic, or a hub dataset to load from the hub)."""
    if isinstance(src, LocalSource):
        return expand_path(src.path)
    if isinstance(src, HFSource):
        return resolve_hf_local(src)
    return None


def load_file_source(src, path: Path) -> list[dict]:
    """The normalised records of a source's file (its first `limit`); a file without rows is an error."""
    out = []
    for i, row in iter_rows(path):
        rec = normalize_row(row, src.format, src.fields, f"{path}: row {i}")
        out.append(rec)
        if src.limit and len(out) >= src.limit:
            break
    if not out:
        raise DataError(
            f"{path}: problems source {src.name!r} has no rows (only blank lines or an "
            f"empty table); point it at a file with problems"
        )
    return out


def load_hub_source(src: HFSource) -> list[dict]:
    """The normalised records of a hub dataset laid out under no data root (its first `limit`)."""
    split = src.hf_split or src.split
    rows = hub_rows(
        src.dataset,
        src.subset,
        split,
        f"dataset {src.dataset!r} (split {split!r}) is not laid out under OGER_DATA_DIR or "
        f"data/ and could not be loaded from the hub: ",
    )
    out = []
    for i, row in rows:
        out.append(normalize_row(row, src.format, src.fields, f"{src.dataset}: row {i}"))
        if src.limit and len(out) >= src.limit:
            break
    return out


def synthetic_split(src, tokens: tuple, drawn_for: str) -> str:
    """The split of a synthetic problem drawn for `drawn_for` (train or test): `sft` where its first operand
    is above `sft_split_first_above`; a train problem goes to `test` where its second operand is above
    `test_second_above` or, with `distinct_in_train`, where its operands are all equal."""
    operands = tokens[::2]
    if src.sft_split_first_above is not None and operands[0] > src.sft_split_first_above:
        return SFT_SPLIT
    if drawn_for != "test":  # a problem drawn for the train split
        if src.test_second_above is not None and len(operands) > 1 and operands[1] > src.test_second_above:
            return "test"
        if src.distinct_in_train and len(set(operands)) == 1:
            return "test"
    return drawn_for


def load_source(src) -> list[dict]:
    """Records {question, answer, reference, split} of one configured source."""
    if isinstance(src, SyntheticSource):
        rows: list[dict] = []
        for split, n in (("train", src.n_train), ("test", src.n_test)):
            taken = {r["question"] for r in rows}  # the test split never repeats a train problem
            for p in generate_problems(
                src.seed,
                n,
                src.min_operands,
                src.max_operands,
                src.max_value,
                src.ops,
                salt=split,
                exclude=taken,
                smallest_at_most=src.smallest_at_most,
            ):
                rows.append(
                    {
                        "question": p.question,
                        "answer": str(p.answer),
                        "reference": None,
                        "split": synthetic_split(src, p.tokens, split),
                    }
                )
        return rows
    path = source_file(src)
    rows = load_file_source(src, path) if path is not None else load_hub_source(src)
    for r in rows:
        r["split"] = src.split
    return rows
