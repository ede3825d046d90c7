"""What a user sees in the Prefect UI: a real `prefect server` (UI on) and process worker, the tiny
deployment for rounds r1 and r2 and a 2 arms x 2 seeds sweep (the deployment tests' small overrides,
so the numbers are near zero: this checks rendering, not learning), then headless Chromium screenshots
of the latest report, rounds and sweep artifacts into docs/ui/*.png.

    apt-get install chromium
    .venv/bin/python docs/ui/shoot.py [SCRATCH_DIR]     # ~2 min on the 2-core CPU box
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.prefect_stack import PrefectStack  # noqa: E402
from tests.test_deployments import SMALL  # noqa: E402
from tests.test_sweep_deployment import SMALL as SWEEP_SMALL  # noqa: E402

KEYS = ("oger-report-tiny", "oger-rounds-tiny", "oger-sweep-tiny")


def latest_artifacts(api: str) -> dict[str, str]:
    """{key: id of its latest version} (`POST /api/artifacts/latest/filter`, as the UI asks)."""
    body = json.dumps({"artifacts": {"key": {"exists_": True}}}).encode()
    req = urllib.request.Request(
        f"{api}/artifacts/latest/filter", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return {a["key"]: a["latest_id"] for a in json.loads(r.read())}


def screenshot(url: str, out: Path, height: int) -> None:
    from PIL import Image

    raw = out.with_suffix(".raw.png")
    subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--screenshot={raw}",
            f"--window-size=1400,{height}",
            "--virtual-time-budget=20000",
            url,
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    im = Image.open(raw).convert("RGB")
    im.resize((im.width * 2 // 3, im.height * 2 // 3)).quantize(colors=128).save(out, optimize=True)
    raw.unlink()


def main() -> None:
    scratch = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/oger-ui")
    (scratch / "home").mkdir(parents=True, exist_ok=True)
    work = scratch / "work"
    stack = PrefectStack(scratch / "home")
    stack.env.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=stack.api)
    stack.start()
    try:
        for rnd in ("r1", "r2"):
            fr = stack.run_deployment(
                "oger-pipeline/tiny", {"overrides": [f"workdir={work}", *SMALL, f"teachers.round={rnd}"]}
            )
            print(rnd, fr["state_type"], flush=True)
        fr = stack.run_deployment(
            "oger-sweep/tiny-ablation",
            {"overrides": [f"workdir={work}/sweep", *SWEEP_SMALL], "arms": ["grpo", "oger"], "seeds": [0, 1]},
        )
        print("sweep", fr["state_type"], flush=True)
        ids = latest_artifacts(stack.api)
        ui = stack.api.removesuffix("/api")
        for key in KEYS:
            out = REPO / "docs" / "ui" / f"{key}.png"
            screenshot(f"{ui}/artifacts/artifact/{ids[key]}", out, 1200 if "rounds" in key else 3000)
            print("screenshot", key, "->", out.relative_to(REPO), flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
