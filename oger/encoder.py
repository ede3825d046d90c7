"""Sentence-transformers encoding with unit-normalised vectors and long-text handling.

The index and (later) the OGER reward must embed with the *same* function, so it lives here.
Texts longer than the encoder's window are split into token windows whose embeddings are
mean-pooled and re-normalised (`chunk_mean`), or cut to the window (`head`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from oger.models import model_identity, resolve_model


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=4)
def load_encoder(ref: str, device: str | None = None):
    """A SentenceTransformer from a local folder (offline) or a hub id."""
    from sentence_transformers import SentenceTransformer

    src = resolve_model(ref)
    local = src.kind == "dir"
    return SentenceTransformer(src.load_dir, device=device or "cpu", local_files_only=local)


def encoder_identity(ref: str) -> dict:
    return model_identity(ref)


def _chunks(model, text: str) -> list[str]:
    tok = model.tokenizer
    window = int(model.max_seq_length) - 2  # room for [CLS] and [SEP]
    ids = tok(text, add_special_tokens=False, truncation=False)["input_ids"]
    if len(ids) <= window:
        return [text]
    return [tok.decode(ids[i : i + window]) for i in range(0, len(ids), window)]


def encode(
    model, texts: list[str], batch_size: int = 64, long_text: str = "chunk_mean", show_progress: bool = False
) -> np.ndarray:
    """(len(texts), dim) float32, rows of unit norm."""
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    if long_text == "head":
        return model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        ).astype(np.float32)
    pieces, owner = [], []
    for i, t in enumerate(texts):
        for c in _chunks(model, t):
            pieces.append(c)
            owner.append(i)
    vecs = model.encode(
        pieces, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=show_progress
    ).astype(np.float32)
    if len(pieces) == len(texts):
        return vecs
    owner_arr = np.asarray(owner)
    out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
    np.add.at(out, owner_arr, vecs)
    out /= np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)
    return out
