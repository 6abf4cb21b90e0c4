"""Every `--can-*` option, declared once: its flag, the field it sets, type, choices and help. The default is the
field's own default in the dataclass it sets (HarnessSettings, RankingOptions, StageThresholds, Tolerances) and
the choices are the library's own constants, so neither is ever written twice; an option that is not given
leaves the field's default in place.

The options that set a field of HarnessSettings (or of its nested RankingOptions and StageThresholds) reach it
through HarnessSettings.from_options, by the fields' record names (`settings_values`).

Free of torch: the pytest plugin declares these options on every pytest run of every environment it is
installed in.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.core.choices import DTYPE_NAMES, MASK_MODES
from harness.core.placement import parse_max_memory
from harness.core.progress import DEFAULT_INTERVAL
from harness.core.recorded import tags
from harness.runner.baseline import Tolerances
from harness.runner.settings import HarnessSettings
from harness.science.metric_registry import get_metric, registered_metrics
from harness.science.ranking_methods import AGGREGATIONS, default_aggregations_help, methods_help
from harness.science.ranking_options import POSITIONS, RankingOptions
from harness.science.stages import TEXT_STAGE2, StageThresholds
from harness.science.threshold_search import SEARCH_MODES

DIST_GROUPS = ("model", "curve")  # harness.plugin.scheduling: one worker per model, or per curve


def names(value: str) -> tuple[str, ...]:
    """A comma-separated list; an empty one is an error (it would silently mean "the case's own list")."""
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"expects a comma-separated list of at least one name, got {value!r}")
    return items


def paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(item) for item in names(value))


def memory_budget(value: str) -> tuple[tuple[str, str], ...]:
    try:
        return parse_max_memory(value)
    except ValueError as error:  # argparse shows an ArgumentTypeError's own words, a ValueError's not
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    sets: tuple[type, str] | None = None  # (dataclass, field) whose default it overrides; None: a plugin option
    type: Callable[[str], object] | None = None
    choices: tuple[str, ...] | None = None
    default: object = None  # a plugin option's default (a field's default is read from its dataclass)
    shown_default: str | None = None  # how help names a default that means something else ("every folder")
    action: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def field_default(self) -> object:
        owner, name = self.sets
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        return field.default

    def help_text(self) -> str:
        if self.action == "store_true":
            return self.help
        default = self.default if self.sets is None else self.field_default
        shown = self.shown_default or (f"{default:g}" if isinstance(default, float) else str(default))
        return f"{self.help} (default: {shown})"

    def pytest_kwargs(self) -> dict[str, object]:
        """addoption's keywords: a field's option defaults to None, so that only a given value overrides."""
        kwargs = {"help": self.help_text(), "default": self.default if self.sets is None else None}
        for name in ("type", "choices", "action", "metavar"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs


def _tolerance_metrics() -> list:
    """The registered metrics whose baseline tolerance has an option (harness.science.metric_registry)."""
    return [metric for metric in map(get_metric, registered_metrics()) if metric.tolerance_flag is not None]


def metric_tolerance_options() -> tuple[Option, ...]:
    """One `--can-baseline-…-atol` option per metric that declares one: how far a baseline lets it move."""
    return tuple(
        Option(
            metric.tolerance_flag,
            f"allowed change of {metric.title} ({metric.description})",
            type=float,
            shown_default=f"{metric.tolerance:g}",
        )
        for metric in _tolerance_metrics()
    )


def metric_tolerances(values: Mapping[str, object]) -> dict[str, float]:
    """The metrics' tolerances the given option values set, by metric name (those not given keep their own)."""
    given = {metric.name: values.get(Option(metric.tolerance_flag, "").dest) for metric in _tolerance_metrics()}
    return {name: value for name, value in given.items() if value is not None}


