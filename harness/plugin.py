"""The pytest plugin: `--can-*` options, session fixtures, collapse-case parametrisation and the summary.

Registered through the `pytest11` entry point (installed package) and by the repository's root conftest.
A case opts in with `@pytest.mark.collapse_grid(models=[...], sites=[...])` and the fixtures `collapse_curve`
and `k`; the plugin expands it over model × site × category × k (a geometric grid from 0 = baseline); a category
is an image category, or for a text-only model a text (`--can-texts`).
With `@pytest.mark.collapse_search(models=[...], sites=[...])` and the fixture `collapse_analysis` it expands over
model × site × category, and each case gets its curve's thresholds found by the adaptive search, with controls at
k₂ and the layer breakdown (harness.runner.analysis). Either marker takes `methods=[...]` (ranking methods, see
harness.science.ranking) to expand over them too; without it every case ranks by `--can-method`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.core.errors import HarnessError, ModelUnavailableError

if TYPE_CHECKING:  # the plugin's import loads none of them (see harness.runner.options)
    from harness.data.images import ImageSet
    from harness.data.texts import TextSet
    from harness.runner.baseline import Baselines
    from harness.runner.settings import HarnessSettings

SETTINGS: pytest.StashKey[HarnessSettings] = pytest.StashKey()
IMAGES: pytest.StashKey[ImageSet] = pytest.StashKey()
TEXTS: pytest.StashKey[TextSet] = pytest.StashKey()
BASELINES: pytest.StashKey[Baselines] = pytest.StashKey()
PROGRESS: pytest.StashKey[object] = pytest.StashKey()  # the progress routing before this run, put back after
POINT_PROPERTY = "can_point"
ANALYSIS_PROPERTY = "can_analysis"
MARKERS = ("collapse_grid", "collapse_search")


def pytest_addoption(parser: pytest.Parser) -> None:
    from harness.runner.options import OPTIONS

    group = parser.getgroup("can", "critical-neuron collapse harness")
    for option in OPTIONS:
        group.addoption(option.flag, **option.pytest_kwargs())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "collapse_grid(models, sites, methods=None): expand a case over model × site [× ranking method] × "
        "category (image category, or text) × k (see harness.plugin)",
    )
    config.addinivalue_line(
        "markers",
        "collapse_search(models, sites, methods=None): expand a case over model × site [× ranking method] × "
        "category; the fixture collapse_analysis holds the curve's searched thresholds, controls and layer "
        "breakdown",
    )
    try:
        config.stash[SETTINGS] = _settings_from_options(config)
        config.stash[BASELINES] = _baselines_from_options(config)
    except (ValueError, HarnessError) as error:
        raise pytest.UsageError(f"harness option: {error}") from error
    _route_progress(config)
    worker = getattr(config, "workerinput", None)
    if worker is None:
        from harness.reporting.report import check_report_dir

        try:
            check_report_dir(report_dir(config))
        except ValueError as error:
            raise pytest.UsageError(f"harness option --can-report-dir: {error}") from None
        recorder = CollapseRecorder(config)
        if _distributed(config):  # its workers collect: nothing tells the controller which cases they hold
            recorder.claim_report_dir()
        _interrupt_on_sigterm(config)
        config.pluginmanager.register(recorder, "can-collapse-recorder")
    else:
        _share_cores(int(worker.get("workercount", 1)))


def _share_cores(workers: int) -> None:
    """An xdist worker's share of the cores: torch's threads where torch is loaded already, else (so that a run
    without collapse cases loads no torch) the OMP_NUM_THREADS torch reads when it loads, unless one is set."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def report_dir(config: pytest.Config) -> Path:
    return Path(config.getoption("can_report_dir") or config.rootpath / "can-results")


