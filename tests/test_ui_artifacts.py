"""What the Prefect UI is given: report markdown with every plot inlined (the UI cannot reach PNG files
in a workdir and showed alt text), and the stage table with evaluate's per-benchmark metrics."""

import base64
import re

from flows.ui import inline_images
from oger.commands.report import flat_metrics


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)


def test_every_image_reference_resolves_without_the_workdir(tmp_path):
    _png(tmp_path / "curves.png")
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "scores.png")
    md = (
        "# run\n\n![training curves](curves.png)\n\ntext ![base vs trained](sub/scores.png) more\n"
        f"![absolute]({tmp_path / 'curves.png'})\n![gone](missing.png)\n"
    )
    out = inline_images(md, tmp_path)
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out)
    assert len(refs) == 3 and all(r.startswith("data:image/png;base64,") for r in refs)
    for r in refs:  # each is the PNG itself, readable with no file around
        assert base64.b64decode(r.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "*(gone: missing.png is missing)*" in out  # said in words, not a broken image
    assert "text " in out and " more" in out


def test_the_stage_table_shows_evaluate_metrics():
    metrics = {
        "synthetic": {"n": 32, "base": 0.0977, "trained": 0.0781},
        "per_teacher": {"a": {"x": 1}},
        "steps": 30,
        "curve": [1, 2],
    }
    flat = flat_metrics(metrics)
    assert flat == {"synthetic.n": 32, "synthetic.base": 0.0977, "synthetic.trained": 0.0781, "steps": 30}
