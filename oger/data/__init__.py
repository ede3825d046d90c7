"""Problem data: finding, reading and normalising the files problems and benchmarks come from.

It sits below the stages (like `oger.verify` and `oger.synthetic`): the problems stage builds its
table from it, the evaluate stage reads its benchmarks with it, `oger plan`, `oger.published` and
`oger.explore` look files up through it, so one rule decides where a file is found, how a row is read
and what a record means, and no stage imports another stage's code to read a data file. It imports no
stage (tests/test_contract.py). One module per job:

- `roots`: where data files are looked up (`OGER_DATA_DIR`, then the repository's data/);
- `rows`: (row number, record) from a jsonl or parquet file, errors naming file and row;
- `normalize`: one record -> {question, answer, reference} by format (gsm8k, MATH, LUFFY, plain),
  and `problem_id`, the content hash every table names a problem by;
- `hub`: hub datasets, as laid out under a data root or loaded from the hub;
- `sources`: a configured problems source (synthetic, local file, hub dataset) -> its records.
"""
