"""Whether `pip install 'oger[gpu]'` resolves on a CUDA machine, and to what, checked from any machine
without downloading a wheel: pip's own resolver against the package index for Linux x86-64 and CPython
3.12 (`pip install --dry-run --report`), given the project's dependencies and its `gpu` extra as
pyproject.toml lists them. `make check-gpu-install` runs it and prints the versions it resolves to.

Why: a GPU user's install is the one configuration no test here runs, and vLLM pins its torch exactly, so
a pin of ours that excluded vLLM's torch would show up only on the GPU machine, as a resolver error or a
silent downgrade. The check fails when the resolution fails, when a resolved torch, transformers or vLLM
is outside what pyproject.toml asks, or when one differs from an `--expect NAME==VERSION` (the Makefile
passes the versions `make setup` installs on a CPU, so the tests here run the release a GPU user gets).

pip's configuration files are not read (this machine's local wheel folder and constraints file are no GPU
user's); the index is pip's default or PIP_INDEX_URL. Not a test: it needs the index and takes about a
minute, and its answer moves with the index (a new transformers patch release changes it), so it is a
`make` target to run before a GPU session or a dependency change, not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.12"
# glibc 2.35 (Ubuntu 22.04, the base of NVIDIA's CUDA 12/13 images) and every older manylinux tag a wheel
# may carry: pip takes --platform literally, so a wheel tagged manylinux_2_17 needs that tag listed.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
CHECKED = ("vllm", "torch", "transformers")  # held to pyproject.toml's specifiers
SHOWN = (*CHECKED, "triton", "flashinfer-python", "torchvision", "torchaudio", "fastapi", "prefect", "numpy")
NETWORK_ERRORS = (
    "Could not fetch URL",
    "Max retries exceeded",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
)


class IndexUnreachable(RuntimeError):
    """pip could not reach the package index: nothing was checked."""


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements(pyproject: Path = REPO / "pyproject.toml", extra: str = "gpu") -> list[str]:
    """The project's dependencies and those of `extra`, as pyproject.toml writes them."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"][extra]]


def pip_command(reqs: list[str], report: Path, python: str = sys.executable) -> list[str]:
    """The dry run: resolve `reqs` for CUDA Linux x86-64 and CPython 3.12, wheels only, nothing installed
    here considered; short timeouts so an unreachable index fails fast."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        python,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--ignore-installed",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        *platforms,
        "--timeout",
        "20",
        "--retries",
        "2",
        "--report",
        str(report),
        *reqs,
    ]


def pip_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without pip's config files and the settings that point at this machine's disk."""
    out = dict(os.environ if env is None else env)
    for var in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_TARGET"):
        out.pop(var, None)
    out["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    return out


def resolved(report: dict) -> dict[str, str]:
    """{canonical name: version} of every distribution pip's report would install."""
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


def problems(versions: dict[str, str], reqs: list[str], expected: dict[str, str] | None = None) -> list[str]:
    """What is wrong with a resolution: a checked package missing or outside the specifier pyproject.toml
    gives it, or not the version `expected` names."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    out = []
    for text in reqs:
        req = Requirement(text)
        name = canonical(req.name)
        if name not in CHECKED:
            continue
        if name not in versions:
            out.append(f"{name}: not in the resolution")
        elif not req.specifier.contains(Version(versions[name]), prereleases=True):
            out.append(f"{name} {versions[name]}: outside pyproject.toml's {req.specifier}")
    for name, version in (expected or {}).items():
        got = versions.get(canonical(name))
        if got is None or Version(got) != Version(version):
            out.append(f"{name}: resolves to {got}, expected {version}")
    return out


def resolve(reqs: list[str], python: str = sys.executable) -> tuple[dict[str, str], float]:
    """Run the dry run: ({name: version}, seconds). Raises IndexUnreachable when pip cannot reach the
    index, RuntimeError with pip's message when the requirements do not resolve."""
    with tempfile.TemporaryDirectory(prefix="oger-gpu-install-") as tmp:
        report = Path(tmp) / "report.json"
        started = time.perf_counter()
        proc = subprocess.run(pip_command(reqs, report, python), env=pip_env(), capture_output=True, text=True, cwd=tmp)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            if any(marker in proc.stderr for marker in NETWORK_ERRORS):
                raise IndexUnreachable(proc.stderr.strip().splitlines()[-1])
            raise RuntimeError(proc.stderr.strip()[-3000:])
        return resolved(json.loads(report.read_text())), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oger.gpu_install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", default="gpu", help="the optional-dependencies group to resolve (default gpu)")
    parser.add_argument(
        "--expect", action="append", default=[], metavar="NAME==VERSION", help="a version the resolution must hold"
    )
    args = parser.parse_args(argv)
    expected = dict(e.split("==", 1) for e in args.expect)
    reqs = requirements(extra=args.extra)
    target = f"CPython {PYTHON_VERSION}, Linux x86-64 (manylinux up to glibc 2.35)"
    try:
        versions, seconds = resolve(reqs)
    except IndexUnreachable as exc:
        print(f"gpu install: the package index is unreachable, nothing checked ({exc})", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"gpu install: oger[{args.extra}] does not resolve for {target}:\n{exc}", file=sys.stderr)
        return 1
    print(f"oger[{args.extra}] resolves for {target} in {seconds:.0f} s, {len(versions)} distributions:")
    print("  " + ", ".join(f"{name} {versions[name]}" for name in SHOWN if name in versions))
    wrong = problems(versions, reqs, expected)
    for line in wrong:
        print(f"  PROBLEM: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
