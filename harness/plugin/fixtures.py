"""The fixtures collapse cases use: the run's settings, session and baselines, each case's model, site, method
and category (set by the parametrisation), and the curve or the searched analysis whose points are recorded for
the report."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.core.errors import ModelUnavailableError
from harness.plugin.markers import MARKERS
from harness.plugin.recorder import ANALYSIS_PROPERTY, POINT_PROPERTY
from harness.plugin.stash import BASELINES, SETTINGS, data_sources


@pytest.fixture(scope="session")
def can_settings(pytestconfig: pytest.Config):
    """The run's HarnessSettings, built from the `--can-*` options."""
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def can_session(pytestconfig: pytest.Config, can_settings):
    """Loaded models, CLIP scorers, images and rankings shared by every case in this process."""
    from harness.runner.session import HarnessSession

    return HarnessSession(can_settings, sources=data_sources(pytestconfig))


@pytest.fixture(scope="session")
def can_baselines(pytestconfig: pytest.Config):
    """The run's regression baselines (`--can-baseline`, `--can-baseline-update`), for assert_matches_baseline."""
    return pytestconfig.stash[BASELINES]


@pytest.fixture(scope="session")
def _can_curves() -> dict:
    return {}


def _grid_parameter(request: pytest.FixtureRequest):
    if not hasattr(request, "param"):
        raise pytest.UsageError(
            f"{request.node.nodeid}: `{request.fixturename}` is set by @pytest.mark.collapse_grid(models=..., "
            "sites=...) or @pytest.mark.collapse_search(models=..., sites=...); mark the case with one"
        )
    return request.param


@pytest.fixture
def can_model(request: pytest.FixtureRequest) -> str:
    """Registered model name of this case (from the collapse_grid expansion)."""
    return _grid_parameter(request)


@pytest.fixture
def can_site(request: pytest.FixtureRequest) -> str:
    """Site of this case, e.g. lm.down_proj."""
    return _grid_parameter(request)


@pytest.fixture
def can_category(request: pytest.FixtureRequest) -> str:
    """Image category of this case (for a text-only model: the text)."""
    return _grid_parameter(request)


@pytest.fixture
def can_method(request: pytest.FixtureRequest, can_settings) -> str:
    """Ranking method of this case: from the marker's `methods=[...]` expansion, else `--can-method`."""
    return request.param if hasattr(request, "param") else can_settings.ranking.method


@pytest.fixture
def can_probe(request: pytest.FixtureRequest) -> str | None:
    """The probe this case names on its marker (`probe=...`); None: each model family's own."""
    for name in MARKERS:
        marker = request.node.get_closest_marker(name)
        if marker is not None:
            return marker.kwargs.get("probe")
    return None


def _experiment_or_skip(can_session, model: str, method: str, probe: str | None):
    """The model's experiment through `probe`, ranking by `method`; a model whose weights are not on this machine
    skips the case, saying why."""
    try:
        experiment = can_session.experiment(model, probe)
    except ModelUnavailableError as error:
        pytest.skip(str(error))
    return experiment.with_ranking(dataclasses.replace(experiment.settings.ranking, method=method))


def _session_curve(curves: dict, experiment, site: str, category: str):
    """The session's one CollapseCurve per (model, ranking, site, category), shared by grid and search cases."""
    from harness.runner.curve import CollapseCurve

    key = (experiment.name, experiment.probe.name, experiment.settings.ranking, site, category)
    if key not in curves:
        curves[key] = CollapseCurve(experiment, site, category)
    return curves[key]


@pytest.fixture
def collapse_curve(
    request,
    can_session,
    _can_curves,
    can_model: str,
    can_site: str,
    can_method: str,
    can_probe: str | None,
    can_category: str,
):
    """The CollapseCurve of this case's (model, site, category); every point it measures is recorded."""
    experiment = _experiment_or_skip(can_session, can_model, can_method, can_probe)
    curve = _session_curve(_can_curves, experiment, can_site, can_category)
    curve.on_point = lambda point: request.node.user_properties.append(
        (POINT_PROPERTY, json.dumps(point.to_row()))
    )
    yield curve
    curve.on_point = None
    experiment.loaded.assert_unmodified()


@pytest.fixture(scope="session")
def _can_analyses() -> dict:
    return {}


@pytest.fixture
def collapse_analysis(
    request,
    can_session,
    _can_curves,
    _can_analyses,
    can_model: str,
    can_site: str,
    can_method: str,
    can_probe: str | None,
    can_category: str,
):
    """The CurveAnalysis of this case's (model, site, category): k₁ and k₂ by the configured search, the
    controls at k₂ and the layer breakdown; computed once per session and recorded for the threshold table.
    Points the grid cases of the same curve measured in this process are reused, not measured again."""
    from harness.runner.analysis import analyse_curve

    model, site, category = can_model, can_site, can_category
    experiment = _experiment_or_skip(can_session, model, can_method, can_probe)
    key = (model, site, can_method, experiment.probe.name, category)
    if key not in _can_analyses:
        _can_analyses[key] = analyse_curve(
            experiment, site, category, curve=_session_curve(_can_curves, experiment, site, category)
        )
    analysis = _can_analyses[key]
    request.node.user_properties.append((ANALYSIS_PROPERTY, json.dumps(analysis.to_row())))
    yield analysis
    experiment.loaded.assert_unmodified()
