"""Every option of a run in one frozen object: what the CLI sets, what results and cache keys record."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from harness.core.choices import DTYPE_NAMES, MASK_MODES
from harness.core.paths import default_cache_dir
from harness.core.placement import DeviceMap, parse_device_map, parse_max_memory
from harness.core.recorded import MEASUREMENT, PROVENANCE, RANKING, affects, nested, tag_of, tags
from harness.data.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from harness.models.registry import ClipSpec, ModelSpec, get_model_spec, with_local_path
from harness.science.ranking_options import RankingOptions
from harness.science.stages import StageThresholds
from harness.science.threshold_search import SEARCH_MODES

if TYPE_CHECKING:
    import torch


R, M, P = RANKING, MEASUREMENT, PROVENANCE
SettingsClass = TypeVar("SettingsClass")


@dataclass(frozen=True)
class HarnessSettings:
    """Every option of a run. Each field is tagged once with what it changes (harness.core.recorded): rankings,
    measurements, or only provenance; the ranking cache key, the record on every point and the baseline
    comparison are derived from the tags. Data-selecting fields are provenance: the data themselves are
    identified by their content hashes (Experiment.data_record)."""

    cache_dir: Path = field(default_factory=default_cache_dir, metadata=affects(P))
    image_root: Path | None = field(default=None, metadata=affects(P))  # None: the built-in image set
    # None: every category under image_root
    categories: tuple[str, ...] | None = field(default=None, metadata=affects(P))
    max_images: int | None = field(default=None, metadata=affects(P))  # per category
    # larger images are refused, named, before anything is decoded
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=affects(P))
    # … and images whose long side is more than this many times their short side (the processor's allocation)
    max_image_aspect: float = field(default=DEFAULT_MAX_ASPECT, metadata=affects(P))
    # text-only models' texts, one category per file; None: built-in paragraph
    texts: tuple[Path, ...] | None = field(default=None, metadata=affects(P))
    # a text is scored as one sequence of at most this many tokens (as PCICN)
    text_max_tokens: int = field(default=512, metadata=affects(R, kinds=("continuation",)))
    # cut the text into windows of this many tokens instead
    text_window: int | None = field(default=None, metadata=affects(R, kinds=("continuation",)))
    # rows of one forward pass: the same numbers up to float rounding
    batch_size: int = field(default=8, metadata=affects(P))
    # a VLM's caption length (its greedy caption is the ranking's target), a text model's continuations
    max_new_tokens: int = field(default=64, metadata=affects(R))
    # the vqa probe's answers: a word or a short phrase, so their generation stops early
    answer_max_tokens: int = field(default=8, metadata=affects(R, kinds=("vqa",)))
    ranking: RankingOptions = field(default_factory=RankingOptions, metadata=nested())
    thresholds: StageThresholds = field(default_factory=StageThresholds, metadata=nested())
    # None: the model's registered CLIP; recorded as the CLIP in effect, which scores the baseline too
    clip: ClipSpec | None = field(
        default=None,
        metadata=affects(M, kinds=("captioning",), resolved=True, recorded_as="clip_model", per_session=True),
    )
    device: str = field(default="auto", metadata=affects(R, resolved=True))  # recorded as the device type used
    # None: the model's registered dtype; recorded as the dtype used
    dtype: str | None = field(default=None, metadata=affects(R, resolved=True))
    # accelerate's device map (a strategy such as auto, or a JSON object): layers spread over devices, CPU and
    # disk instead of the whole model on `device`; None: one device. The same numbers (tests/test_offload.py)
    device_map: str | None = field(default=None, metadata=affects(P))
    # (device, size) budgets of a device map, e.g. (("0", "70GiB"),)
    max_memory: tuple[tuple[str, str], ...] = field(default=(), metadata=affects(P))
    mask_mode: str = field(default="auto", metadata=affects(M))
    allow_download: bool = field(default=False, metadata=affects(P))
    k_max: int = field(default=8192, metadata=affects(M))
    k_factor: float = field(default=2.0, metadata=affects(M))
    # how collapse_search cases find k₁ and k₂ (harness.science.threshold_search)
    search: str = field(default="adaptive", metadata=affects(M))
    # ks a threshold search evaluates together in one batched pass; None: by the device's batch room, 1 on a CPU
    # (rows cost about linearly there: no gain measured), ACCELERATOR_SEARCH_PARALLEL on an accelerator
    search_parallel: int | None = field(default=None, metadata=affects(M, resolved=True))
    control_seeds: int = field(default=3, metadata=affects(M))  # random-k controls per curve at k₂
    # (registered name, local checkpoint folder or .gguf file): those models load from there instead; the
    # weights are identified by their digest
    model_paths: tuple[tuple[str, Path], ...] = field(default=(), metadata=affects(P))

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "answer_max_tokens", "k_max", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)!r}")
        for name in ("max_images", "text_window", "search_parallel"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1 (or unset), got {getattr(self, name)!r}")
        if self.text_max_tokens < 2:
            raise ValueError(
                f"text_max_tokens must be ≥ 2 (a token to condition on, one to score), got {self.text_max_tokens}"
            )
        if not (math.isfinite(self.max_image_aspect) and self.max_image_aspect >= 1):
            raise ValueError(f"max_image_aspect must be a finite number ≥ 1, got {self.max_image_aspect!r}")
        if not (math.isfinite(self.k_factor) and self.k_factor > 1):
            raise ValueError(f"k_factor must be a finite number > 1 for the k grid to grow, got {self.k_factor!r}")
        if self.search not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {self.search!r}; valid: {', '.join(SEARCH_MODES)}")
        if self.control_seeds < 0:
            raise ValueError(f"control_seeds must be ≥ 0, got {self.control_seeds!r}")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {self.mask_mode!r}; valid: {', '.join(MASK_MODES)}")
        if self.dtype is not None and self.dtype != "auto" and self.dtype not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: auto, {', '.join(DTYPE_NAMES)}")
        if self.device_map is not None:
            parse_device_map(self.device_map)
            if self.device != "auto":
                raise ValueError(
                    f"device {self.device!r} and device_map {self.device_map!r}: a device map places the layers "
                    "itself; leave the device at auto"
                )
        if self.max_memory:
            if self.device_map is None:
                raise ValueError("max_memory needs a device_map: the budget accelerate spreads the layers within")
            parse_max_memory(",".join(f"{device}={size}" for device, size in self.max_memory))
        names = [name for name, _ in self.model_paths]
        if len(names) != len(set(names)):
            raise ValueError(f"model_paths names a model twice: {', '.join(names)}")
        if self.device != "auto":
            import torch  # only for a device named explicitly: the default run's settings need none

            try:
                torch.device(self.device)
            except RuntimeError as error:
                raise ValueError(
                    f"invalid device {self.device!r} (e.g. auto, cpu, cuda, cuda:1): {error}"
                ) from None

    @classmethod
    def from_options(cls, values: Mapping[str, object]) -> HarnessSettings:
        """Settings from values by record name (the names `harness.core.recorded.tags(HarnessSettings)` lists, as
        every result record uses them), nested fields included: `{"alpha": 0.5, "k_max": 16,
        "stage1_ppl_ratio": 3.0, "device": "cpu"}` sets RankingOptions.alpha, HarnessSettings.k_max,
        StageThresholds.stage1_ppl_ratio and HarnessSettings.device. Values left out keep the dataclass defaults.

        Each value is the field's own, not its recorded form. Two fields are recorded under another name, and are
        given under that name only: `aggregation` sets RankingOptions.aggregate ("mean", "max", or None for the
        method's own) and `clip_model` sets HarnessSettings.clip (a ClipSpec, or None for the model's registered
        CLIP). An unknown name — `aggregate` and `clip` included — is a ValueError listing the valid ones; a bad
        value is the dataclass's own error."""
        fields = tags(cls)
        unknown = [name for name in values if name not in fields]
        if unknown:
            renamed = {declared.name: name for name, (_, declared, _) in fields.items() if declared.name != name}
            hints = "".join(f"; give {name!r} as {renamed[name]!r}" for name in unknown if name in renamed)
            raise ValueError(
                f"unknown setting(s) {', '.join(map(repr, unknown))}{hints}; valid: {', '.join(sorted(fields))}"
            )
        by_owner: dict[type, dict[str, object]] = {}
        for name, value in values.items():
            owner, declared, _ = fields[name]
            by_owner.setdefault(owner, {})[declared.name] = value
        return _built(cls, by_owner)

    @property
    def device_map_argument(self) -> DeviceMap | None:
        """The device map as accelerate takes it (a strategy name or a dict), None for one device."""
        return None if self.device_map is None else parse_device_map(self.device_map)

    def model_spec(self, name: str) -> ModelSpec:
        """The registered model `name`, loaded from its local path where `model_paths` gives one."""
        spec = get_model_spec(name)
        path = dict(self.model_paths).get(name)
        return spec if path is None else with_local_path(spec, path)


