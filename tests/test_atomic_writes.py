"""Every file written outside an artifact is replaced whole or not at all (`atomic_write`): the
trainer's resume-time trim of metrics.jsonl / rollouts.jsonl, killed midway (an exception, and a
real SIGKILL of a training process), leaves the history intact and a later resume works; the run
report, the sweep report's plots and the tracked docs/RESULTS.md survive a writer that fails
halfway."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from oger.stages.train.files import METRICS_FILE, ROLLOUTS_FILE
from tests.builders import metrics, rollouts, train_inputs

REPO = Path(__file__).resolve().parents[1]


def fail_halfway(monkeypatch, name: str, exc: type[BaseException] = OSError) -> None:
    """Path.write_text to a file whose name ends with `name` (the file itself, or a temp sibling of
    it) writes half the text, then raises: a crash in the middle of the write."""
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name.endswith(name):
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise exc(f"simulated crash writing {self.name}")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# --------------------------------------------------------------------------- the trainer's trim


def _history_file(path: Path) -> bytes:
    rows = [f'{{"step": {s}, "reward": {s / 10}}}\n' for s in (1, 2, 3, 4)]
    path.write_text("".join(rows) + '{"step": 5, "rew')  # steps 3-5: after the checkpoint; 5 cut by a kill
    return path.read_bytes()


@pytest.mark.parametrize("exc", [OSError, KeyboardInterrupt])
def test_history_trim_that_fails_halfway_leaves_the_file_whole(tmp_path, monkeypatch, exc):
    from oger.stages.train.checkpoint import read_history

    path = tmp_path / METRICS_FILE
    before = _history_file(path)
    fail_halfway(monkeypatch, METRICS_FILE, exc)
    with pytest.raises(exc, match="simulated crash"):
        read_history(path, done_steps=2)
    assert path.read_bytes() == before  # not half of the kept lines
    assert leftovers(tmp_path) == []  # the temp sibling is removed
    monkeypatch.undo()
    assert [r["step"] for r in read_history(path, done_steps=2)] == [1, 2]  # the next resume trims it
    assert path.read_text() == '{"step": 1, "reward": 0.1}\n{"step": 2, "reward": 0.2}\n'
    mtime = path.stat().st_mtime_ns
    assert [r["step"] for r in read_history(path, done_steps=2)] == [1, 2]
    assert path.stat().st_mtime_ns == mtime  # nothing to drop: not rewritten


# A training process resuming from the step-2 checkpoint, SIGKILLed by itself in the middle of
# writing the trimmed FILE (half of the text written, then the kill).
RESUME_AND_DIE = """
import os, signal, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
sys.path.insert(0, sys.argv[4])
from tests.test_atomic_writes import resume_inputs, resume_config
from oger.stages.train.trainer import train

