"""Extending the harness without touching it, exactly as the README shows: its `conftest.py` blocks (a site, a
ranking method, a metric, a probe, a model), registered through the public API, and its case, run by pytest to
a row of the threshold table, a plot and a baseline entry that carry the new site, method, probe and metric.

The blocks are read from README.md, so the documentation is what is tested: a README example that stopped
working fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```python\n(# (conftest\.py|cases/test_colour\.py)[^\n]*\n.*?)```", re.DOTALL)


def readme_blocks() -> tuple[str, str]:
    """The README's conftest blocks, joined in order, and its case."""
    blocks = BLOCK.findall(README.read_text(encoding="utf-8"))
    conftest = [code for code, file in blocks if file == "conftest.py"]
    (case,) = [code for code, file in blocks if file != "conftest.py"]
    assert len(conftest) == 5, "the README extends by a site, a ranking method, a metric, a probe and a model"
    return "\n\n".join(conftest), case


def test_the_readmes_extensions_reach_the_table_the_plot_and_the_baseline(pytester, cache_dir):
    """In a pytest process of its own: what the conftest registers must not leak into this one's registries."""
    conftest, case = readme_blocks()
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_colour=case)
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--can-cache-dir", str(cache_dir), "--can-device", "cpu", "--can-dtype",
        "float32", "--can-max-images", "4", "--can-k-max", "8", "--can-control-seeds", "1", "--can-categories",
        "circle", "--can-report-dir", str(reports), "--can-baseline", "b.json", "--can-baseline-update",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    header = next(line for line in result.outlines if line.startswith("| model"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert {"colour named₀", "colour chance", "colour named@k₂"} <= set(columns)
    row = next(line for line in result.outlines if line.startswith("| synth-llava"))
    assert [cell.strip() for cell in row.strip("|").split("|")][columns.index("colour chance")] == "25%"

    (analysis,) = json.loads((reports / "collapse.json").read_text())["analyses"]
    assert (analysis["site"], analysis["probe"], analysis["ranking"]) == ("lm.attn_heads", "colour", "weight norm")
    assert analysis["options"]["method"] == "weight_norm" and "colour_named" in analysis["baselines"]
    (plot,) = (reports / "plots").iterdir()  # neither the method nor the probe is the default: both name the curve
    assert plot.name.startswith("synth-llava__lm.attn_heads__circle__weight_norm__colour")
    (key, entry) = json.loads((pytester.path / "b.json").read_text())["curves"].popitem()
    assert key == "synth-llava / lm.attn_heads / circle / weight norm / colour"
    assert set(entry["metrics"]) == {"log10_ppl", "colour_named"}
