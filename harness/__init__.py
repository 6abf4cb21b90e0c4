"""Critical-neuron collapse experiments on vision-language and language models, as pytest cases.

The library core (registry, sites, ranking, masking, metrics, experiment) has no pytest dependency; the pytest
integration lives in :mod:`harness.plugin`. What user code needs is importable from here (`from harness import
HarnessSession, HarnessSettings`); each name loads its module on first use, so importing the package loads no
torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from harness._torchvision_compat import install_import_hook

install_import_hook()

try:
    __version__ = version("can-harness")
except PackageNotFoundError:  # running from a checkout that was not pip-installed
    __version__ = "0.1.0+checkout"

_PUBLIC = {
    "HarnessSession": "harness.session",
    "HarnessSettings": "harness.settings",
    "RankingOptions": "harness.ranking_options",
    "StageThresholds": "harness.stages",
    "Intervention": "harness.ablation",
    "analyse_curve": "harness.analysis",
    "ModelSpec": "harness.registry",
    "ClipSpec": "harness.registry",
    "CAUSAL_LM": "harness.registry",
    "register_model": "harness.registry",
    "assert_ppl_blowup": "harness.assertions",
    "assert_clip_drop": "harness.assertions",
    "assert_fluent_baseline": "harness.assertions",
    "assert_two_stage": "harness.assertions",
    "assert_collapses_within": "harness.assertions",
    "assert_no_collapse_within": "harness.assertions",
    "assert_controls_hold": "harness.assertions",
    "assert_matches_baseline": "harness.assertions",
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