run_dir, start, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real = Path.write_text
def write_text(self, data, *a, **k):
    if self.name.endswith(name):
        real(self, data[: len(data) // 2], *a, **k)
        print("@@killed", self.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, data, *a, **k)
Path.write_text = write_text
model, tok = AutoModelForCausalLM.from_pretrained(start), AutoTokenizer.from_pretrained(start)
train(resume_config(4), model, tok, resume_inputs(), run_dir)
print("@@finished", flush=True)
"""


def resume_config(steps: int):
    from oger.contract.config import TrainConfig

    return TrainConfig(
        algorithm="grpo",
        steps=steps,
        prompts_per_step=4,
        group_size=4,
        rollout={"max_new_tokens": 12, "batch_prompts": 2},
        optim={"micro_batch_size": 8, "lr": 1e-2},
        logging={"checkpoint_every": 1},
        loss={"entropy_coef": 0.01},
    )


def resume_inputs():
    from oger.synthetic import generate_problems

    problems = generate_problems(3, 16, 2, 3, 9, "+-")
    return train_inputs(problems)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 3-step GRPO run of a tiny policy, checkpointed every step (step-2 and step-3 kept)."""
    from oger.stages.policy.tiny_model import build_model, train_tokenizer
    from oger.stages.train.trainer import train
    from oger.synthetic import generate_problems

    corpus = [p.question + f" Answer: \\boxed{{{p.answer}}}" for p in generate_problems(0, 200, 2, 4, 9, "+-")]
    tok = train_tokenizer(corpus, 300)
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    history = train(resume_config(3), build_model(tok, 32, 2, 2, 64, 256, seed=1), tok, resume_inputs(), run_dir)
    assert [h["step"] for h in history] == [1, 2, 3]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("killed_in", [METRICS_FILE, ROLLOUTS_FILE])
def test_sigkill_in_the_resume_trim_keeps_the_history_and_the_next_resume_works(trained_run, tmp_path, killed_in):
    """Killed after the step-2 checkpoint while step 3 was logged: the resume drops step 3 (lost work)
    from metrics.jsonl and rollouts.jsonl. A SIGKILL halfway through that trim leaves both files as
    they were (or, for a kill in the rollouts trim, metrics.jsonl already trimmed whole); the resume
    after it ends with every step exactly once and step 3 recomputed as it was."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oger.stages.train.checkpoint import final_model_dir
    from oger.stages.train.trainer import train

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-000003")  # the kill came before step 3's checkpoint
    first = {h["step"]: h for h in metrics(run_dir)}
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write('{"step": 4, "rew')  # and cut a line
    before = {name: (run_dir / name).read_bytes() for name in (METRICS_FILE, ROLLOUTS_FILE)}
    start = final_model_dir(run_dir)  # the architecture and tokenizer; the resume loads step 2's weights

    proc = subprocess.run(
        [sys.executable, "-c", RESUME_AND_DIE, str(run_dir), str(start), killed_in, str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    assert "@@killed" in proc.stdout and "@@finished" not in proc.stdout
    assert (run_dir / killed_in).read_bytes() == before[killed_in]  # whole: not half of the kept lines
    if killed_in == ROLLOUTS_FILE:  # the metrics trim before it completed, whole
        assert [h["step"] for h in metrics(run_dir)] == [1, 2]
    else:
        assert (run_dir / ROLLOUTS_FILE).read_bytes() == before[ROLLOUTS_FILE]
    assert [c.name for c in sorted((run_dir / "checkpoints").iterdir())] == ["step-000002"]

    model, tok = AutoModelForCausalLM.from_pretrained(start), AutoTokenizer.from_pretrained(start)
    history = train(resume_config(4), model, tok, resume_inputs(), run_dir)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert [h["step"] for h in metrics(run_dir)] == [1, 2, 3, 4]  # every step exactly once
    rows = rollouts(run_dir)
    assert [sum(r["step"] == s for r in rows) for s in (1, 2, 3, 4)] == [16, 16, 16, 16]
    for key in ("reward", "env_reward", "response_length"):  # step 3 again, as it was the first time
        assert history[2][key] == pytest.approx(first[3][key], rel=1e-6), key


# --------------------------------------------------------------------------- reports and RESULTS.md


def test_run_report_left_whole_when_its_writer_fails_halfway(tmp_path, monkeypatch):
    from oger.commands.report import write_report

    data = {
        "run_id": "r",
        "config": "c.yaml",
        "workdir": str(tmp_path),
        "round": "r1",
        "stages": {"problems": {"key": "k" * 64, "cached": False, "seconds": 1.0, "metrics": {"rows": 3}}},
    }
    record = SimpleNamespace(data=data, dir=tmp_path)
    (tmp_path / "report.md").write_text("the previous report\n")
    fail_halfway(monkeypatch, "report.md")
    with pytest.raises(OSError, match="simulated crash"):
        write_report(record)
    assert (tmp_path / "report.md").read_text() == "the previous report\n"
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    text = write_report(record).read_text()
    assert text.startswith("# OGER run r\n") and "| problems | `kkkkkkkkkkkkkkkk` |" in text


def _sweep(tmp_path: Path):
    from oger.sweep import report

    sweep_dir = tmp_path / "sweeps" / "s1"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "results_section.md").write_text("new table\n![acc](results/accuracy.png)\n")
    (sweep_dir / "accuracy.png").write_bytes(b"new png")
    doc = tmp_path / "docs" / "RESULTS.md"
    (doc.parent / "results").mkdir(parents=True)
    old = f"# Results\n{report.BEGIN}\nold table\n{report.END}\nafter\n"
    doc.write_text(old)
    (doc.parent / "results" / "accuracy.png").write_bytes(b"old png")
    return report, sweep_dir, doc, old


def test_results_doc_left_whole_when_its_writer_fails_halfway(tmp_path, monkeypatch):
    report, sweep_dir, doc, old = _sweep(tmp_path)
    fail_halfway(monkeypatch, "RESULTS.md")
    with pytest.raises(OSError, match="simulated crash"):
        report.fill_results_doc(doc, sweep_dir)
    assert doc.read_text() == old  # the tracked document: as it was, not half of the new one
    assert leftovers(doc.parent) == []
    monkeypatch.undo()
    report.fill_results_doc(doc, sweep_dir)
    assert doc.read_text() == (
        f"# Results\n{report.BEGIN}\nnew table\n![acc](results/accuracy.png)\n{report.END}\nafter\n"
    )


def test_results_png_left_whole_when_its_copy_fails_halfway(tmp_path, monkeypatch):
    report, sweep_dir, doc, old = _sweep(tmp_path)
    real = shutil.copyfile

    def copy_half(src, dst, *a, **k):
        Path(dst).write_bytes(Path(src).read_bytes()[:3])
        raise OSError("simulated crash copying")

    monkeypatch.setattr(shutil, "copyfile", copy_half)
    with pytest.raises(OSError, match="simulated crash"):
        report.fill_results_doc(doc, sweep_dir)
    assert (doc.parent / "results" / "accuracy.png").read_bytes() == b"old png"
    assert doc.read_text() == old and leftovers(doc.parent / "results") == []
    monkeypatch.setattr(shutil, "copyfile", real)
    report.fill_results_doc(doc, sweep_dir)
    assert (doc.parent / "results" / "accuracy.png").read_bytes() == b"new png"


def test_sweep_plot_left_whole_when_savefig_fails_halfway(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from oger.sweep import report

    out = tmp_path / "accuracy.png"
    out.write_bytes(b"the previous plot")
    real = Figure.savefig

    def half(self, fname, *a, **k):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("simulated crash in savefig")

    monkeypatch.setattr(Figure, "savefig", half)
    fig = plt.figure()
    with pytest.raises(OSError, match="simulated crash"):
        report._save(fig, out)
    assert out.read_bytes() == b"the previous plot" and leftovers(tmp_path) == []
    assert not plt.fignum_exists(fig.number)  # closed even so
    monkeypatch.setattr(Figure, "savefig", real)
    report._save(plt.figure(), out)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
