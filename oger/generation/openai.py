"""Any OpenAI-compatible chat endpoint (`vllm serve`, `transformers serve`, a hosted API) behind the
engine interface: one request per sample, several in flight.

A request for sample i of a prompt is seeded `seeds.for_item(seed, i)`; the server's sampler is its
own, so this engine's samples are reproducible only as far as the server honours seeds."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from oger import seeds
from oger.contract.errors import StageError
from oger.generation.base import Request, is_chat
from oger.generation.records import Rollout


class OpenAIEngine:
    kind = "openai"
    batch_size = None  # the server batches
    context = None

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 4,
        timeout_s: float = 300.0,
        label: str = "openai",
    ):
        self.base_url, self.model, self.label = base_url.rstrip("/"), model, label
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        key = os.environ.get(api_key_env) if api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _request(self, client, messages: list[dict], request: Request, prompt: int, sample: int) -> Rollout:
        import httpx

        body = {
            "model": self.model,
            "messages": messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_new_tokens,
            "seed": seeds.for_item(request.seed, sample),
            "stream": False,
        }
        try:
            resp = client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise StageError(f"{self.label}: request to {self.base_url} failed: {exc}") from None
        if resp.status_code != 200:
            raise StageError(
                f"{self.label}: {self.base_url}/chat/completions answered {resp.status_code}: {resp.text[:300]}"
            )
        try:
            data = resp.json()
            choice = data["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise StageError(
                f"{self.label}: {self.base_url}/chat/completions answered without choices: {resp.text[:300]}"
            ) from None
        text = (choice.get("message") or {}).get("content") or ""
        usage = data.get("usage") or {}
        return Rollout(
            prompt,
            [],
            text,
            choice.get("finish_reason") or "stop",
            sample_index=sample,
            n_tokens=usage.get("completion_tokens"),
        )

    def generate(self, prompts, request: Request, progress=None) -> list[Rollout]:
        import httpx

        if not all(is_chat(p) for p in prompts):
            raise ValueError(f"{self.label}: an OpenAI-compatible chat endpoint takes chat messages, not token ids")
        jobs = [(i, s) for i in range(len(prompts)) for s in range(request.n)]
        out = []
        with (
            httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout_s) as client,
            ThreadPoolExecutor(max_workers=self.max_concurrency) as pool,
        ):
            futures = [pool.submit(self._request, client, prompts[i], request, i, s) for i, s in jobs]
            try:
                for f in futures:
                    out.append(f.result())
                    if progress is not None:
                        progress(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # don't keep sending doomed requests
                raise
        return out

    def close(self) -> None:
        pass
