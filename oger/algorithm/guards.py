"""Text signals and guards for the OGER bonus: what a rollout's reasoning says, and whether it is a
degenerate way to look novel (no reasoning, padding, another language, repetition, missing format).

Pure string functions (no model, no torch), shared by the trainer and `oger bonus`. Each guard is
a verdict `True = passes`; a failing guard zeroes the bonus (never the correctness reward).
Formulas and defaults: docs/ALGORITHM.md ("Hack-resistant bonus").
"""

from __future__ import annotations

import re
import statistics
import unicodedata

THINK_CLOSE = "</think>"
_BOXED = "\\boxed"
# One "word": a run of non-space characters, except that each CJK / kana character counts alone
# (those scripts do not separate words by spaces, so a sentence would otherwise be one word).
_CJK = "\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
# A few very frequent function words per Latin-script language: enough to tell a switch of language
# in a few sentences of reasoning, and neutral on formulas (which contain none of them).
STOPWORDS = {
    "en": "the and of to is we so that this it for with then by are be as from each".split(),
    "es": "el la los las de que es y por para con una un del al como entre así".split(),
    "fr": "le la les des de et est que pour avec une un du au par donc ainsi sur".split(),
    "de": "der die das und ist wir mit für von den dem zu eine ein auch also auf".split(),
    "pt": "o a os as de que é e para com uma um do da em por então assim".split(),
    "it": "il lo la gli le di che è e per con una un del della quindi così".split(),
}


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def reasoning_text(text: str) -> str:
    """What the reasoning says, without the answer tag: the text before `</think>` when there is one,
    else the text before the sentence (or line) that holds the last `\\boxed{}`.

    Without this, "The answer is \\boxed{91}." is far from every teacher trace in embedding space and
    earns the largest bonus; with it, a bare answer has no reasoning left (empty string)."""
    if THINK_CLOSE in text:
        return text.split(THINK_CLOSE, 1)[0].replace("<think>", "").strip()
    i = text.rfind(_BOXED)
    if i < 0:
        return text.strip()
    cut = max(text.rfind(". ", 0, i), text.rfind(".\n", 0, i), text.rfind("\n", 0, i), text.rfind("。", 0, i))
    return text[: cut + 1].strip() if cut >= 0 else ""


def length_ratio(text: str, teacher_texts: list[str]) -> float:
    """Words of the rollout / median words of the problem's teacher traces (inf without teachers' words)."""
    ref = statistics.median(len(words(t)) for t in teacher_texts) if teacher_texts else 0
    return len(words(text)) / ref if ref else float("inf")


def repetition_rate(text: str, n: int = 4) -> float:
    """1 - distinct / total word n-grams (lower-cased): 0 for text that never repeats a phrase,
    -> 1 for a phrase looped many times. 0 when the text has fewer than n words."""
    w = [x.lower() for x in words(text)]
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def nonascii_share(text: str) -> float:
    """Share of non-space characters outside ASCII (a language or script drift monitor)."""
    chars = [c for c in text if not c.isspace()]
    return sum(ord(c) > 127 for c in chars) / len(chars) if chars else 0.0


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    first = name.split()[0]
    return {"CJK": "HAN", "HIRAGANA": "KANA", "KATAKANA": "KANA"}.get(first, first)


def language(text: str) -> str | None:
    """The text's dominant script (LATIN, CYRILLIC, HAN, ...) and, for Latin, the stop-word language
    with the most hits (at least 2): "latin:en", "latin:es", ..., "latin" when undecided. None for
    text without letters (formulas only)."""
    counts: dict[str, int] = {}
    for ch in text:
        s = _script(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return None
    script = max(counts, key=counts.get)
    if script != "LATIN":
        return script.lower()
    w = [x.lower() for x in re.findall(r"[^\W\d_]+", text)]
    hits = {lang: sum(x in set(sw) for x in w) for lang, sw in STOPWORDS.items()}
    best = max(hits, key=hits.get)
    return f"latin:{best}" if hits[best] >= 2 else "latin"


def same_language(text: str, teacher_texts: list[str]) -> bool:
    """False only when the rollout's language is known and differs from the teachers' majority
    language (a Latin text of undecided language matches any Latin-script language)."""
    mine = language(text)
    theirs = [x for x in (language(t) for t in teacher_texts) if x]
    if mine is None or not theirs:
        return True
    ref = max(set(theirs), key=theirs.count)
    if mine == ref:
        return True
    return mine.split(":")[0] == ref.split(":")[0] and "latin" in (mine, ref)


def think_format(text: str) -> bool:
    """LUFFY's format: the reasoning is closed by `</think>` before the answer."""
    return THINK_CLOSE in text


def guard_verdicts(text: str, teacher_texts: list[str], g, think_required: bool = False) -> dict[str, bool]:
    """Every enabled text guard's verdict for one correct rollout (True = keeps its bonus).

    g: an `oger.contract.config.BonusGuards`. `reasoning` fails when nothing is left once the answer tag is
    removed (`min_reasoning_words`); `think_format` acts only when the reward requires the format.
    The off-topic guard (`max_divergence`) needs the embedding: `oger.algorithm.reward` applies it."""
    out: dict[str, bool] = {}
    reasoning = reasoning_text(text)
    out["reasoning"] = len(words(reasoning)) >= g.min_reasoning_words
    if g.length_ratio_min is not None or g.length_ratio_max is not None:
        r = length_ratio(text, teacher_texts)
        out["length_ratio"] = (g.length_ratio_min is None or r >= g.length_ratio_min) and (
            g.length_ratio_max is None or r <= g.length_ratio_max
        )
    if g.language:
        out["language"] = same_language(reasoning or text, teacher_texts)
    if g.max_repetition is not None:
        out["repetition"] = repetition_rate(text, g.repetition_ngram) <= g.max_repetition
    if g.think_format and think_required:
        out["think_format"] = think_format(text)
    return out