def _distributed(config: pytest.Config) -> bool:
    """Whether this is the controller of an xdist run (`-n N`, N ≥ 1)."""
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a job scheduler's stop, `kill`) ends the run like Ctrl-C: the cases stop, and the report is
    written, marked incomplete, instead of the process dying with nothing said. Only where nobody else has
    claimed SIGTERM."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def _route_progress(config: pytest.Config) -> None:
    """Progress lines of long work reach the terminal past pytest's output capture: on the controller through
    the terminal reporter, on an xdist worker through its standard error (which xdist leaves on the terminal)."""
    from harness.core import progress

    worker = getattr(config, "workerinput", {}).get("workerid")
    config.stash[PROGRESS] = progress.snapshot()  # put back when this run ends

    def uncaptured():
        capture = config.pluginmanager.getplugin("capturemanager")
        return capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()

    def write(line: str) -> None:
        with uncaptured():
            reporter = config.pluginmanager.getplugin("terminalreporter")
            if worker is None and reporter is not None:
                if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
                    reporter.write("\n")  # after a line of progress dots
                reporter.write_line(line)
            else:
                sys.stderr.write(f"[{worker}] {line}\n" if worker else line + "\n")
                sys.stderr.flush()

    try:
        progress.configure(write=write, passthrough=uncaptured, interval=config.getoption("can_progress_interval"))
    except ValueError as error:
        raise pytest.UsageError(f"harness option --can-progress-interval: {error}") from error


