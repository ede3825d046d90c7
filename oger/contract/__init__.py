"""The contract every stage is written against, in one place: typed config (`config`), keys,
manifests and atomic artifact folders (`artifacts`), the stage object, its context and the registry
(`stage`, re-exported here), the workdir lock (`lock`), user errors (`errors`) and the fan-out
interface (`fanout`). Nothing here imports a stage."""

from oger.contract.stage import (ORDER, PREVIOUS_ROUND, REGISTRY, UPSTREAM, Budget, ModelUse, Stage, StageContext, StageInfo,
                                 artifact_dir, artifact_manifest, atomic_write, cache_dir, cache_root,
                                 get, load_complete, read_manifest, register, stage_root, unregister)

__all__ = ["Stage", "StageContext", "StageInfo", "Budget", "ModelUse", "register", "unregister", "get", "ORDER",
           "PREVIOUS_ROUND",
           "UPSTREAM", "REGISTRY", "artifact_dir", "stage_root", "cache_root", "cache_dir",
           "atomic_write", "load_complete", "read_manifest", "artifact_manifest"]
