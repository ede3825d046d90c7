"""One record of a data file -> {question, answer, reference}, by format, and the problem's id.

The formats are the layouts problems come in: gsm8k (`#### <answer>` lines), MATH (the answer is the
solution's last \\boxed{}), LUFFY's parquet (a chat `prompt`, `reward_model.ground_truth`, a teacher
`target`) and plain question/answer fields; `auto` tells them apart by their fields. The problems
stage and the evaluation's benchmarks read through the same rules, so a benchmark problem and a
training problem with the same question get the same `problem_id`. Errors name the file, the row and
the field, and say what to fix.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from oger.contract.config import FieldMap
from oger.contract.errors import DataError
from oger.verify import last_boxed


def problem_id(question: str) -> str:
    """The content hash of the question (16 hex digits): the one id of a problem in every table."""
    return hashlib.sha256(question.strip().encode()).hexdigest()[:16]


_TEXT_TYPES = (str, list, tuple, dict)


def _check_type(row: dict, name: str, where: str, allowed: tuple) -> None:
    """A field of the wrong type (a number for a question, a dict for an answer ...) is named."""
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise DataError(
            f"{where}: field {name!r} is {type(value).__name__} ({str(value)[:40]!r}), "
            f"expected text; fix the row or map another field with `fields:`"
        )


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
                    raise DataError(
                        f"{where}: missing answer field (no 'answer' and no {rf!r} to take the last \\boxed{{}} from)"
                    )
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
    return {"question": str(question).strip(), "answer": str(answer).strip(), "reference": reference}
