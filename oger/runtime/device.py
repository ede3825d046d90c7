"""The one seam for what depends on the device a process runs torch on.

Why one place: the trainer, the rollout and evaluation engines and the SFT each need the same
answers — which device, which precision and autocast, which attention function, whether a batch is
split over CPU threads, how a decode runs (one intra-op thread, packed linear weights) — and each
answer differs between a CPU and a GPU. They ask a `Runtime` instead of deciding on their own, so the
CUDA answers land here and nowhere else.

The answers, device by device:
- CPU: float32 or bf16 autocast (`precision`), attention kept in float32 under bf16
  (`precision.float32_attention`), a small model's batch over Python threads (`cpu_threads`), its
  decode on one intra-op thread, a larger model decoded with oneDNN-packed linear weights
  (`packed_linear`).
- CUDA: a rank's own GPU (`for_rank`, NCCL), a single process's GPU (`for_training`), a loaded
  engine's model on the GPU (`for_decoding`), autocast on the GPU's bf16 and TF32 for what stays
  float32 (`configure`), attention as the model has it (SDPA: flash in bf16), no thread splitting,
  plain decode.

Not here on purpose: `RowSampler` (`oger.generation.hf`) keeps sampling independent of batch layout
and process count on every device (evaluation's keys rely on it): it is not device tuning.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from oger.runtime.precision import Precision


@dataclass(frozen=True)
class Runtime:
    """How this process runs a model: `device` ("cpu", "cuda:0", ...) and `precision`."""

    device: str = "cpu"
    precision: Precision = "float32"
    # FSDP2 casts the parameters itself (MixedPrecisionPolicy): no autocast over its forward.
    sharded_mixed: bool = False

    @property
    def on_cpu(self) -> bool:
        return self.device.split(":")[0] == "cpu"

    def torch_device(self):
        import torch

        return torch.device(self.device)

    def place(self, model):
        """The model on this runtime's device (in place for an nn.Module)."""
        return model.to(self.device)

    def configure(self) -> None:
        """Process-wide settings for training here: TF32 matmuls and convolutions for what stays
        float32 on a GPU (the optimizer's and the loss's float32 math; verl and TRL allow it too)."""
        if not self.on_cpu:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def describe(self) -> str:
        """ "cuda:0, bf16-mixed": the device and precision, for the log and the artifact's metrics."""
        return f"{self.device}, {self.precision}"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's autocast. Autocast state is per thread: enter it in the thread that runs
        the forward (the `batch_threads` workers), not around the pool."""
        if self.precision == "float32" or self.sharded_mixed:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)

    def attention(self, model) -> contextlib.AbstractContextManager:
        """The attention implementation for a training block: float32 SDPA under bf16 autocast on a
        CPU (`precision.float32_attention`: bf16 attention's backward was slower there), the model's
        own elsewhere."""
        from oger.runtime.precision import float32_attention

        return float32_attention(model, self.precision)

    def batch_threads(self, model, distributed: bool = False):
        """The pool a batch's micro-batches (SFT, the train update) run on: several Python threads
        for a small CPU model in one process, inline otherwise (`cpu_threads`)."""
        from oger.runtime.cpu_threads import BatchThreads, thread_workers

        return BatchThreads(thread_workers(model, distributed=distributed))

    def packed_weights(self, model, enabled: bool = True) -> contextlib.AbstractContextManager:
        """A decode's linear weights packed for oneDNN while the block lasts (a CPU model past the
        small-model size, `packed_linear.decode_linears`); a loaded engine holds it for its life."""
        from oger.runtime.packed_linear import decode_linears

        return decode_linears(model, enabled=enabled)

    def decode(self, model, pack_linears: bool = True) -> contextlib.AbstractContextManager:
        """The context a token-by-token decode runs in: a small CPU model on one intra-op thread, a
        larger one with packed linear weights (`pack_linears`); nothing on a GPU."""
        from oger.runtime.cpu_threads import decode_threads

        stack = contextlib.ExitStack()
        stack.enter_context(decode_threads(model))
        stack.enter_context(self.packed_weights(model, enabled=pack_linears))
        return stack


def of_model(model, precision: Precision = "float32") -> Runtime:
    """The runtime of a model where it already sits (the live policy, an SFT model)."""
    return Runtime(str(next(model.parameters()).device), precision)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def visible_gpus() -> int:
    """CUDA devices this process sees (CUDA_VISIBLE_DEVICES applied): one per local rank under NCCL."""
    import torch

    return torch.cuda.device_count()


def nccl_available() -> bool:
    """Whether this torch build has NCCL (a CUDA build), which `backend: nccl` needs."""
    import torch

    return torch.distributed.is_nccl_available()


def for_training(precision: Precision = "float32") -> Runtime:
    """A single process's runtime, for training and for decoding a loaded model (teachers, evaluation,
    held-out checks): the first GPU when there is one, else the CPU (the launcher's ranks ask
    `for_rank`)."""
    return Runtime("cuda:0" if cuda_available() else "cpu", precision)


for_decoding = for_training  # a loaded model decodes where one process trains


def for_rank(backend: str, local_rank: int, precision: Precision = "float32") -> Runtime:
    """A training rank's runtime: its own GPU under NCCL (made the current device), the CPU under
    gloo."""
    if backend != "nccl":
        return Runtime("cpu", precision)
    import torch

    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return Runtime(str(device), precision)
