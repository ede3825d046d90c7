"""Teachers behind any OpenAI-compatible chat endpoint (`vllm serve`, `transformers serve`, ...)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx

from oger.contract.config import TeacherConfig
from oger.contract.errors import StageError
from oger.stages.teachers.base import Generation, Prompt, chat_messages
from oger import seeds


def _request(client: httpx.Client, tcfg: TeacherConfig, p: Prompt, i: int) -> Generation:
    s = tcfg.sampling
    body = {
        "model": tcfg.model,
        "messages": chat_messages(tcfg, p.question),
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_new_tokens,
        "seed": seeds.for_item(s.seed, i),
        "stream": False,
    }
    try:
        resp = client.post("/chat/completions", json=body)
    except httpx.HTTPError as exc:
        raise StageError(f"teacher {tcfg.name!r}: request to {tcfg.base_url} failed: {exc}") from None
    if resp.status_code != 200:
        raise StageError(f"teacher {tcfg.name!r}: {tcfg.base_url}/chat/completions answered "
                         f"{resp.status_code}: {resp.text[:300]}")
    try:
        data = resp.json()
        choice = data["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise StageError(f"teacher {tcfg.name!r}: {tcfg.base_url}/chat/completions answered without "
                         f"choices: {resp.text[:300]}") from None
    text = (choice.get("message") or {}).get("content") or ""
    usage = data.get("usage") or {}
    return Generation(p.problem_id, i, text.strip(), usage.get("completion_tokens"),
                      choice.get("finish_reason") or "stop")


def generate(tcfg: TeacherConfig, prompts: list[Prompt], round_: str) -> list[Generation]:
    from tqdm.auto import tqdm

    headers = {}
    key = os.environ.get(tcfg.api_key_env) if tcfg.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    jobs = [(p, i) for p in prompts for i in range(tcfg.n)]
    with httpx.Client(base_url=tcfg.base_url.rstrip("/"), headers=headers,
                      timeout=tcfg.request_timeout_s) as client, \
            ThreadPoolExecutor(max_workers=tcfg.max_concurrency) as pool:
        futures = [pool.submit(_request, client, tcfg, p, i) for p, i in jobs]
        out = []
        try:
            for f in tqdm(futures, desc=f"teacher {tcfg.name}", unit="trace"):
                out.append(f.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # don't keep sending doomed requests
            raise
    return out
