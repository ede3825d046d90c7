"""`oger prepare`: the config's GGUF models converted once into the model cache and Prefect's
database migrated, so a first run pays for neither; a second prepare finds both done."""

import pytest

from oger.commands.prepare import gguf_models, prepare
from oger.models import cache_root


def test_a_gguf_used_as_model_and_as_tokenizer_is_converted_once_as_a_model(tmp_path, small_config):
    smollm2 = {"name": "smollm2", "backend": "transformers", "model": "smollm2", "limit": 1}
    both = small_config.load(tmp_path, teachers=[small_config.scripted("stepwise", 0.0), smollm2])
    assert gguf_models(both) == [("teachers.teachers[1].model (smollm2)", "smollm2", False)]
    filter_only = small_config.load(tmp_path)  # scripted teachers: only the filter's tokenizer
    assert gguf_models(filter_only) == [("filter.tokenizer", "smollm2", True)]


@pytest.mark.slow
def test_prepare_converts_the_tokenizer_and_migrates_prefect(tmp_path, small_config, monkeypatch):
    monkeypatch.setenv("OGER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the migration runs in a subprocess
    cfg = small_config.load(tmp_path)
    done = prepare(cfg, say=lambda line: None)
    assert [what for what, _, _ in done] == ["filter.tokenizer: smollm2 (tokenizer)", "Prefect database (migrations)"]
    tokenizer_dir = cache_root() / "tokenizers"
    assert [p.name for p in tokenizer_dir.iterdir()] and all(
        (p / ".complete").exists() for p in tokenizer_dir.iterdir()
    )
    assert (tmp_path / "prefect" / "prefect.db").exists() and "upgraded" in done[1][1]
    again = prepare(cfg, say=lambda line: None)
    assert again[0][2] < 1.0  # the converted tokenizer is found, not converted again