def pytest_unconfigure(config: pytest.Config) -> None:
    from harness.core import progress

    if PROGRESS in config.stash:
        progress.restore(config.stash[PROGRESS])


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `-n N` (default `--dist load`, or `--dist loadgroup`) send each model's (or each curve's) cases to
    one worker.

    xdist's own loadgroup cannot be relied on: with pytest ≥ 9.2 its `@group` node-id suffix is lost
    (pytest-dev/pytest-xdist#1386), so this scheduler reads the group from the case id instead.
    """
    explicit = any(arg == "--dist" or arg.startswith("--dist=") for arg in config.invocation_params.args)
    dist = config.getoption("dist")
    if dist == "loadgroup" or (dist == "load" and not explicit):
        from harness.runner.xdist_scheduling import CollapseCaseScheduling

        return CollapseCaseScheduling(config, log, by=config.getoption("can_dist_group"))
    return None


def _settings_from_options(config: pytest.Config):
    from harness.models.registry import ClipSpec, get_model_spec
    from harness.runner.options import OPTIONS, given_fields
    from harness.runner.settings import HarnessSettings
    from harness.science.ranking_options import RankingOptions
    from harness.science.stages import StageThresholds

    option = config.getoption
    model_paths = []
    for entry in option("can_model_path"):
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--can-model-path expects NAME=PATH, got {entry!r}")
        get_model_spec(name)  # an unknown name is an error listing the registered ones
        if not Path(path).expanduser().exists():
            raise ValueError(f"--can-model-path {entry}: {path} does not exist (a checkpoint folder or GGUF file)")
        model_paths.append((name, Path(path).expanduser()))
    clip = None
    if option("can_clip_model"):
        from harness.models.clip_score import LOCAL_DIR, check_clip_name

        name = option("can_clip_model")
        pretrained = None if name.startswith(LOCAL_DIR) else (option("can_clip_pretrained") or "openai")
        clip = ClipSpec(model_name=name, pretrained=pretrained)
        check_clip_name(clip)
    elif option("can_clip_pretrained"):
        raise ValueError("--can-clip-pretrained needs --can-clip-model")
    values = {o.dest: option(o.dest) for o in OPTIONS}
    settings = HarnessSettings(
        **given_fields(values, HarnessSettings),
        ranking=RankingOptions(**given_fields(values, RankingOptions)),
        thresholds=StageThresholds(**given_fields(values, StageThresholds)),
        clip=clip,
        model_paths=tuple(model_paths),
    )
    if settings.device != "auto":
        from harness.models.devices import check_available

        check_available(settings.device)  # a GPU this machine lacks is one error now, not a crash in every case
    if settings.device_map is not None:
        from harness.models.devices import check_map_available

        check_map_available(settings.device_map_argument)  # every GPU a JSON map names
    return settings


def _baselines_from_options(config: pytest.Config):
    from harness.runner.baseline import BaselineFile, Baselines, Tolerances
    from harness.runner.options import OPTIONS, given_fields, metric_tolerances

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


# -- parametrisation ------------------------------------------------------------------------------------------
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    found = [(name, metafunc.definition.get_closest_marker(name)) for name in MARKERS]
    found = [(name, marker) for name, marker in found if marker is not None]
    if not found:
        return
    if len(found) > 1:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: use one of {' / '.join(MARKERS)}, not both")
    from harness.models.families import get_family
    from harness.models.sites import site_names, site_size, sites_of
    from harness.runner.settings import k_grid

    name, marker = found[0]
    config = metafunc.config
    settings = config.stash[SETTINGS]
    if not {"models", "sites"} <= set(marker.kwargs):
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: @pytest.mark.{name} needs models=[...] and sites=[...], "
            f"got {sorted(marker.kwargs)}"
        )
    models = config.getoption("can_models") or list(marker.kwargs["models"])
    sites = config.getoption("can_sites") or list(marker.kwargs["sites"])
    for site in sites:
        site_names(site)  # unknown sites fail collection with the list of valid ones
    methods = list(marker.kwargs.get("methods", ()))
    for method in methods:
        dataclasses.replace(settings.ranking, method=method)  # an unknown method fails collection, listing them
    images = _image_set(config)  # scanned (and the category selection checked) before anything is collected
    image_categories = list(settings.categories or images.categories)
    params = []
    for model in models:
        spec = settings.model_spec(model)
        if name == "collapse_grid":  # the k grid needs the site sizes: the model's config
            model_config, unavailable = _model_config_or_reason(spec, settings)
        else:  # a search sizes its sites when it runs: only whether the model can be had, nothing built
            model_config, unavailable = None, _unavailable_reason(spec, settings)
        family = get_family(spec.family)
        categories = _text_set(config).categories if family.text_only else image_categories
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
            for method, category in itertools.product(methods or [None], categories):
                curve = (model, site, *([method] if methods else []), category)
                if name == "collapse_search":
                    params.append(pytest.param(*curve, id="-".join(curve), marks=site_marks))
                    continue
                for k in k_grid(size, settings.k_max, settings.k_factor):
                    params.append(pytest.param(*curve, k, id="-".join(curve) + f"-k{k}", marks=site_marks))
    names = ["can_model", "can_site", *(["can_method"] if methods else []), "can_category"]
    metafunc.parametrize(names + (["k"] if name == "collapse_grid" else []), params)


def _image_set(config: pytest.Config):
    """The run's images, scanned and validated once per process (collection and the session share it)."""
    if IMAGES not in config.stash:
        from harness.runner.session import load_image_set

        config.stash[IMAGES] = load_image_set(config.stash[SETTINGS])
    return config.stash[IMAGES]


def _text_set(config: pytest.Config):
    """The run's texts for text-only models, read and validated once per process."""
    if TEXTS not in config.stash:
        from harness.data.texts import load_text_set

        config.stash[TEXTS] = load_text_set(config.stash[SETTINGS].texts)
    return config.stash[TEXTS]


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


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def can_settings(pytestconfig: pytest.Config):
    """The run's HarnessSettings, built from the `--can-*` options."""
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def can_session(pytestconfig: pytest.Config, can_settings):
    """Loaded models, CLIP scorers, images and rankings shared by every case in this process."""
    from harness.runner.session import HarnessSession

    return HarnessSession(can_settings, images=_image_set(pytestconfig), texts=_text_set(pytestconfig))


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


def _experiment_or_skip(can_session, model: str, method: str):
    """The model's experiment ranking by `method`; a model whose weights are not on this machine skips the case,
    saying why."""
    try:
        experiment = can_session.experiment(model)
    except ModelUnavailableError as error:
        pytest.skip(str(error))
    return experiment.with_ranking(dataclasses.replace(experiment.settings.ranking, method=method))


def _session_curve(curves: dict, experiment, site: str, category: str):
    """The session's one CollapseCurve per (model, ranking, site, category), shared by grid and search cases."""
    from harness.runner.curve import CollapseCurve

    key = (experiment.name, experiment.settings.ranking, site, category)
    if key not in curves:
        curves[key] = CollapseCurve(experiment, site, category)
    return curves[key]


@pytest.fixture
def collapse_curve(
    request, can_session, _can_curves, can_model: str, can_site: str, can_method: str, can_category: str
):
    """The CollapseCurve of this case's (model, site, category); every point it measures is recorded."""
    experiment = _experiment_or_skip(can_session, can_model, can_method)
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
    can_category: str,
):
    """The CurveAnalysis of this case's (model, site, category): k₁ and k₂ by the configured search, the
    controls at k₂ and the layer breakdown; computed once per session and recorded for the threshold table.
    Points the grid cases of the same curve measured in this process are reused, not measured again."""
    from harness.runner.analysis import analyse_curve

    model, site, category = can_model, can_site, can_category
    experiment = _experiment_or_skip(can_session, model, can_method)
    key = (model, site, can_method, category)
    if key not in _can_analyses:
        _can_analyses[key] = analyse_curve(
            experiment, site, category, curve=_session_curve(_can_curves, experiment, site, category)
        )
    analysis = _can_analyses[key]
    request.node.user_properties.append((ANALYSIS_PROPERTY, json.dumps(analysis.to_row())))
    yield analysis
    experiment.loaded.assert_unmodified()


