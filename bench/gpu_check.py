"""`python -m bench gpu_check`: OUR trainer on one CUDA GPU, in one call (estimated 5-7 minutes on an
H100/H200, not yet run on one, within the 8 a device call allows; nothing downloaded).

On a random-init Qwen2-0.5B-shaped bf16 policy it runs a few real steps of
`oger.stages.train.trainer.train()` (oger preset: teacher replacement and the exploration bonus, from a small
LanceDB index of scripted teacher traces built here) once per rollout engine (`hf`, `paged`): rollout
tokens/s, s/step and peak memory, and the update's MFU; then the same trainer at world size 1 under
torchrun with the NCCL backend, once with DDP and once with FSDP2 (a one-rank Dist that really wraps,
all-reduces and gathers); the update alone on a batch of very different lengths, padded vs packed
(`optim.padding_free`: time and MFU of each); then the evaluate stage's HF engine (padded and paged)
on a small slice.
Between the update layouts and torchrun, the paper's model size (`run_paper_model`): a random-init
Qwen2.5-1.5B-shaped policy (1.54 B parameters, the real 151,936-token vocabulary) trained by the same
trainer in `precision: bf16-mixed` (float32 master weights and AdamW state, bf16 compute under autocast
on one process) with the 1.5B paper config's loss, optimizer and gradient checkpointing, for 3 steps of
2 prompts x 4 rollouts of 512 new tokens from transformers `generate` (vLLM is not installed where it
runs): step time, decode tokens/s, peak GPU memory and the update's MFU, beside the plan's estimate of
the peak (`planned_peak_gib`: `oger plan`'s estimate for the same run).
Expected: weights, gradients and AdamW state 24.7 GB, a peak near 30 GiB; about 1.5 minutes (each step
decodes 512 tokens at batch 8, ~20-30 ms a token, launch-bound: ~15 s; the update ~2 s; the last
step's checkpoint and exported model write ~25 GB, ~0.5 min). Estimated time by part: start-up,
tokenizer, encoder and index ~0.5 min; the 0.5B engines ~1.5; the update layouts ~0.3; the 1.5B part
~1.5; torchrun DDP + FSDP2 ~1.5; evaluate ~0.5: 5-6 minutes, 7 if decoding is twice as slow. Each part
prints a line when done (with the seconds since the start), so a run cut by the limit shows where it was.
It prints a table and one RESULT line with every figure.

Nothing beyond the repository is needed: the tokenizer is trained on the synthetic task, the models
are built from configs, and the encoder is MiniLM from its package or, where that package is missing
(the device machine), a random-init small BERT sentence encoder built here (said in the output:
the bonus then measures nothing meaningful, the timings stay representative).
Without CUDA it says so and exits 0. `run_check(device="cpu", scale=TINY)` runs every step at tiny
sizes on CPU (tests/test_gpu_check.py), so a typo does not wait for a GPU to surface.
bench/gpu_step.py stays: it times a bare forward/backward at a fixed shape (peak-MFU reference).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import REPO, machine, result, table
from bench.gpu_step import PEAK_TFLOPS
from oger.contract.config import TrainConfig
from oger.contract.errors import ConfigError
from oger.encoder import encode, load_encoder
from oger.generation.base import Request, generate_sorted
from oger.generation.engines import make_engine
from oger.generation.hf import chat_prompt_ids
from oger.models import resolve_model
from oger.stages.policy.tiny_model import train_tokenizer
from oger.stages.train.distributed import Dist
from oger.stages.train.files import read_rollouts
from oger.stages.train.setup import TrainInputs
from oger.stages.train.trainer import train
from oger.synthetic import EXPRESSION_STYLES as STYLES
from oger.synthetic import generate_problems, scripted_solution
from oger.verify import score_response


@dataclass(frozen=True)
class Scale:
    model: str  # "qwen0.5b" or "tiny"
    train_problems: int
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    steps: int
    micro_batch_size: int
    eval_problems: int
    eval_max_new_tokens: int
    update_samples: int  # the update alone, padded vs packed: prompts 64 tokens (4 at tiny sizes),
    update_longest: int  # responses uniform in [16, update_longest] (the paper's spread scaled down)
    update_max_tokens: int  # packed: optim.max_tokens_per_micro_batch


GPU = Scale(
    "qwen0.5b",
    train_problems=64,
    prompts_per_step=16,
    group_size=8,
    max_new_tokens=256,
    steps=3,
    micro_batch_size=16,
    eval_problems=64,
    eval_max_new_tokens=256,
    update_samples=64,
    update_longest=2048,
    update_max_tokens=16384,
)
TINY = Scale(
    "tiny",
    train_problems=16,
    prompts_per_step=2,
    group_size=4,
    max_new_tokens=10,
    steps=2,
    micro_batch_size=8,
    eval_problems=4,
    eval_max_new_tokens=10,
    update_samples=6,
    update_longest=24,
    update_max_tokens=64,
)
QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151_936,
)
# Qwen2.5-1.5B's (and Qwen2.5-Math-1.5B's) shape, from its config.json; the paper's 1.5B policy.
QWEN2_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151_936,
)
TABLE, TAG = "traces", "gpu_check"
PAPER_CONFIG = REPO / "configs" / "qwen2.5-math-1.5b-oger.yaml"  # its loss, optim and checkpointing


@dataclass(frozen=True)
class PaperPart:
    """The paper-sized part of the check (`run_paper_model`): a model shape and a short run."""

    name: str
    shape: tuple[tuple[str, int], ...]  # Qwen2Config fields (a tuple: the dataclass stays hashable)
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    steps: int


PAPER_PARTS = {  # by Scale.model: the GPU's check and the CPU test's (its figures under the same names)
    "qwen0.5b": PaperPart(
        "qwen1.5b", tuple(QWEN2_15B.items()), prompts_per_step=2, group_size=4, max_new_tokens=512, steps=3
    ),
    "tiny": PaperPart(
        "qwen1.5b",
        tuple(
            dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                vocab_size=1024,  # past the tokenizer's, as the real vocabulary is
            ).items()
        ),
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=10,
        steps=2,
    ),
}


# --------------------------------------------------------------------------- building blocks


def build_tokenizer(workdir: Path):
    """A BPE tokenizer trained on the synthetic task and its scripted solutions (saved for ranks)."""
    corpus = []
    for p in generate_problems(0, 300, 2, 4, 9, "+-"):
        corpus += [p.question] + [scripted_solution(s, p.question, (s, 0), 0.0) for s in STYLES]
    tok = train_tokenizer(corpus, 400)
    tok.save_pretrained(workdir / "tokenizer")
    return tok


def build_policy(tok, scale: Scale, device: str, dtype):
    """A random-init Qwen2 policy: 0.5B-shaped (151,936-token vocabulary; ids past the tokenizer's
    decode to nothing) or tiny; the same weights for every engine (seeded)."""
    shape = (
        QWEN2_05B
        if scale.model == "qwen0.5b"
        else dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=len(tok),
        )
    )
    return qwen2(tok, shape, device, dtype)


def qwen2(tok, shape: dict, device: str, dtype):
    """A random-init Qwen2ForCausalLM of this shape (tied embeddings), seeded, built on `device`
    directly: initialising 1.5 B parameters on the host first costs the check tens of seconds."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        **shape,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    model = model.to(dtype=dtype)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return model


