"""The train stage's section: what defines the run, the OGER bonus (`oger`) and the sections `optim`,
`loss`, `rollout`, `distributed` and `logging` (docs/ARCHITECTURE.md, "Keys that cannot go stale")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from oger.contract.config.base import Strict
from oger.contract.keys import flat_in_key, inert, not_in_key, omitted_at_default, resolved

# How micro-batch cut fields are keyed (OptimConfig), beside their meaning.
CUT = inert(
    "the loss is normalised over the whole batch, so any cut gives the same gradient with other rounding; "
    "but where entropy_agg token_mean averages the entropy bonus per micro-batch the cut changes the loss, "
    "and then it is in the train key (TrainConfig.loss_depends_on_cut)"
)
CUT_FIELDS = ("micro_batch_size", "max_tokens_per_micro_batch", "share_prompts")


class BonusGuards(Strict):
    """Verdicts that zero the bonus of a degenerate correct rollout (docs/ALGORITHM.md, "Hack-resistant
    bonus"); null disables a bound. Defaults are reconstructions tuned on tests/bonus_cases.py."""

    min_reasoning_words: int = Field(
        3, ge=0, description="words left once the answer tag is removed; a bare answer has none"
    )
    length_ratio_min: float | None = Field(
        0.3, ge=0, description="rollout words / median teacher-trace words of the problem, lower bound"
    )
    length_ratio_max: float | None = Field(3.0, gt=0, description="upper bound (padding)")
    language: bool = Field(True, description="same script and (Latin) stop-word language as the teacher traces")
    max_repetition: float | None = Field(
        0.3, ge=0, le=1, description="share of repeated word n-grams above which the bonus is 0"
    )
    repetition_ngram: int = Field(4, ge=1, description="n of the word n-grams max_repetition counts")
    think_format: bool = Field(
        True,
        description="no bonus without </think> when the reward requires the think format (train.reward_format: think)",
    )
    max_divergence: float | None = Field(
        0.45,
        gt=0,
        le=1,
        description="off-topic guard: d above this means the reasoning left the problem (padding, essay), bonus 0",
    )


class OgerRewardConfig(Strict):
    """The exploration bonus r = c + lam * c * d * g(H) (DESIGN §4) and how it enters the advantage."""

    lam: float = Field(
        0.5,
        ge=0,
        description="lambda, the bonus's weight against the correctness reward (acts with algorithm oger only); 0: "
        "no bonus, divergence still logged (monitor)",
    )
    similarity: Literal["max", "mean"] = Field(
        "max",
        description="a rollout's similarity to its problem's teacher traces: to the closest one (max) or their "
        "average (mean); divergence d = 1 - similarity",
    )
    entropy_tokens: int = Field(
        1, ge=1, description="m: H averages over m generated tokens, placed by entropy_at (answer: unused)"
    )
    entropy_at: Literal["last", "before_answer", "answer"] = Field(
        "last",
        description="where g(H) reads the policy's entropy, H the mean there: last (the last entropy_tokens "
        "tokens; with 1 the stop decision, ~0 after \\boxed{N}), before_answer (the entropy_tokens tokens "
        "before the last \\boxed: the reasoning's end) or answer (the tokens inside the last \\boxed{}: "
        "confidence in the answer); a response without \\boxed{} reads last",
        json_schema_extra=omitted_at_default("keys from before the option"),
    )
    modulation: Literal["exp", "linear", "none"] = Field(
        "exp",
        description="g(H), how the end-of-answer entropy scales the bonus: exp(-H / tau), linear 1 - H / log|V| "
        "(clipped to [0, 1]), or none (1): a confident answer gets more of the bonus",
    )
    tau: float = Field(
        1.0, gt=0, description="temperature of the exp modulation: larger lets uncertain answers keep more"
    )
    embed_text: Literal["reasoning", "full"] = Field(
        "reasoning",
        description="reasoning: embed rollouts and teacher traces without the answer "
        "tag (before </think>, else before the \\boxed sentence); full: "
        "the whole text (teacher vectors straight from the index)",
    )
    guards: BonusGuards = Field(BonusGuards(), description="checks that zero the bonus of a degenerate rollout")
    baseline: Literal["none", "group"] = Field(
        "none", description="group: centre the bonus over the group's correct on-policy rollouts"
    )
    teacher_rows: Literal["group_mean", "zero"] = Field(
        "group_mean",
        description="bonus of teacher rows: the group's mean on-policy bonus "
        "(neutral: advantage 0 in an all-correct group, as in LUFFY) or 0",
    )
    advantage: Literal["separate", "joint"] = Field(
        "separate",
        description="separate: A = adv(c) (scaled per scale_rewards) + (b - mean b), "
        "the bonus on its own scale; joint: adv(c + b), std-scaled together",
    )
    shuffle_bonus: bool = Field(
        False, description="control arm: permute the step's bonus values among the bonus-eligible rollouts (seeded)"
    )
    monitor: bool = Field(
        True,
        description="embed and log divergence and every bonus signal even "
        "when lambda is 0 (grpo/luffy), so divergence has a baseline",
    )


_NO_CLIP = "with one optimizer step per batch the ratio is 1: the clip cannot act"
_SAME_MODEL = "the same model either way (how the update is spread over processes and memory)"


class OptimConfig(Strict):
    """The optimizer and its schedule."""

    lr: float = Field(
        1e-4, gt=0, description="peak learning rate; pretrained models want far less (the paper configs: 1e-6)"
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="sgd (momentum 0.9): steps scale with the gradient, so noisy "
        "directions of a tiny model drift less than under Adam",
    )
    weight_decay: float = Field(0.0, ge=0, description="the optimizer's weight decay (decoupled, for adamw)")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear learning-rate warmup")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warmup: the peak rate throughout, or cosine decay to 0 at the last step"
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="the gradient is rescaled to at most this global norm before each optimizer step"
    )
    micro_batch_size: int = Field(
        16,
        ge=1,
        description="samples per forward and backward pass; the batch's gradient is accumulated over its "
        "micro-batches, so a smaller one trades speed for memory",
        json_schema_extra=CUT,
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        description="micro-batches of at most this many prompt + response tokens instead of "
        "micro_batch_size samples (verl's dynamic batch size; a longer sample gets one of its own)",
        json_schema_extra=CUT,
    )
    padding_free: bool = Field(
        False,
        description="each micro-batch as one packed row (per-sample position ids, attention "
        "kept within each sample) instead of padded rows: no FLOPs on pad tokens",
        json_schema_extra=not_in_key("the same log-probs and gradient, other rounding"),
    )
    logprob_chunk: int | None = Field(
        1024,
        ge=1,
        description="the update's log-probs and entropies in float32 over this many positions at a time, "
        "recomputed in backward (no float32 (B, T, V) copy is kept: at a 152k vocabulary and 8k tokens each is "
        "~20 GB for 4 sequences); null: all positions at once",
        json_schema_extra=not_in_key("the same per-position log-probs and entropies, computed in parts"),
    )
    share_prompts: bool = Field(
        False,
        description="run each distinct prompt of a micro-batch once, its KV cache shared by the "
        "group's responses, instead of once per response (padded layout; not with padding_free)",
        json_schema_extra=CUT,  # it orders micro-batches by group: another cut
    )

    @model_validator(mode="after")
    def _one_layout(self):
        if self.share_prompts and self.padding_free:
            raise ValueError("optim.share_prompts and optim.padding_free are two layouts of the update; choose one")
        return self

    # Set by TrainConfig from its loss section (`loss_depends_on_cut`): whether the cut acts.
    _loss_cut: bool = PrivateAttr(False)

    def inert_fields(self) -> set[str]:
        return set() if self._loss_cut else set(CUT_FIELDS)


