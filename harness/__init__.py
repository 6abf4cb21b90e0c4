"""Critical-neuron collapse experiments on vision-language and language models, as pytest cases.

The library core (registry, sites, ranking, masking, metrics, experiment) has no pytest dependency; the pytest
integration lives in :mod:`harness.plugin`. What user code needs is importable from here (`from harness import
HarnessSession, HarnessSettings`); each name loads its module on first use, so importing the package loads no
torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from harness.core._torchvision_compat import install_import_hook

install_import_hook()

try:
    __version__ = version("can-harness")
except PackageNotFoundError:  # running from a checkout that was not pip-installed
    __version__ = "0.1.0+checkout"

_PUBLIC = {
    "HarnessSession": "harness.runner.session",
    "HarnessSettings": "harness.runner.settings",
    "RankingOptions": "harness.science.ranking_options",
    "StageThresholds": "harness.science.stages",
    "Intervention": "harness.science.ablation",
    "analyse_curve": "harness.runner.analysis",
    "ModelSpec": "harness.models.registry",
    "ClipSpec": "harness.models.registry",
    "CAUSAL_LM": "harness.models.registry",
    "register_model": "harness.models.registry",
    "SiteSpec": "harness.models.sites",
    "register_site": "harness.models.sites",
    "Metric": "harness.science.metric_registry",
    "Rule": "harness.science.metric_registry",
    "register_metric": "harness.science.metric_registry",
    "Criterion": "harness.science.stages",
    "RankingMethod": "harness.science.ranking_methods",
    "register_ranking_method": "harness.science.ranking_methods",
    "Probe": "harness.runner.probe",
    "ImageProbe": "harness.runner.probes.captioning",
    "Masking": "harness.runner.probe",
    "UNMASKED": "harness.runner.probe",
    "Observation": "harness.runner.probe",
    "register_probe": "harness.runner.probe",
    "assert_metric_drop": "harness.runner.assertions",
    "assert_metric_rise": "harness.runner.assertions",
    "assert_ppl_blowup": "harness.runner.assertions",
    "assert_clip_drop": "harness.runner.assertions",
    "assert_fluent_baseline": "harness.runner.assertions",
    "assert_two_stage": "harness.runner.assertions",
    "assert_collapses_within": "harness.runner.assertions",
    "assert_no_collapse_within": "harness.runner.assertions",
    "assert_controls_hold": "harness.runner.assertions",
    "assert_matches_baseline": "harness.runner.assertions",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