def _built(owner: type[SettingsClass], by_owner: Mapping[type, Mapping[str, object]]) -> SettingsClass:
    """An `owner` with the given field values, each nested settings dataclass built the same way (its type read
    from the field's default factory)."""
    given = dict(by_owner.get(owner, {}))
    for declared in dataclasses.fields(owner):
        if tag_of(owner, declared).nested:
            given[declared.name] = _built(type(declared.default_factory()), by_owner)
    return owner(**given)


ACCELERATOR_SEARCH_PARALLEL = 3


def search_parallel_for(settings: HarnessSettings, device: torch.device) -> int:
    """The ks per search pass: the setting, or by the device (see HarnessSettings.search_parallel)."""
    if settings.search_parallel is not None:
        return settings.search_parallel
    return 1 if device.type == "cpu" else ACCELERATOR_SEARCH_PARALLEL


def k_grid(site_size: int, k_max: int, factor: float = 2.0) -> list[int]:
    """0 (the baseline), then k growing geometrically from 1 up to min(k_max, site_size), that bound included.
    Where a factor close to 1 would round to the same k many times over, k skips ahead to the next power of
    `factor` that rounds higher, so a grid costs one step per point whatever the factor."""
    limit = min(k_max, site_size)
    grid, k = [0], 1.0
    while round(k) <= limit:
        if round(k) != grid[-1]:
            grid.append(round(k))
        else:  # the next power of factor above grid[-1] + ½ (and one more step where rounding still ties)
            k *= factor ** max(math.ceil(math.log((grid[-1] + 0.5) / k, factor)), 0)
            if round(k) == grid[-1]:
                k *= factor
            continue
        k *= factor
    if grid[-1] != limit and limit > 0:
        grid.append(limit)
    return grid