class LossConfig(Strict):
    """The policy-gradient loss: clipping, aggregation, advantage scaling, entropy, KL, shaping."""

    ppo_mini_batches: int = Field(
        1,
        ge=1,
        description="optimizer steps per batch (LUFFY/verl: train_batch_size / "
        "ppo_mini_batch_size): the batch's groups split into this many mini-batches, "
        "old log-probs computed once before the first; >1 makes clip* act",
        json_schema_extra=inert("1 (the default): keys from before the option"),
    )
    clip: bool = Field(
        True,
        description="PPO's clipped surrogate on on-policy rows (the ratio to the behaviour policy kept within "
        "[1 - clip_eps_low, 1 + clip_eps_high]); false: the plain ratio times the advantage",
        json_schema_extra=inert(_NO_CLIP),
    )
    clip_eps_low: float = Field(
        0.2,
        ge=0,
        description="lower clip range: with a negative advantage, a token whose ratio fell below 1 - this gets no "
        "further push down",
        json_schema_extra=inert(_NO_CLIP),
    )
    clip_eps_high: float = Field(
        0.2,
        ge=0,
        description="upper clip range: with a positive advantage, a token whose ratio rose above 1 + this gets no "
        "further push up (DAPO's clip-higher raises it)",
        json_schema_extra=inert(_NO_CLIP),
    )
    loss_agg: Literal["token_mean", "seq_mean", "constant_len"] = Field(
        "token_mean",
        description="how per-token losses become the batch's: token_mean (every token weighs the same), seq_mean "
        "(every sequence does) or constant_len (Dr. GRPO: summed, divided by rows x rollout.max_new_tokens)",
    )
    scale_rewards: Literal["group", "none"] = Field(
        "group",
        description="group: advantages divided by the group's reward std (GRPO); none: only centred on the group "
        "mean (Dr. GRPO)",
    )
    entropy_coef: float = Field(
        0.0, description="weight of the entropy bonus subtracted from the loss (entropy_agg); 0: none"
    )
    entropy_agg: Literal["loss_agg", "token_mean"] = Field(
        "loss_agg",
        description="how the entropy bonus is averaged: like the loss (loss_agg) or, as "
        "LUFFY/verl, a token mean per micro-batch (token_mean; micro-batches "
        "then weigh by their row share under seq_mean / constant_len)",
    )
    beta: float = Field(0.0, ge=0, description="KL to the initial policy (k3)")
    gamma: float = Field(0.1, gt=0, description="policy shaping of teacher rows f(p) = p / (p + gamma)")

    def inert_fields(self) -> set[str]:
        if self.ppo_mini_batches == 1:
            return {"clip", "clip_eps_low", "clip_eps_high", "ppo_mini_batches"}
        return set()


