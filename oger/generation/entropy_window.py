"""Where in a response the bonus reads the policy's entropy H: `EntropyWindow`, the selector every
engine asks (`Request.entropy_window`, `update.behaviour_scores`), and `answer_span`, the token
positions of the final `\\boxed{}` answer that its answer options need.

The positions themselves are chosen by one pure function, `core.bonus_entropy_window`; what it cannot
do without a tokenizer (find the answer among token ids) is done here, so every engine (hf, paged,
vLLM) and the update's behaviour pass read H at the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from oger.verify import last_boxed_span

# The first suffix of a response searched for its answer, in tokens; doubled until one is found or the
# whole response is searched. The answer sits near the end, so a few short decodes usually suffice
# instead of one of the whole response per prefix length.
TAIL_TOKENS = 64


@dataclass(frozen=True)
class EntropyWindow:
    """The bonus's entropy positions: `m` tokens at `at` (`train.oger.entropy_tokens`, `entropy_at`;
    `core.bonus_entropy_window` says what each option reads). Frozen and small, so a Request carrying
    it can be shipped to other ranks as is (vLLM's tensor-parallel groups)."""

    m: int = 1
    at: str = "last"

    def __post_init__(self):
        from oger.algorithm.core import ENTROPY_AT

        if self.m < 1:
            raise ValueError("entropy window: m must be >= 1")
        if self.at not in ENTROPY_AT:
            raise ValueError(f"entropy window: at must be one of {ENTROPY_AT}, got {self.at!r}")

    @property
    def needs_tokenizer(self) -> bool:
        return self.at != "last"

    def positions(self, response_ids: Sequence[int], tokenizer=None) -> range:
        """The response positions to read H at; the answer options find the answer with `tokenizer`."""
        from oger.algorithm.core import bonus_entropy_window

        span = None
        if self.needs_tokenizer:
            if tokenizer is None:
                raise ValueError(f"entropy window at {self.at!r} needs the tokenizer to find the answer")
            span = answer_span(tokenizer, response_ids)
        return bonus_entropy_window(len(response_ids), self.m, self.at, span)

    def most(self, length: int) -> int:
        """The most positions a response of `length` tokens can have, known before it is decoded (a bound
        the paged entropy pass sizes micro-batches by where every rank must run as many passes)."""
        return min(length, self.m) if self.at != "answer" else length


def as_window(window: EntropyWindow | int | None) -> EntropyWindow | None:
    """An `EntropyWindow` from its shorthand: an int m is the last m tokens; None: every position."""
    if window is None or isinstance(window, EntropyWindow):
        return window
    return EntropyWindow(int(window))


def answer_span(tokenizer, response_ids: Sequence[int]) -> tuple[int, int, int] | None:
    """The final answer's token positions in a response: (first token of its `\\boxed`, first token of its
    content, one past the content's last token), as `verify.last_boxed` reads the decoded text; None
    without one. A token that straddles a boundary (BPE merging `{4`) belongs to the content.

    Sampled ids need not be the tokenizer's encoding of their text, so the text is not re-encoded: a
    character's token is found by decoding growing prefixes (binary search over the prefix's decoded
    length), within a suffix of the response that holds the answer (decoded as the engines decode:
    special tokens skipped). A match inside the suffix is a match in the whole text (the search reads
    forward from `\\boxed`), and the last one in the suffix is the last one overall."""
    ids = list(response_ids)
    n = len(ids)

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True)

    tail = min(n, TAIL_TOKENS)
    while True:
        first = n - tail
        chars = last_boxed_span(decode(ids[first:]))
        if chars is not None:
            break
        if first == 0:
            return None
        tail = min(n, 2 * tail)

    def token_of(c: int) -> int:
        """The first token whose prefix decodes past character c: the token that writes it."""
        lo, hi = first, n - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if len(decode(ids[first : mid + 1])) > c:
                hi = mid
            else:
                lo = mid + 1
        return lo

    tag, a, b = chars
    start = token_of(a)
    end = token_of(b - 1) + 1 if b > a else start
    return token_of(tag), start, end
