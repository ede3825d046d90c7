"""The trainer's weights on their way into a rollout engine: streamed, one tensor at a time.

Why a stream: an engine loads weights from an iterator (vLLM's `reload_weights`), so nothing has to
hold the whole model twice. Under FSDP2 each parameter is all-gathered from its shards just before
the engine takes it (`DTensor.full_tensor()`), instead of gathering the full state on every rank
first (`get_model_state_dict(full_state_dict=True)`: a second copy of the model per GPU, 15 GB for 7B
in bf16, 30 GB in float32). The extra memory of a push is then what the engine keeps of the stream
before it loads it: at most a layer's tensors where vLLM's layer-wise reload buffers them, one tensor
on this CPU (measured: the tiny policy's embedding, 96 KiB of 373 KiB), not the model. `PushMeter`
measures that: the bytes of gathered tensors alive at once, tracked as each is freed, so a run (and
its test) reads the peak of the push it made.

Every rank must consume its stream to the end under FSDP2 (each gather is a collective): `drain`
finishes what the engine left unread."""

from __future__ import annotations

import weakref
from collections.abc import Iterator


class PushMeter:
    """Bytes of the tensors a push gathered that are still alive, and their peak: each gathered
    tensor counts from its gather until it is freed (a weakref finalizer), wherever the engine
    keeps it. Tensors the stream passes through without a copy (the module's own, one process or
    DDP) cost nothing and are not counted."""

    def __init__(self) -> None:
        self.alive = 0
        self.peak = 0
        self.gathered = 0  # bytes gathered over the whole push

    def track(self, tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        self.alive += n
        self.gathered += n
        self.peak = max(self.peak, self.alive)
        weakref.finalize(tensor, self._freed, n)

    def _freed(self, n: int) -> None:
        self.alive -= n


def weight_stream(model, meter: PushMeter | None = None) -> Iterator[tuple[str, object]]:
    """(name, tensor) of every weight a checkpoint of `model` holds, detached, a tied one under each
    of its names (vLLM left a tied `lm_head` at the old weights when given the embedding alone), then
    the persistent buffers. A sharded parameter (FSDP2's DTensor) is gathered here, one at a time, and
    released once the engine is done with it; `meter` tracks what gathering costs."""
    names: dict[int, list[str]] = {}
    params = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params.setdefault(id(p), p)
    for key, p in params.items():
        full = _full(p, meter)
        for name in names[key]:
            yield name, full
        del full  # the stream keeps no gathered tensor once the engine has it
    persistent = set(model.state_dict())  # a checkpoint has no rotary caches (non-persistent buffers)
    for name, b in model.named_buffers():
        if name in persistent:
            yield name, _full(b, meter)


def _full(t, meter: PushMeter | None):
    t = t.detach()
    if not hasattr(t, "full_tensor"):  # a plain tensor: the module's own storage, no copy
        return t
    full = t.full_tensor()
    if meter is not None:
        meter.track(full)
    return full


def drain(stream: Iterator) -> None:
    """Consume what an engine left of a stream, so every rank runs the same gathers."""
    for _ in stream:
        pass
