"""The pytest plugin: `--can-*` options, session fixtures, collapse-case parametrisation and the summary.

Registered through the `pytest11` entry point (installed package) and by the repository's root conftest.
A case opts in with `@pytest.mark.collapse_grid(models=[...], sites=[...])` and the fixtures `collapse_curve`
and `k`; the plugin expands it over model × site × category × k (a geometric grid from 0 = baseline); a category
is an image category, or for a text-only model a text (`--can-texts`).
With `@pytest.mark.collapse_search(models=[...], sites=[...])` and the fixture `collapse_analysis` it expands over
model × site × category, and each case gets its curve's thresholds found by the adaptive search, with controls at
k₂ and the layer breakdown (harness.runner.analysis). Either marker takes `methods=[...]` (ranking methods, see
harness.science.ranking) to expand over them too; without it every case ranks by `--can-method`.

pytest registers this module and finds the plugin's hooks and fixtures among its names, so each is imported here
from the module that defines it (`__all__` lists them). The modules, one job each:

- options: every `--can-*` option, declared once;
- run_settings: the run's HarnessSettings and Baselines from those options;
- configure: setting a run up and ending it (options, markers, settings, recorder, xdist scheduler);
- markers: the collapse_grid and collapse_search markers;
- parametrisation: a marked case expanded into its cases;
- case_ids: the case id, formatted and parsed;
- fixtures: the fixtures cases use;
- recorder: the points and outcomes of a run, its reports and summary tables;
- outcome: how each case ended (a failed assertion or an exception), and whether the run is complete;
- scheduling: the xdist scheduler, one worker per model or per curve;
- progress_routing: progress lines past pytest's output capture;
- stash: what the plugin keeps on the pytest config for a run.

Importing it loads no torch, transformers or open_clip: every module imports those where it uses them.
"""

from harness.plugin.configure import (
    pytest_addoption,
    pytest_configure,
    pytest_unconfigure,
    pytest_xdist_make_scheduler,
)
from harness.plugin.fixtures import (
    _can_analyses,
    _can_curves,
    can_baselines,
    can_category,
    can_method,
    can_model,
    can_probe,
    can_session,
    can_settings,
    can_site,
    collapse_analysis,
    collapse_curve,
)
from harness.plugin.outcome import pytest_runtest_makereport
from harness.plugin.parametrisation import pytest_generate_tests

__all__ = [
    "_can_analyses",
    "_can_curves",
    "can_baselines",
    "can_category",
    "can_method",
    "can_model",
    "can_probe",
    "can_session",
    "can_settings",
    "can_site",
    "collapse_analysis",
    "collapse_curve",
    "pytest_addoption",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_runtest_makereport",
    "pytest_unconfigure",
    "pytest_xdist_make_scheduler",
]