# -- results --------------------------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Tell a failed domain assertion from an exception (on the process that ran the case, so it reaches the
    xdist controller with the report): an exception makes the run's report incomplete."""
    from harness.core.run_outcome import RAISED_PROPERTY

    report = yield
    expected = (AssertionError, pytest.fail.Exception, pytest.skip.Exception)
    if call.when == "call" and call.excinfo is not None and not call.excinfo.errisinstance(expected):
        report.user_properties.append((RAISED_PROPERTY, call.excinfo.typename))
    return report


class CollapseRecorder:
    """Collects the points recorded by cases (from workers too, via report.user_properties) and how every
    collected case ended, then writes the reports and prints the tables on the controller. A run that was
    interrupted, had errors or left cases unfinished writes its report marked incomplete to `incomplete/`, so
    the last complete report stays as it was; a complete report removes the plots it did not draw and the
    superseded `incomplete/`.

    The report folder is held by one run at a time, from before its first case to its end: a second run asking
    for it meanwhile is a usage error naming the other run. A serial run takes it once collection found collapse
    cases (a run of other tests — the harness's own test suite, with the default folder — writes no report and
    takes nothing, so such runs never refuse each other); an xdist controller, which never sees its workers'
    collected items, takes it at configure time."""

    def __init__(self, config: pytest.Config):
        from harness.core.run_outcome import RunOutcome

        self.config = config
        self.rows: list[dict] = []
        self.analyses: dict[tuple, dict] = {}  # (model, site, ranking, category) → analysis row
        self.outcome = RunOutcome()
        self.case_curves: dict[tuple, set[str]] = defaultdict(set)  # curve → node-id curve parts of its cases
        self.reports: tuple[Path, Path] | None = None
        self.write_error: str | None = None
        self.holds_report_dir = False

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.outcome.collected = [item.nodeid for item in session.items]
        if any(item.get_closest_marker(name) for item in session.items for name in MARKERS):
            self.claim_report_dir()

    def claim_report_dir(self) -> None:
        """Hold the report folder until the run ends (released at unconfigure; by the OS if the run dies); once
        (`-n N --collect-only` collects on the controller after taking it at configure time)."""
        from harness.reporting.report import claim_report_dir

        if self.holds_report_dir:
            return
        command = " ".join(["pytest", *self.config.invocation_params.args])
        try:
            release = claim_report_dir(report_dir(self.config), command)
        except (ValueError, OSError) as error:
            raise pytest.UsageError(f"harness option --can-report-dir: {error}") from None
        self.config.add_cleanup(release)
        self.holds_report_dir = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        self.outcome.collected = list(ids)  # every worker collects the same ids

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo) -> None:
        self.outcome.interrupted = f"interrupted ({str(excinfo.value) or excinfo.typename})"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from harness.core.run_outcome import curve_of
        from harness.reporting.report import GROUP_KEYS

        self.outcome.record(report)
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name not in (POINT_PROPERTY, ANALYSIS_PROPERTY):
                continue
            row = json.loads(value)
            group = tuple(row[key] for key in GROUP_KEYS)
            self.case_curves[group].add(curve_of(report.nodeid)[0])
            if name == POINT_PROPERTY:
                self.rows.append(row)
            else:
                self.analyses[group] = row

    def curve_cases(self) -> dict:
        return {group: self.outcome.curve_cases(curves) for group, curves in self.case_curves.items()}

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if session.shouldfail and self.outcome.interrupted is None:
            self.outcome.interrupted = f"stopped early ({session.shouldfail})"
        if exitstatus == pytest.ExitCode.INTERRUPTED and self.outcome.interrupted is None:
            self.outcome.interrupted = "interrupted"
        if not self.rows and not self.analyses:
            return
        from harness.reporting.report import clear_stale, provenance, write_reports

        config = self.config
        directory = report_dir(config) / ("" if self.outcome.complete else "incomplete")
        meta = provenance(config.rootpath)
        meta["command"] = " ".join(config.invocation_params.args)
        meta.update(self.outcome.meta())
        try:
            analyses = list(self.analyses.values())
            self.reports = write_reports(self.rows, directory, meta, analyses, self.curve_cases())
            from harness.reporting.plots import plot_analysis, plot_file_name

            plots = [plot_analysis(row, directory / "plots" / plot_file_name(row)) for row in analyses]
            clear_stale(directory, plots, complete=self.outcome.complete)
        except OSError as error:  # a full disk, a folder removed during the run: say so, keep the tables
            self.write_error = (
                f"the report could not be written to {directory} ({error}); the previous report there is "
                "untouched, and the tables above are this run's results"
            )
            session.exitstatus = session.exitstatus or pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows and not self.analyses:
            return
        from harness.core.labels import curve_label
        from harness.reporting.report import latest_points, render_summary, render_thresholds, summarize
        from harness.runner.curve import format_curve
        from harness.runner.experiment import CollapsePoint

        settings = self.config.stash[SETTINGS]
        rankings = {row["ranking"] for row in [*self.rows, *self.analyses.values()]}
        method = next(iter(rankings)) if len(rankings) == 1 else "several rankings"
        cases = self.curve_cases()
        if self.rows:
            terminalreporter.write_sep("=", f"critical-neuron collapse ({method})")
            terminalreporter.write_line(render_summary(summarize(self.rows, cases)))
        if self.analyses:
            terminalreporter.write_sep(
                "=", f"two-stage thresholds ({method}; {settings.search} search, controls at k₂)"
            )
            terminalreporter.write_line(render_thresholds(list(self.analyses.values()), cases))
        if self.config.getoption("can_show_curves"):
            points = latest_points(self.rows)
            for group in sorted({(p["model"], p["site"], p["category"], p["ranking"]) for p in points}):
                curve = [
                    CollapsePoint(**p)
                    for p in points
                    if (p["model"], p["site"], p["category"], p["ranking"]) == group
                ]
                terminalreporter.write_line(f"\n{curve_label(*group)}\n{format_curve(curve)}")
        if self.write_error is not None:
            terminalreporter.write_line(f"REPORT NOT WRITTEN: {self.write_error}", red=True)
        if not self.outcome.complete:
            unfinished = self.outcome.unfinished
            listed = ", ".join(unfinished[:8]) + (f", … ({len(unfinished)} in all)" if len(unfinished) > 8 else "")
            terminalreporter.write_line(
                f"INCOMPLETE RUN: {self.outcome.reason()}"
                + (f"; not measured: {listed}" if unfinished else "")
                + ". The report is marked incomplete and the last complete one is untouched.",
                red=True,
            )
        if self.reports is not None:
            terminalreporter.write_line(f"reports: {self.reports[0]}  {self.reports[1]}")
