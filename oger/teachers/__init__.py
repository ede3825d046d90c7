"""teachers stage: several teachers generate reasoning traces for the training problems."""

from oger.teachers.stage import (STAGE, STAGE_DEF, STAGE_VERSION, key_inputs, plan_info, read_traces,
                                 run_teachers)

__all__ = ["STAGE", "STAGE_DEF", "STAGE_VERSION", "key_inputs", "plan_info", "read_traces", "run_teachers"]
