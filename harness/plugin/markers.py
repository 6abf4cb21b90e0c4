"""The two markers that make a test a collapse case, and their registration with pytest."""

from __future__ import annotations

import pytest

GRID, SEARCH = "collapse_grid", "collapse_search"
MARKERS = (GRID, SEARCH)


def register_markers(config: pytest.Config) -> None:
    """Declare the markers, so that `pytest --markers` lists them and `--strict-markers` accepts them."""
    config.addinivalue_line(
        "markers",
        f"{GRID}(models, sites, methods=None, probe=None): expand a case over model × site [× ranking method] × "
        "category (of the probe: image category, text, …) × k (see harness.plugin)",
    )
    config.addinivalue_line(
        "markers",
        f"{SEARCH}(models, sites, methods=None, probe=None): expand a case over model × site [× ranking method] × "
        "category; the fixture collapse_analysis holds the curve's searched thresholds, controls and layer "
        "breakdown (probe: how the model is given its data, harness.runner.probe; None: each family's own)",
    )
