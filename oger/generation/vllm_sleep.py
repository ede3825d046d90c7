"""vLLM's sleep mode around a trainer's update, in the order the peers learned to use it (verl's hybrid
engine, TRL's colocate mode): the engine sleeps while the trainer updates, then wakes in two parts —
its weights, the push into them, then its KV cache — so the peak is one copy of the weights beside the
trainer's state, never the weights plus a KV cache plus the trainer's state (OOM at wake-up: verl
#302, #2031, TRL #2688).

Level 2 drops the weights instead of copying them to host memory: only when a push refills them
before the next rollouts (`sync_every: 1`); a wake without a push after level 2 is an error here, not
rollouts from whatever the freed memory holds. vLLM's CPU build has no sleep mode (the engine refuses
`rollout.sleep` there), so this order is tested against a recording stand-in only."""

from __future__ import annotations

from oger.contract.errors import StageError


class SleepCycle:
    """The sleep state of one `vllm.LLM` built with `enable_sleep_mode`."""

    def __init__(self, llm, level: int):
        if level not in (1, 2):
            raise ValueError(f"vLLM sleep level {level}: 1 or 2")
        self.llm, self.level, self.asleep = llm, level, False

    def rest(self) -> None:
        """Between the rollouts and the update: give the engine's memory to the update."""
        if not self.asleep:
            self.llm.sleep(level=self.level)
            self.asleep = True

    def push(self, load):
        """Wake the weights, `load()` the new ones into them, then wake the KV cache; what `load` returns."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        loaded = load()
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        return loaded

    def wake(self) -> None:
        """Before rollouts that no push preceded (`sync_every` > 1): level 1 brings the old weights back."""
        if not self.asleep:
            return
        if self.level == 2:
            raise StageError(
                "vLLM slept at level 2 (its weights dropped) and no weight push came before the next "
                "rollouts: level 2 needs rollout.sync_every 1"
            )
        self.llm.wake_up()
        self.asleep = False