def build_encoder(workdir: Path, prefer_minilm: bool = True) -> tuple[str, str]:
    """(encoder ref for load_encoder, kind): MiniLM from its package, else a random-init BERT
    sentence encoder (WordPiece vocabulary from the task corpus) saved under workdir."""
    if prefer_minilm:
        try:
            resolve_model("minilm")
            return "minilm", "minilm"
        except ConfigError:
            pass
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 6.2; the device machine has 6.0
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    words = set()
    for p in generate_problems(0, 200, 2, 4, 9, "+-"):
        for text in [p.question] + [scripted_solution(s, p.question, (s, 0), 0.0) for s in STYLES]:
            words.update(text.replace("\\", " \\ ").split())
    chars = {c for w in words for c in w}
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted(chars),
        *sorted(f"##{c}" for c in chars),
        *sorted(words - chars),
    ]
    bert_dir = workdir / "random-bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    (bert_dir / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt"), do_lower_case=False).save_pretrained(bert_dir)
    import torch

    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(dict.fromkeys(vocab)),
            hidden_size=384,
            num_hidden_layers=2,
            num_attention_heads=6,
            intermediate_size=1536,
        )
    ).save_pretrained(bert_dir)
    word = Transformer(str(bert_dir), max_seq_length=256)
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    st = SentenceTransformer(modules=[word, Pooling(dim(), "mean")], device="cpu")
    out = workdir / "random-bert-st"
    st.save(str(out))
    return str(out), "random_bert"


