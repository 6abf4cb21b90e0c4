"""Collapse cases expanded at collection: a `collapse_grid` case over model × site [× ranking method] × category
× k (a geometric grid from 0 = baseline), a `collapse_search` case over model × site [× method] × category. The
categories are the case's probe's (`probe=` on the marker, else each model family's own: an image category, or a
text). Every name is checked here, so that a bad one fails collection listing the valid ones, before any model
loads."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from harness.core.errors import ModelUnavailableError
from harness.plugin.case_ids import CaseIdError, format_case_id
from harness.plugin.markers import GRID, MARKERS
from harness.plugin.stash import SETTINGS, data_sources


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    found = [(name, metafunc.definition.get_closest_marker(name)) for name in MARKERS]
    found = [(name, marker) for name, marker in found if marker is not None]
    if not found:
        return
    nodeid = metafunc.definition.nodeid
    if len(found) > 1:
        raise pytest.UsageError(f"{nodeid}: use one of {' / '.join(MARKERS)}, not both")
    from harness.models.families import get_family
    from harness.models.registry import registered_models
    from harness.models.sites import site_names, site_size, sites_of
    from harness.runner.settings import k_grid

    name, marker = found[0]
    config = metafunc.config
    settings = config.stash[SETTINGS]
    if not {"models", "sites"} <= set(marker.kwargs):
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.{name} needs models=[...] and sites=[...], got {sorted(marker.kwargs)}"
        )
    models = config.getoption("can_models") or list(marker.kwargs["models"])
    sites = config.getoption("can_sites") or list(marker.kwargs["sites"])
    for site in sites:
        site_names(site)  # unknown sites fail collection with the list of valid ones
    methods = list(marker.kwargs.get("methods", ()))
    for method in methods:
        dataclasses.replace(settings.ranking, method=method)  # an unknown method fails collection, listing them
    from harness.runner.probe import get_probe

    named_probe = marker.kwargs.get("probe")
    if named_probe is not None:
        get_probe(named_probe)  # an unknown probe fails collection, listing the registered ones
    sources = data_sources(config)  # each probe's data scanned and checked before anything is collected
    registered = registered_models()
    params, curves_by_id = [], {}
    for model in models:
        spec = settings.model_spec(model)
        if name == GRID:  # the k grid needs the site sizes: the model's config
            model_config, unavailable = _model_config_or_reason(spec, settings)
        else:  # a search sizes its sites when it runs: only whether the model can be had, nothing built
            model_config, unavailable = None, _unavailable_reason(spec, settings)
        family = get_family(spec.family)
        probe = get_probe(named_probe or family.default_probe)
        categories = probe.categories(sources)
        unsupported = probe.unsupported(family)
        if unavailable is None and unsupported is not None:
            unavailable = f"{model}: the {probe.name} probe cannot run on it: {unsupported}"
        marks = [pytest.mark.skip(reason=unavailable)] if unavailable else []
        for site in sites:
            lacking = [part for part in site_names(site) if part not in sites_of(family)]
            site_marks = marks
            if lacking:  # one case list can name sites of several families (a Q-Former only InstructBLIP has)
                theirs = ", ".join(sites_of(family))
                reason = f"{model}: {family.name} models have no {', '.join(lacking)} site (theirs: {theirs})"
                site_marks = [pytest.mark.skip(reason=reason)]
            known = model_config is not None and not lacking
            size = site_size(site, model_config, family) if known else settings.k_max
            ks = k_grid(size, settings.k_max, settings.k_factor) if name == GRID else [None]
            for method, category, k in itertools.product(methods or [None], categories, ks):
                curve = (model, site, *([method] if methods else []), category)
                try:
                    case_id = format_case_id(model, site, method, category, k, models=registered)
                except CaseIdError as error:
                    raise pytest.UsageError(f"{nodeid}: {error}") from None
                if case_id in curves_by_id:
                    raise pytest.UsageError(
                        f"{nodeid}: two cases would have the id {case_id!r}, {curves_by_id[case_id]} and {curve} "
                        "(a name listed twice, or names whose '-'-joined ids coincide): pytest would number them "
                        "apart, and the harness could no longer tell their curves and ks"
                    )
                curves_by_id[case_id] = curve
                values = (*curve, k) if name == GRID else curve
                params.append(pytest.param(*values, id=case_id, marks=site_marks))
    names = ["can_model", "can_site", *(["can_method"] if methods else []), "can_category"]
    metafunc.parametrize(names + (["k"] if name == GRID else []), params)


def _unavailable_reason(spec, settings) -> str | None:
    from harness.models.loading import unavailable_reason

    return unavailable_reason(spec, settings.cache_dir, settings.allow_download, settings.model_spec)


def _model_config_or_reason(spec, settings):
    from harness.models.loading import load_model_config

    try:
        config = load_model_config(
            spec, cache_dir=settings.cache_dir, allow_download=settings.allow_download, specs=settings.model_spec
        )
        return config, None
    except ModelUnavailableError as error:
        return None, str(error)
