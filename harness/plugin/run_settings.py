"""The run's HarnessSettings and regression Baselines, built from the `--can-*` options at configure time: every
bad value is one usage error before anything is collected or loaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the plugin's import loads none of them (see harness.plugin.options)
    from harness.models.registry import ClipSpec
    from harness.runner.baseline import Baselines
    from harness.runner.settings import HarnessSettings


def settings_from_config(config: pytest.Config) -> HarnessSettings:
    """The settings the options give (HarnessSettings.from_options), with the local model paths and the CLIP
    model checked, and a device this machine lacks refused now rather than in every case."""
    from harness.plugin.options import OPTIONS, settings_values
    from harness.runner.settings import HarnessSettings

    values = settings_values({option.dest: config.getoption(option.dest) for option in OPTIONS})
    model_paths, clip = _model_paths_from_options(config), _clip_from_options(config)
    settings = HarnessSettings.from_options({**values, "clip_model": clip, "model_paths": model_paths})
    if settings.device != "auto":
        from harness.models.devices import check_available

        check_available(settings.device)  # a GPU this machine lacks is one error now, not a crash in every case
    if settings.device_map is not None:
        from harness.models.devices import check_map_available

        check_map_available(settings.device_map_argument)  # every GPU a JSON map names
    return settings


def _model_paths_from_options(config: pytest.Config) -> tuple[tuple[str, Path], ...]:
    """`--can-model-path NAME=PATH`, each naming a registered model and a path that exists."""
    from harness.models.registry import get_model_spec

    model_paths = []
    for entry in config.getoption("can_model_path"):
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--can-model-path expects NAME=PATH, got {entry!r}")
        get_model_spec(name)  # an unknown name is an error listing the registered ones
        if not Path(path).expanduser().exists():
            raise ValueError(f"--can-model-path {entry}: {path} does not exist (a checkpoint folder or GGUF file)")
        model_paths.append((name, Path(path).expanduser()))
    return tuple(model_paths)


def _clip_from_options(config: pytest.Config) -> ClipSpec | None:
    """`--can-clip-model` with its `--can-clip-pretrained` tag (openai unless given; none for a local folder);
    None: each model's registered CLIP."""
    name, pretrained = config.getoption("can_clip_model"), config.getoption("can_clip_pretrained")
    if not name:
        if pretrained:
            raise ValueError("--can-clip-pretrained needs --can-clip-model")
        return None
    from harness.models.clip_score import LOCAL_DIR, check_clip_name
    from harness.models.registry import ClipSpec

    clip = ClipSpec(model_name=name, pretrained=None if name.startswith(LOCAL_DIR) else (pretrained or "openai"))
    check_clip_name(clip)
    return clip


def baselines_from_config(config: pytest.Config) -> Baselines:
    """`--can-baseline` (checked to exist unless it is being recorded, and read now: a broken file or entry is
    found before the search), `--can-baseline-update` and the tolerances."""
    from harness.plugin.options import OPTIONS, given_fields, metric_tolerances
    from harness.runner.baseline import BaselineFile, Baselines, Tolerances

    option = config.getoption
    values = {o.dest: option(o.dest) for o in OPTIONS}
    tolerances = Tolerances(**given_fields(values, Tolerances), metric_atol=metric_tolerances(values))
    path = option("can_baseline")
    if path is None:
        if option("can_baseline_update"):
            raise ValueError("--can-baseline-update needs --can-baseline PATH (the file to rewrite)")
        return Baselines(tolerances=tolerances)
    baseline, update = BaselineFile(path), option("can_baseline_update")
    if not update and not Path(path).is_file():
        raise ValueError(f"--can-baseline {path}: no such file; record one first with --can-baseline-update")
    if update:
        baseline.check_writable()
    baseline.read(validate=not update)  # a broken file or entry is found now, not after the search
    return Baselines(baseline, update=update, tolerances=tolerances)
