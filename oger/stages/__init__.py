"""The seven stages of the DAG, one package each, all of the same shape: `stage.py` holds the
stage's `STAGE_DEF` (an `oger.contract.Stage`) and its run function; the package's other modules are
what only that stage uses. `oger.pipeline` registers them in DAG order:
problems -> teachers -> filter -> index -> policy -> train -> evaluate."""
