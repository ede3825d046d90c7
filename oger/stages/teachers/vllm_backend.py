"""Teachers on vLLM's offline engine (the `gpu` extra; imported only when used)."""

from __future__ import annotations

from oger.contract.config import TeacherConfig
from oger.contract.errors import ConfigError
from oger.models import materialize_gguf, resolve_model
from oger.stages.teachers.base import Generation, Prompt, chat_messages


def generate(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> list[Generation]:
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise ConfigError(f"teacher {tcfg.name!r} uses backend 'vllm', which needs the gpu extra: "
                          "pip install 'oger[gpu]' (on a CUDA machine)") from None
    src = resolve_model(tcfg.model)
    model_path = str(materialize_gguf(tcfg.model)) if src.kind == "gguf" else src.load_dir
    llm = LLM(model=model_path, tensor_parallel_size=tcfg.tensor_parallel_size,
              seed=tcfg.sampling.seed, dtype=tcfg.dtype)
    s = tcfg.sampling
    params = SamplingParams(n=tcfg.n, temperature=s.temperature, top_p=s.top_p,
                            max_tokens=s.max_new_tokens, seed=s.seed)
    results = llm.chat([chat_messages(tcfg, p.question) for p in prompts], params, use_tqdm=True)
    out = []
    for p, res in zip(prompts, results):
        for i, o in enumerate(res.outputs):
            out.append(Generation(p.problem_id, i, o.text.strip(), len(o.token_ids),
                                  o.finish_reason or "stop"))
    return out
