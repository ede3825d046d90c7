"""Typed experiment configs loaded from YAML, with `--set a.b=value` overrides.

Every section forbids unknown keys so a typo fails loudly, naming the key, the value and the file.
One module per section: `base` (the strict base model, the instruction template, path expansion),
`problems`, `teachers`, `filter`, `index`, `policy`, `train`, `evaluate`, `runner`, `sweep`,
`retention`, `logging` (experiment trackers), `top` (`OgerConfig`, the whole config) and `load`
(YAML, `--set` overrides, error messages). Import from here:
`from oger.contract.config import load_config, TrainConfig`.
"""

from oger.contract.config.base import Instruction, Strict, expand_path
from oger.contract.config.evaluate import (
    BENCHMARK_NAMES,
    LUFFY_MULTI_SAMPLE,
    LUFFY_SYSTEM_PROMPT,
    BenchmarkSpec,
    EvaluateConfig,
    HeldoutConfig,
)
from oger.contract.config.filter import FilterConfig
from oger.contract.config.index import IndexConfig
from oger.contract.config.load import apply_override, load_config, parse_override
from oger.contract.config.logging import TRACKER_NAMES, LoggingConfig, SweepPair
from oger.contract.config.policy import PolicyConfig, SFTConfig, TinyPolicy
from oger.contract.config.problems import (
    LABELLER_NAMES,
    FieldMap,
    HFSource,
    LocalSource,
    ProblemsConfig,
    Source,
    SyntheticSource,
)
from oger.contract.config.retention import RetentionConfig
from oger.contract.config.runner import RunnerConfig
from oger.contract.config.sweep import SweepConfig
from oger.contract.config.teachers import Backend, Sampling, TeacherConfig, TeachersConfig
from oger.contract.config.top import OgerConfig
from oger.contract.config.train import (
    MOVED_TRAIN_FIELDS,
    BonusGuards,
    DistributedConfig,
    LossConfig,
    OgerRewardConfig,
    OptimConfig,
    RolloutConfig,
    TrainConfig,
    TrainLogging,
)

__all__ = [
    "Instruction",
    "Strict",
    "expand_path",
    "LABELLER_NAMES",
    "FieldMap",
    "SyntheticSource",
    "LocalSource",
    "HFSource",
    "Source",
    "ProblemsConfig",
    "Sampling",
    "Backend",
    "TeacherConfig",
    "TeachersConfig",
    "FilterConfig",
    "IndexConfig",
    "TinyPolicy",
    "SFTConfig",
    "PolicyConfig",
    "BonusGuards",
    "OgerRewardConfig",
    "OptimConfig",
    "LossConfig",
    "RolloutConfig",
    "DistributedConfig",
    "TrainLogging",
    "MOVED_TRAIN_FIELDS",
    "TrainConfig",
    "LUFFY_SYSTEM_PROMPT",
    "LUFFY_MULTI_SAMPLE",
    "BenchmarkSpec",
    "BENCHMARK_NAMES",
    "HeldoutConfig",
    "EvaluateConfig",
    "RunnerConfig",
    "SweepConfig",
    "RetentionConfig",
    "TRACKER_NAMES",
    "SweepPair",
    "LoggingConfig",
    "OgerConfig",
    "parse_override",
    "apply_override",
    "load_config",
]