_VLLM_ONLY = "acts with rollout.engine vllm only (and the cap with a correction)"
_CHECK = "a check: it stops (or warns about) a broken run and changes nothing in a run it lets go on"


class RolloutConfig(Strict):
    """How on-policy rollouts are sampled, and by which engine."""

    max_new_tokens: int = Field(96, ge=1, description="token budget of one rollout; a longer answer is cut")
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature of the rollouts; the update's log-probs and entropies use it too"
    )
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts; 1: the whole vocabulary")
    batch_prompts: int = Field(
        8,
        ge=1,
        serialization_alias="rollout_batch_prompts",
        description="prompts per generation call; each call is seeded by its "
        "global index, so results do not depend on num_processes",
    )
    # In the key only when not hf.
    engine: Literal["hf", "paged", "vllm"] = Field(
        "hf",
        serialization_alias="rollout_engine",
        description="hf: padded transformers generate; paged: transformers continuous "
        "batching with paged attention (no padding, finished rollouts leave the "
        "batch; entropies from one extra no-grad forward pass); both sample from the "
        "module being trained. vllm: an in-process vLLM engine beside it, given the "
        "weights every sync_every optimizer steps, entropies from one no-grad pass",
        json_schema_extra=omitted_at_default("keys from before the option; paged and vllm sample other random streams"),
    )
    sync_every: int = Field(
        1,
        ge=1,
        description="vllm: optimizer steps between weight pushes (1: every rollout comes from the current policy)",
        json_schema_extra=inert(_VLLM_ONLY),
    )
    correction: Literal["token", "sequence", "none"] = Field(
        "token",
        description="vllm: truncated importance sampling of the on-policy loss by "
        "min(pi_train / pi_vllm, correction_cap), per token or per sequence "
        "(TRL's vllm_importance_sampling_correction, verl's rollout_is)",
        json_schema_extra=inert(_VLLM_ONLY),
    )
    correction_cap: float = Field(
        3.0, gt=0, description="the cap C (TRL's default)", json_schema_extra=inert(_VLLM_ONLY)
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="vllm: KV cache size (default on a CPU: 1 GiB; on a GPU: vLLM's share of its memory)",
        json_schema_extra=not_in_key("a memory bound"),
    )
    sleep: bool = Field(
        False,
        description="vllm on a GPU: put the engine to sleep (vLLM's sleep mode: KV cache freed, weights "
        "dropped with sync_every 1 (level 2), else offloaded to host memory (level 1)) during the update, "
        "and wake it in two parts, weights, the push, then the KV cache, so the update has the memory; "
        "an error where vLLM has no sleep mode (its CPU build)",
        json_schema_extra=not_in_key("memory only: the weights come back as they were"),
    )

    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="vllm: the engine's weights and compute, whatever the master weights are (verl and "
        "TRL roll out in bf16 beside float32 training state); auto: bfloat16 on a GPU, float32 on a CPU",
        json_schema_extra=resolved(
            "the dtype that runs, when it differs from the policy's weights (before the option the engine "
            "took the policy's dtype): it changes the samples"
        ),
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vllm on a GPU: the share of the GPU's memory the engine may take (its weights, "
        "activations and KV cache); default 0.3. `oger plan` counts it in the per-GPU memory",
        json_schema_extra=not_in_key("a memory bound"),
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vllm under torchrun: ranks that share one engine (its weights split over them; each "
        "group gathers its ranks' prompts and hands each its rollouts back, as TRL's colocate mode); 1: an "
        "engine per rank",
        json_schema_extra=not_in_key("the same engine split over ranks: the same samples, other rounding"),
    )
    max_push_logp_diff: float | None = Field(
        None,
        gt=0,
        description="vllm: after the engine's build and every weight push, the engine's log-probs of a fixed "
        "probe continuation must be within this of the trainer's (and a fingerprint of its weights equal to "
        "the trainer's), or the run stops (a push that did not take effect); default: 1e-3 for float32 on "
        "a CPU, 1.0 for a bf16 engine or trainer or on a GPU (measured: oger.stages.train.engine_guard)",
        json_schema_extra=not_in_key(_CHECK),
    )
    max_rollout_kl: float | None = Field(
        None,
        gt=0,
        description="vllm: a step whose rollout_kl (KL(pi_vllm || pi_train) over its sampled tokens) is above "
        "this warns or stops (on_rollout_kl); null: no threshold",
        json_schema_extra=not_in_key(_CHECK),
    )
    on_rollout_kl: Literal["warn", "stop"] = Field(
        "warn", description="what a step over max_rollout_kl does", json_schema_extra=not_in_key(_CHECK)
    )

    def inert_fields(self) -> set[str]:
        if self.engine != "vllm":
            return {"sync_every", "correction", "correction_cap"}
        return {"correction_cap"} if self.correction == "none" else set()