def lancedb_available() -> bool:
    """The device machine has neither lancedb nor polars (and they are far over what a call
    carries): there the check reads the same traces from an in-memory index instead."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("lancedb", "polars"))


class MemoryIndex:
    """TeacherIndex.lookup over an .npz of the traces (the trainer only calls lookup)."""

    def __init__(self, path: Path):
        import numpy as np

        data = np.load(path)
        self.pids, self.tids, self.texts = (data[k].tolist() for k in ("problem_id", "trace_id", "text"))
        self.vecs = data["vector"]

    def lookup(self, problem_ids: list[str]) -> dict:
        want, grouped = set(problem_ids), {}
        for i in sorted(range(len(self.tids)), key=self.tids.__getitem__):  # TeacherIndex's order
            if self.pids[i] in want:
                grouped.setdefault(self.pids[i], []).append(i)
        return {p: ([self.texts[i] for i in idx], self.vecs[idx]) for p, idx in grouped.items()}


def build_index(workdir: Path, encoder_ref: str, problems, prefer_lancedb: bool = True) -> str:
    """Three scripted teacher traces per problem, embedded, in a LanceDB table tagged TAG (or an
    in-memory index where lancedb is missing); returns which."""
    import numpy as np

    rows = [(pid, f"{pid}:{s}", scripted_solution(s, q, (s, pid), 0.0)) for pid, q in problems.items() for s in STYLES]
    vecs = encode(load_encoder(encoder_ref), [r[2] for r in rows])
    cols = {"problem_id": [r[0] for r in rows], "trace_id": [r[1] for r in rows], "text": [r[2] for r in rows]}
    if not (prefer_lancedb and lancedb_available()):
        np.savez(workdir / "index.npz", **{k: np.array(v) for k, v in cols.items()}, vector=vecs)
        return "memory"
    import lancedb
    import pyarrow as pa

    data = pa.table({**cols, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])})
    db = lancedb.connect(str(workdir / "index"))
    tbl = db.create_table(TABLE, data, mode="overwrite")
    tbl.tags.create(TAG, tbl.version)
    return "lancedb"


def train_inputs(workdir: Path, encoder_ref: str, scale: Scale):
    if (workdir / "index.npz").exists():
        index = MemoryIndex(workdir / "index.npz")
    else:
        from oger.stages.index.files import TeacherIndex  # imports polars: absent on the device machine

        index = TeacherIndex(workdir / "index", TABLE, TAG)
    probs = generate_problems(7, scale.train_problems, 2, 3, 9, "+-")
    return TrainInputs(
        questions={f"p{i}": p.question for i, p in enumerate(probs)},
        answers={f"p{i}": str(p.answer) for i, p in enumerate(probs)},
        problem_ids=[f"p{i}" for i in range(len(probs))],
        index=index,
        encoder=encoder_ref,
        instruction="Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}",
    )


def train_config(scale: Scale, engine: str):
    return TrainConfig(
        algorithm="oger",
        steps=scale.steps,
        prompts_per_step=scale.prompts_per_step,
        group_size=scale.group_size,
        rollout={
            "max_new_tokens": scale.max_new_tokens,
            "batch_prompts": scale.prompts_per_step,
            "engine": engine,
        },
        optim={"lr": 1e-6, "micro_batch_size": scale.micro_batch_size},
        logging={"checkpoint_every": scale.steps},
    )


def _peak_gib(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_tflops(device: str) -> float | None:
    """The GPU's dense bf16 peak (bench.gpu_step.PEAK_TFLOPS) by its name; None on a CPU or unknown GPU."""
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else ""
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def step_figures(run_dir: Path, history: list[dict], tok, inputs, params: int, device: str) -> dict:
    """Rollout tokens/s, s/step and the update's MFU over the steps after the first (warm-up)."""
    rows = read_rollouts(run_dir)
    keep = history[1:] or history
    steps = {h["step"] for h in keep}
    rows = [r for r in rows if r["step"] in steps]
    prompt_len = {
        pid: len(chat_prompt_ids(tok, inputs.questions[pid], inputs.instruction))
        for pid in {r["problem_id"] for r in rows}
    }
    gen_tokens = sum(r["response_tokens"] for r in rows if not r["off_policy"])
    update_tokens = sum(r["response_tokens"] + prompt_len[r["problem_id"]] for r in rows)
    t_gen = sum(h["seconds_generate"] for h in keep)
    t_update = sum(h["seconds_update"] for h in keep)
    peak = peak_tflops(device)
    return {
        "tokens_per_s": gen_tokens / t_gen,
        "s_per_step": sum(h["seconds_step"] for h in keep) / len(keep),
        "generate_s": t_gen / len(keep),
        "update_s": t_update / len(keep),
        "mfu": 6 * params * update_tokens / t_update / (peak * 1e12) if peak else float("nan"),
        "peak_gib": _peak_gib(device),
    }