S, R, T, B = HarnessSettings, RankingOptions, StageThresholds, Tolerances
OPTIONS: tuple[Option, ...] = (
    # what a run covers
    Option("--can-models", "comma-separated registered model names", type=names, shown_default="each case's own"),
    Option("--can-sites", "comma-separated sites, e.g. lm.down_proj,lm.gate_proj; a+b: one joint ranking",
           type=names, shown_default="each case's own"),
    Option("--can-categories", "comma-separated image categories", (S, "categories"), names,
           shown_default="every folder"),
    Option("--can-images", "image root with one folder per category", (S, "image_root"), Path,
           shown_default="held-out renderings of the synthetic world"),
    Option("--can-max-images", "use at most N images per category", (S, "max_images"), int, shown_default="all"),
    Option("--can-max-image-pixels", "refuse (and name) images with more pixels than this, before decoding them",
           (S, "max_image_pixels"), int, shown_default="4096² = 16777216"),
    Option("--can-max-image-aspect", "refuse (and name) images whose long side is more than this many times their "
           "short side, before decoding them (a processor resizing the short side allocates in proportion)",
           (S, "max_image_aspect"), float),
    Option("--can-texts", "comma-separated text files for text-only models, one category per file stem",
           (S, "texts"), paths, shown_default="the built-in paragraph, category 'paragraph'"),
    Option("--can-text-max-tokens", "one sequence of at most N tokens per text, special tokens included (as "
           "PCICN)", (S, "text_max_tokens"), int),
    Option("--can-text-window", "cut each text into windows of N tokens", (S, "text_window"), int,
           shown_default="one sequence"),
    # the k grid and the threshold search
    Option("--can-k-max", "largest k on the grid, capped at the site size", (S, "k_max"), int),
    Option("--can-k-factor", "geometric growth of the k grid", (S, "k_factor"), float),
    Option("--can-search", "collapse_search cases: bisections for k₂'s bracket, k₂, k₁ (adaptive) or the papers' "
           "k = 1, 2, 3, … (linear)", (S, "search"), choices=SEARCH_MODES),
    Option("--can-search-parallel", "ks a threshold search evaluates together in one batched pass, a (P+1)-ary "
           "search", (S, "search_parallel"), int, shown_default="1 on a CPU, 3 on an accelerator"),
    Option("--can-control-seeds", "random-k controls per searched curve at k₂", (S, "control_seeds"), int),
    # regression baselines
    Option("--can-baseline", "regression baseline file: searched curves are compared against it", type=Path,
           shown_default="none"),
    Option("--can-baseline-update", "rewrite this run's curves in --can-baseline", action="store_true",
           default=False),
    Option("--can-baseline-k-rtol", "allowed relative change of k₁/k₂", (B, "k_rtol"), float),
    *metric_tolerance_options(),
    # ranking
    Option("--can-method", f"how neurons are ranked, by a registered method: {methods_help()}", (R, "method")),
    Option("--can-alpha", "CAN exponent α on |∂L/∂a| in [0, 1]", (R, "alpha"), float),
    Option("--can-positions", "positions a ranking aggregates", (R, "positions"), choices=POSITIONS),
    Option("--can-aggregate", "how a ranking aggregates positions", (R, "aggregate"), choices=AGGREGATIONS,
           shown_default=f"the method's own: {default_aggregations_help()}"),
    Option("--can-noise-sigma", "pcicn: std of the noise on the input embeddings", (R, "noise_sigma"), float),
    Option("--can-noise-samples", "pcicn: noisy passes per batch of images", (R, "noise_samples"), int),
    Option("--can-ranking-seed", "pcicn noise and random ranking seed", (R, "seed"), int),
    # the model run
    Option("--can-batch-size", "images (or text windows) per forward pass", (S, "batch_size"), int),
    Option("--can-max-new-tokens", "caption length limit", (S, "max_new_tokens"), int),
    Option("--can-answer-max-tokens", "answer length limit of the vqa probe", (S, "answer_max_tokens"), int),
    Option("--can-clip-model", "open_clip model name or local-dir:PATH",
           shown_default="the model's registered CLIP"),
    Option("--can-clip-pretrained", "open_clip pretrained tag for a named --can-clip-model",
           shown_default="openai"),
    Option("--can-device", "torch device; auto = GPU (xdist worker gwN → GPU N mod count) else CPU",
           (S, "device")),
    Option("--can-device-map", "spread each model's layers over devices, CPU and disk with accelerate: auto, "
           "balanced, balanced_low_0, sequential or a JSON object {module: GPU index | cpu | disk}",
           (S, "device_map"), shown_default="none: the whole model on --can-device"),
    Option("--can-max-memory", "the most each device of a --can-device-map may hold, e.g. 0=70GiB,cpu=200GiB "
           "(the rest goes to disk)", (S, "max_memory"), memory_budget, shown_default="what each device has",
           metavar="DEVICE=SIZE,…"),
    Option("--can-dtype", "weights dtype", (S, "dtype"), choices=("auto", *DTYPE_NAMES),
           shown_default="the model's registered dtype (auto = bf16 on GPU, fp32 on CPU)"),
    Option("--can-mask-mode", "how neurons are zeroed (auto: weight edit where the weight is an in-memory float "
           "tensor, else hooks)", (S, "mask_mode"), choices=MASK_MODES),
    Option("--can-allow-download", "let missing checkpoints download from the HF hub", (S, "allow_download"),
           action="store_true"),
    Option("--can-model-path", "load NAME from a local folder or GGUF file (repeatable)", action="append",
           default=[], metavar="NAME=PATH"),
    Option("--can-cache-dir", "rankings and built models", (S, "cache_dir"), Path,
           shown_default="$CAN_HARNESS_CACHE or ~/.cache/can-harness"),
    Option("--can-report-dir", "where collapse.json/.csv go", type=Path, shown_default="<rootdir>/can-results"),
    # the two-stage criterion
    Option("--can-stage1-ppl-ratio", "stage 1 if reference PPL ≥ this × baseline", (T, "stage1_ppl_ratio"), float),
    Option("--can-stage1-clip-fraction", "… or CLIP ≤ this × baseline", (T, "stage1_clip_fraction"), float),
    Option("--can-stage1-accuracy-fraction", "… or (vqa probe) accuracy ≤ this × baseline",
           (T, "stage1_accuracy_fraction"), float),
    Option("--can-stage2-log10-ppl", "stage 2 needs log10(PPL/PPL₀) ≥ this …", (T, "stage2_log10_ppl_ratio"),
           float),
    Option("--can-stage2-degenerate-rate", "… and CLIP ≤ chance or at least this share of degenerate captions",
           (T, "stage2_degenerate_rate"), float),
    Option("--can-text-stage2", "text-only models: stage 2 by the PPL alone (ppl, PCICN's criterion) or also "
           "degenerate text", (T, "text_stage2"), choices=TEXT_STAGE2),
    # output and scheduling
    Option("--can-progress-interval", "seconds between progress lines of long work (rankings, searches, "
           "conversions; 0: all)", type=float, default=DEFAULT_INTERVAL),
    Option("--can-show-curves", "print every curve under the summary table", action="store_true", default=False),
    Option("--can-dist-group", "under -n: one worker per model (each model loads once) or per (model, site, "
           "category) curve (every worker loads the model: use with one GPU per worker)", choices=DIST_GROUPS,
           default="model"),
)  # fmt: skip


def given_fields(values: Mapping[str, object], owner: type) -> dict[str, object]:
    """The fields of `owner` that the given option values set (options left out keep the field defaults)."""
    return {
        option.sets[1]: values[option.dest]
        for option in OPTIONS
        if option.sets is not None and option.sets[0] is owner and values.get(option.dest) is not None
    }


def settings_values(values: Mapping[str, object]) -> dict[str, object]:
    """The given option values that set a HarnessSettings field, nested ones included, by the field's record name:
    what HarnessSettings.from_options takes (`--can-aggregate` sets `aggregation`, RankingOptions.aggregate)."""
    record_names = {(owner, field.name): name for name, (owner, field, _) in tags(HarnessSettings).items()}
    return {
        record_names[option.sets]: values[option.dest]
        for option in OPTIONS
        if option.sets in record_names and values.get(option.dest) is not None
    }