class DistributedConfig(Strict):
    """Training on several processes, on one machine or several: the same model either way (DDP, FSDP2 and
    HSDP give the one-process gradient), so not in the key."""

    num_processes: int = Field(
        1, ge=1, description="ranks per node (one per GPU); > 1, or nnodes > 1, launches the trainer on torchrun"
    )
    nnodes: int = Field(
        1,
        ge=1,
        description="machines the ranks span; > 1 with runner.kind ray: one torchrun agent per node as a Ray task "
        "in a strictly spread placement group; without Ray: run the command `oger plan` prints on every other node",
    )
    launcher: Literal["torchrun", "accelerate"] = Field(
        "torchrun", description="what starts the ranks on a node (several nodes: torchrun only)"
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl with CUDA, else gloo")
    fsdp: bool | Literal["hybrid"] = Field(
        False,
        description="true: shard parameters, gradients and optimizer state over all ranks (FSDP2) instead of "
        "replicating them (DDP); hybrid: shard within a node and replicate across nodes (HSDP, a 2-D mesh), "
        "so the per-layer all-gathers and reduce-scatters stay on a node's fast links",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory for about a third more compute"
    )
    timeout_s: int = Field(
        1800,
        ge=10,
        description="collective timeout: a rank waiting longer for the others (a dead node, a hung rank) fails "
        "the run with an error instead of hanging",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port of the first node's torchrun rendezvous when nnodes > 1 without Ray (with Ray it "
        "is chosen on the first node of the placement group)",
    )

    @property
    def world(self) -> int:
        """All ranks: nnodes x num_processes."""
        return self.nnodes * self.num_processes

    @property
    def sharded(self) -> bool:
        """FSDP2 in either form (over all ranks, or HSDP)."""
        return bool(self.fsdp)

    @model_validator(mode="after")
    def _nodes(self) -> "DistributedConfig":
        if self.fsdp == "hybrid" and self.nnodes < 2:
            raise ValueError("distributed.fsdp 'hybrid' replicates across nodes: it needs nnodes > 1 (or fsdp: true)")
        if self.nnodes > 1 and self.launcher != "torchrun":
            raise ValueError("distributed.nnodes > 1 runs one torchrun agent per node: set launcher 'torchrun'")
        if self.rdzv_endpoint is not None and ":" not in self.rdzv_endpoint:
            raise ValueError(f"distributed.rdzv_endpoint {self.rdzv_endpoint!r}: expected host:port")
        return self


class TrainLogging(Strict):
    """What a run writes besides the model: checkpoints and per-sample logs."""

    checkpoint_every: int = Field(10, ge=1, description="steps between resumable checkpoints")
    log_rollouts: bool = Field(True, description="write every sample's text, reward and bonus")


# Where the fields of the flat TrainConfig went (its sections came later); see `_moved_fields`.
MOVED_TRAIN_FIELDS = {
    **{
        f: f"optim.{f}"
        for f in (
            "lr",
            "optimizer",
            "weight_decay",
            "warmup_steps",
            "lr_schedule",
            "max_grad_norm",
            "micro_batch_size",
            "max_tokens_per_micro_batch",
            "padding_free",
        )
    },
    **{
        f: f"loss.{f}"
        for f in (
            "ppo_mini_batches",
            "clip",
            "clip_eps_low",
            "clip_eps_high",
            "loss_agg",
            "scale_rewards",
            "entropy_coef",
            "entropy_agg",
            "beta",
            "gamma",
        )
    },
    **{f: f"rollout.{f}" for f in ("max_new_tokens", "temperature", "top_p")},
    "rollout_batch_prompts": "rollout.batch_prompts",
    "rollout_engine": "rollout.engine",
    **{f: f"distributed.{f}" for f in ("num_processes", "launcher", "backend", "fsdp", "gradient_checkpointing")},
    **{f: f"logging.{f}" for f in ("checkpoint_every", "log_rollouts")},
}

# The sections keep their fields' flat names in the key: keys from before the sections stay valid.
_FLAT = flat_in_key("keys from before the sections: its fields keep their flat names")


class TrainConfig(Strict):
    algorithm: Literal["grpo", "luffy", "oger"] = Field(
        "oger",
        description="grpo: on-policy rollouts only; luffy: replace_k rollouts per group become teacher traces "
        "(policy shaping); oger: luffy plus the exploration bonus (`oger`)",
    )
    steps: int = Field(40, ge=1, description="RL steps, each one batch of rollouts and its update")
    prompts_per_step: int = Field(8, ge=1, description="problems drawn from the pool per step (all of a smaller pool)")
    group_size: int = Field(
        8, ge=2, description="rollouts per problem: the group whose rewards set each one's advantage"
    )
    replace_k: int = Field(
        1, ge=0, description="luffy, oger: rollouts per group replaced by the problem's teacher traces; 0: none"
    )
    replace_policy: Literal["always", "when_all_fail"] = Field(
        "always",
        description="which groups get teacher traces: every group of a problem with traces, or only those where "
        "no rollout is correct",
    )
    oger: OgerRewardConfig = Field(OgerRewardConfig(), description="the exploration bonus (algorithm oger)")
    reward_format: Literal["plain", "think"] = Field(
        "plain", description="think (LUFFY): no </think> -> reward 0; only the text after it is verified"
    )
    teacher_think_prefix: Literal["strip", "keep"] = Field(
        "strip",
        description="strip (LUFFY): a teacher trace starting with '<think>\\n' loses it when "
        "the prompt already ends with '<think>\\n'",
    )
    split: str = Field("train", description="the problems split RL draws its prompts from")
    max_prompts: int | None = Field(
        None, ge=1, description="RL prompt pool: the first N problems of the split (a small pool learns visibly faster)"
    )
    seed: int = Field(0, description="seed of the prompt draws, the rollouts' sampling and the teacher rows' choice")
    init_from: Literal["policy", "previous_round"] = Field(
        "policy",
        description="policy: start from the policy-stage model; previous_round: continue "
        "from the latest trained model of an earlier teachers.round in this "
        "workdir (same policy recipe), the policy model when there is none",
        json_schema_extra=omitted_at_default("keys from before the option; the start checkpoint's key is an input"),
    )
    precision: Literal["float32", "bf16-mixed", "auto"] = Field(
        "float32",
        description="bf16-mixed: bf16 compute, float32 master weights and optimizer state (autocast on one "
        "process and under DDP, FSDP2's MixedPrecisionPolicy with float32 gradient reduction); auto: "
        "bf16-mixed on an NVIDIA GPU or a CPU with native bf16, else float32 (the paper configs)",
        json_schema_extra=resolved(
            "resolved once at plan time (oger.runtime.precision.resolve_training); the train key holds "
            "what it resolves to, float32 (the behaviour before the option) left out"
        ),
    )
    optim: OptimConfig = Field(OptimConfig(), description="the optimizer and its schedule", json_schema_extra=_FLAT)
    loss: LossConfig = Field(LossConfig(), description="the policy-gradient loss", json_schema_extra=_FLAT)
    rollout: RolloutConfig = Field(
        RolloutConfig(), description="how rollouts are sampled, and by which engine", json_schema_extra=_FLAT
    )
    distributed: DistributedConfig = Field(
        DistributedConfig(),
        description="training on several processes or machines",
        json_schema_extra=not_in_key(_SAME_MODEL),
    )
    logging: TrainLogging = Field(
        TrainLogging(),
        description="checkpoints and per-sample logs",
        json_schema_extra=not_in_key("logging; a resumed run continues the same random streams"),
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data):
        """A field from before the sections is an error naming its new place (not a second spelling)."""
        if isinstance(data, dict):
            moved = [f"train.{k} is now train.{MOVED_TRAIN_FIELDS[k]}" for k in data if k in MOVED_TRAIN_FIELDS]
            if moved:
                raise ValueError("; ".join(moved))
        return data

    @model_validator(mode="after")
    def _cut_acts(self) -> "TrainConfig":
        self.optim._loss_cut = self.loss_depends_on_cut  # the micro-batching fields join the key then
        return self

    @model_validator(mode="after")
    def _shardable(self) -> "TrainConfig":
        problem = self.sharding_problem(self.prompts_per_step)
        if problem:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}): {problem}")
        if self.distributed.fsdp and self.distributed.world < 2:
            raise ValueError("distributed.fsdp needs more than one rank (num_processes or nnodes > 1)")
        if self.rollout.sleep and self.rollout.engine != "vllm":
            raise ValueError("rollout.sleep acts on a vLLM engine: set rollout.engine 'vllm' or drop it")
        tp = self.rollout.tensor_parallel_size
        if tp > 1 and (self.rollout.engine != "vllm" or self.distributed.num_processes % tp):
            raise ValueError(
                f"rollout.tensor_parallel_size {tp} splits a vLLM engine over that many ranks: it needs rollout.engine "
                f"'vllm' and distributed.num_processes ({self.distributed.num_processes}) a multiple of it"
            )
        if self.distributed.fsdp and self.rollout.engine == "paged":
            raise ValueError(
                "rollout.engine 'paged' runs a data-dependent number of forward passes "
                "per rank, which FSDP's parameter all-gathers cannot follow: use "
                "rollout.engine 'hf' (synced_gpus) with fsdp, or DDP"
            )
        if self.optim.share_prompts and self.distributed.gradient_checkpointing:
            raise ValueError(
                "optim.share_prompts keeps each prompt's KV cache for its group's rows, "
                "which gradient checkpointing turns off (use_cache): drop one of them"
            )
        return self

    def sharding_problem(self, prompts: int) -> str | None:
        """Why `prompts` per step cannot be spread over the ranks (None: it can). The one place the
        rule lives: the config checks prompts_per_step, the train stage the pool-capped count."""
        ranks, batch = self.distributed.world, self.rollout.batch_prompts
        if ranks > 1 and prompts % (ranks * batch):
            return (
                f"{prompts} prompts per step is not a multiple of the ranks (distributed.nnodes x num_processes) x "
                f"rollout.batch_prompts ({ranks} x {batch}): every rank rolls out whole "
                f"generation calls, so the result does not depend on the number of processes"
            )
        return None

    @property
    def loss_depends_on_cut(self) -> bool:
        """Whether the loss depends on how a batch is cut into micro-batches: an entropy bonus with
        `entropy_agg: token_mean` (LUFFY/verl) averages the entropy per micro-batch, and micro-batches are
        cut per rank. Then the micro-batching fields (`OptimConfig.inert_fields`) and the world size
        (the train stage's key) are in the train key, and no extra cut (threads) is made; else every cut
        gives the same gradient."""
        return bool(self.loss.entropy_coef) and self.loss.entropy_agg == "token_mean"

    @property
    def replaces(self) -> bool:
        return self.algorithm in ("luffy", "oger") and self.replace_k > 0

    @property
    def bonus_lambda(self) -> float:
        return self.oger.lam if self.algorithm == "oger" else 0.0