def run_engine(workdir: Path, tok, inputs, scale: Scale, engine: str, device: str, dtype) -> dict:
    _reset_peak(device)
    model = build_policy(tok, scale, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    run_dir = workdir / f"train-{engine}"
    history = train(train_config(scale, engine), model, tok, inputs, run_dir)
    figures = step_figures(run_dir, history, tok, inputs, params, device)
    if engine == "hf":  # the evaluate stage reads a saved model folder
        model.save_pretrained(workdir / "eval-model")
        tok.save_pretrained(workdir / "eval-model")
    del model
    return {**figures, "params": params}


# --------------------------------------------------------------------------- the update, padded vs packed


def update_configs(scale: Scale) -> dict:
    """The update's two layouts at this scale, as TrainConfigs (same loss settings)."""
    common = dict(loss={"loss_agg": "token_mean"}, rollout={"max_new_tokens": scale.update_longest})
    return {
        "padded": TrainConfig(optim={"micro_batch_size": scale.micro_batch_size}, **common),
        "packed": TrainConfig(
            optim={"padding_free": True, "max_tokens_per_micro_batch": scale.update_max_tokens}, **common
        ),
    }


def run_update_layouts(tok, scale: Scale, device: str, dtype) -> dict:
    """`trainer.update` alone on one batch of very different lengths (bench/update.py's batch at this
    scale), padded micro-batches (`micro_batch_size`, sorted by length) vs padding-free ones
    (`max_tokens_per_micro_batch`): best of two timed runs after a warm-up, and the MFU of each
    counted on real tokens only (what padding wastes shows as a lower MFU)."""
    from bench.update import positions, spread_batch, timed_update

    model = build_policy(tok, scale, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    prompt = 64 if scale.model != "tiny" else 4
    samples = spread_batch(
        len(tok),
        scale.update_samples,
        prompt=prompt,
        shortest=min(16, scale.update_longest),
        longest=scale.update_longest,
    )
    arms = update_configs(scale)
    peak = peak_tflops(device)
    out = {}
    for arm, cfg in arms.items():
        timed_update(model, samples, cfg, tok.pad_token_id)  # warm-up (kernels, allocator)
        best = min(timed_update(model, samples, cfg, tok.pad_token_id) for _ in range(2))
        run, real = positions(samples, cfg)
        out[f"update_{arm}_s"] = best
        out[f"update_{arm}_positions"] = run
        out[f"update_{arm}_mfu"] = 6 * params * real / best / (peak * 1e12) if peak else float("nan")
    out["update_tokens"] = real
    out["update_packed_over_padded"] = out["update_packed_s"] / out["update_padded_s"]
    del model
    return out


# --------------------------------------------------------------------------- the paper's model size


def paper_config(part: PaperPart):
    """The TrainConfig of the paper-sized part: the 1.5B paper config's `loss` and `optim` sections and
    its gradient checkpointing (read from the YAML, so the check follows the config), bf16-mixed, and
    this part's short run with `hf` rollouts."""
    import yaml

    paper = yaml.safe_load(PAPER_CONFIG.read_text())["train"]
    return TrainConfig(
        algorithm="oger",
        steps=part.steps,
        prompts_per_step=part.prompts_per_step,
        group_size=part.group_size,
        precision="bf16-mixed",
        loss=paper["loss"],
        optim=paper["optim"],
        rollout={"max_new_tokens": part.max_new_tokens, "batch_prompts": part.prompts_per_step, "engine": "hf"},
        distributed={"gradient_checkpointing": paper["distributed"]["gradient_checkpointing"]},
        logging={"checkpoint_every": part.steps},
    )


def planned_peak_gib(cfg, model_config) -> float | None:
    """The plan's estimate of this run's per-GPU peak (`oger plan`'s train-stage estimate,
    `oger.stages.train.resources`: the larger of the rollouts' and the update's), for a config whose
    policy is this model (its config.json, written to a scratch folder the estimate reads), printed
    beside the measured peak. None when the estimate cannot read the shape."""
    from oger.contract.config import load_config
    from oger.contract.config.policy import PolicyConfig
    from oger.runtime.estimate import GiB
    from oger.stages.train.resources import layout, phases

    with tempfile.TemporaryDirectory() as folder:
        model_config.save_pretrained(folder)
        synthetic = load_config(REPO / "configs" / "tiny.yaml")  # prompts of the synthetic task, as here
        full = synthetic.model_copy(update={"policy": PolicyConfig(source="model", model=folder), "train": cfg})
        lay = layout(full)
        if lay is None:
            return None
        return max(sum(pieces.values()) for pieces, _ in phases(lay).values()) / GiB


def _dir_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def run_paper_model(workdir: Path, tok, inputs, part: PaperPart, device: str) -> dict:
    """The trainer on a random-init model of the paper's size in `precision: bf16-mixed` on one process:
    float32 master weights and AdamW state on the device, bf16 compute under autocast (`Dist.precision`),
    rollouts from transformers `generate`. Figures over the steps after the first (step_figures), the
    whole run's wall time and the size of its run folder: the last step's checkpoint (float32 model and
    AdamW state) and exported model, ~25 GB at 1.5B, deleted once measured."""
    import torch

    _reset_peak(device)
    model = qwen2(tok, dict(part.shape), device, torch.float32)
    params = sum(p.numel() for p in model.parameters())
    cfg = paper_config(part)
    run_dir = workdir / f"train-{part.name}"
    started = time.perf_counter()
    history = train(cfg, model, tok, inputs, run_dir, dist=Dist(device=torch.device(device), precision="bf16-mixed"))
    wall = time.perf_counter() - started
    figures = step_figures(run_dir, history, tok, inputs, params, device)
    planned = planned_peak_gib(cfg, model.config)
    out = {
        **figures,
        "params_m": params / 1e6,
        "vocab_size": model.config.vocab_size,
        "master_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "train_wall_s": wall,
        "run_dir_gib": _dir_gib(run_dir),
        "planned_peak_gib": float("nan") if planned is None else planned,
    }
    shutil.rmtree(run_dir)  # read: ~25 GB of disk at 1.5B the later parts may need
    del model, history
    gc.collect()  # the run's optimizer state: freed before torchrun's rank needs the GPU
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- torchrun, one rank


def run_ranked(
    workdir: Path, encoder_ref: str, scale: Scale, device: str, modes: tuple[str, ...] = ("ddp", "fsdp2")
) -> dict[str, dict]:
    """The trainer at world size 1 under one torchrun launch (NCCL on CUDA, gloo on CPU), once per
    mode (DDP, FSDP2); figures per mode."""
    spec = {
        "workdir": str(workdir),
        "encoder": encoder_ref,
        "scale": asdict(scale),
        "device": device,
        "modes": list(modes),
    }
    spec_path = workdir / "rank.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "bench.gpu_check",
        "--rank",
        str(spec_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    figures = {}
    for line in proc.stdout.splitlines():
        if line.startswith("GPU_CHECK_RANK "):
            fig = json.loads(line[len("GPU_CHECK_RANK ") :])
            figures[fig["mode"]] = fig
    if proc.returncode != 0 or set(figures) != set(modes):
        raise RuntimeError(
            f"gpu_check: torchrun {'/'.join(modes)} failed (status {proc.returncode}):\n"
            + "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        )
    return figures


def rank_main(spec_path: str) -> int:
    """torchrun's child: join the process group and train with a one-rank Dist that is `active`,
    so DDP / FSDP2 wrapping, no_sync, all-reduce, gathers and FSDP state dicts really run."""
    import torch
    from transformers import AutoTokenizer

    spec = json.loads(Path(spec_path).read_text())
    workdir, scale, device = Path(spec["workdir"]), Scale(**spec["scale"]), spec["device"]

    class OneRankDist(Dist):
        @property
        def active(self) -> bool:  # world size 1, yet every collective and wrapper runs
            return True

    backend = "nccl" if device == "cuda" else "gloo"
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    torch.distributed.init_process_group(backend=backend, rank=0, world_size=1)
    try:
        tok = AutoTokenizer.from_pretrained(workdir / "tokenizer")
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        inputs = train_inputs(workdir, spec["encoder"], scale)
        for mode in spec["modes"]:
            dist = OneRankDist(0, 1, 0, dev, fsdp=mode == "fsdp2")
            _reset_peak(device)
            model = build_policy(tok, scale, device, dtype)
            params = sum(p.numel() for p in model.parameters())
            run_dir = workdir / f"train-{mode}"
            # FSDP needs ranks in step (hf + synced_gpus); DDP takes the paged engine
            engine = "hf" if dist.fsdp else "paged"
            history = train(train_config(scale, engine), model, tok, inputs, run_dir, dist=dist)
            figures = step_figures(run_dir, history, tok, inputs, params, device)
            print(
                "GPU_CHECK_RANK " + json.dumps({**figures, "mode": mode, "backend": backend, "engine": engine}),
                flush=True,
            )
            del model
    finally:
        torch.distributed.destroy_process_group()
    return 0


# --------------------------------------------------------------------------- evaluate engine


def run_evaluate(workdir: Path, scale: Scale, kind: str, device: str) -> dict:
    """The evaluate stage's engine (make_engine) on a small slice of held-out problems."""
    import torch

    probs = generate_problems(11, scale.eval_problems, 2, 3, 9, "+-", salt="test")
    engine = make_engine(
        kind,
        workdir / "eval-model",
        dtype="bfloat16" if device == "cuda" else "float32",
        batch_size=64,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.85,
        seed=0,
    )
    try:
        prompts = [chat_prompt_ids(engine.tokenizer, p.question) for p in probs]
        engine.generate(prompts[:2], Request(temperature=0.6, max_new_tokens=4))  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        comps = generate_sorted(engine, prompts, Request(temperature=0.6, max_new_tokens=scale.eval_max_new_tokens))
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    finally:
        engine.close()
    correct = sum(score_response(c.text, str(probs[c.prompt_index].answer))[1] for c in comps)
    return {
        "tokens_per_s": sum(c.n_tokens for c in comps) / seconds,
        "seconds": seconds,
        "samples": len(comps),
        "accuracy": correct / len(comps),
    }


# --------------------------------------------------------------------------- the check


def done(part: str, t0: float) -> None:
    """A part's line as soon as it ends: a run cut by the call's time limit still shows how far it got."""
    print(f"gpu_check: {part} done, {time.perf_counter() - t0:.0f} s since the start", flush=True)


def run_check(
    device: str = "cuda",
    scale: Scale = GPU,
    workdir: Path | None = None,
    prefer_minilm: bool = True,
    prefer_lancedb: bool = True,
) -> dict:
    """Every step of the check; returns the figures of the RESULT line. `prefer_*=False` takes the
    device machine's fallbacks (random-init BERT encoder, in-memory index) where the real ones exist."""
    import torch

    t0 = time.perf_counter()
    own = tempfile.TemporaryDirectory(prefix="gpu_check-") if workdir is None else None
    workdir = Path(own.name) if own else workdir
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        tok = build_tokenizer(workdir)
        encoder_ref, encoder_kind = build_encoder(workdir, prefer_minilm)
        print(
            f"gpu_check: encoder {encoder_kind}"
            + (
                " (MiniLM package missing: random-init BERT, bonus values meaningless, timings kept)"
                if encoder_kind != "minilm"
                else ""
            ),
            flush=True,
        )
        probs = generate_problems(7, scale.train_problems, 2, 3, 9, "+-")
        index_kind = build_index(
            workdir, encoder_ref, {f"p{i}": p.question for i, p in enumerate(probs)}, prefer_lancedb
        )
        print(
            f"gpu_check: teacher index {index_kind}"
            + (" (lancedb/polars missing: the same traces and lookup, in memory)" if index_kind != "lancedb" else ""),
            flush=True,
        )
        inputs = train_inputs(workdir, encoder_ref, scale)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        out: dict = {
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "encoder": encoder_kind,
            "index": index_kind,
        }
        for engine in ("hf", "paged"):
            fig = run_engine(workdir, tok, inputs, scale, engine, device, dtype)
            out["params_m"] = fig["params"] / 1e6
            for k in ("tokens_per_s", "s_per_step", "generate_s", "update_s", "peak_gib"):
                out[f"train_{engine}_{k}"] = fig[k]
            out[f"update_mfu_{engine}"] = fig["mfu"]
            done(f"train {engine}", t0)
        out.update(run_update_layouts(tok, scale, device, dtype))
        done("update layouts", t0)
        part = PAPER_PARTS[scale.model]
        fig = run_paper_model(workdir, tok, inputs, part, device)
        out.update({f"{part.name}_{k}": v for k, v in fig.items()})
        done(
            f"{part.name} bf16-mixed: {fig['s_per_step']:.1f} s/step, peak {fig['peak_gib']:.1f} GiB "
            f"(plan: {fig['planned_peak_gib']:.1f}), update MFU {fig['mfu']:.3f}",
            t0,
        )
        for mode, fig in run_ranked(workdir, encoder_ref, scale, device).items():
            out[f"torchrun_{mode}_{fig['backend']}_{fig['engine']}_s_per_step"] = fig["s_per_step"]
            out[f"torchrun_{mode}_peak_gib"] = fig["peak_gib"]
        done("torchrun ddp, fsdp2", t0)
        for kind in ("hf", "paged"):
            fig = run_evaluate(workdir, scale, kind, device)
            out[f"eval_{kind}_tokens_per_s"] = fig["tokens_per_s"]
        done("evaluate hf, paged", t0)
        if device == "cuda":  # vLLM on the GPU, when it imports there (on a CPU: tests/test_vllm*.py)
            try:
                import vllm  # noqa: F401
            except ImportError:
                print("gpu_check: vllm does not import on this machine: the vllm engine is not checked", flush=True)
                out["vllm"] = "not_installed"
            else:
                fig = run_engine(workdir, tok, inputs, scale, "vllm", device, dtype)
                for k in ("tokens_per_s", "s_per_step", "generate_s", "update_s", "peak_gib"):
                    out[f"train_vllm_{k}"] = fig[k]
                out["eval_vllm_tokens_per_s"] = run_evaluate(workdir, scale, "vllm", device)["tokens_per_s"]
        out["wall_s"] = time.perf_counter() - t0
        return out
    finally:
        if own:
            own.cleanup()


def build(scales: tuple[Scale, ...] = (GPU, TINY)) -> dict:
    """Every TrainConfig the check trains and updates with, at the GPU's scale and the CPU test's,
    validated without a GPU, a model or vLLM (tests/test_bench.py)."""
    out = {}
    for scale in scales:
        for engine in ("hf", "paged", "vllm"):
            out[f"{scale.model} train {engine}"] = train_config(scale, engine)
        for arm, cfg in update_configs(scale).items():
            out[f"{scale.model} update {arm}"] = cfg
        out[f"{scale.model} {PAPER_PARTS[scale.model].name} bf16-mixed"] = paper_config(PAPER_PARTS[scale.model])
    return out


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU on this machine ({machine()}); skipped")
        result("gpu_check", skipped=1)
        return
    out = run_check("cuda", GPU)
    table(f"gpu_check ({machine()})", ["measure", "value"], [[k, v] for k, v in out.items() if k not in ("device",)])
    result("gpu_check", **{k: (v.replace(" ", "_") if isinstance(v, str) else v) for k, v in out.items()})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rank":
        sys.exit(rank_main(sys.argv[2]))
    main()
