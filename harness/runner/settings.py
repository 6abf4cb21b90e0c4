"""Every option of a run in one frozen object: what the CLI sets, what results and cache keys record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.choices import DTYPE_NAMES, MASK_MODES
from harness.core.paths import default_cache_dir
from harness.core.placement import DeviceMap, parse_device_map, parse_max_memory
from harness.data.images import DEFAULT_MAX_PIXELS
from harness.models.registry import ClipSpec, ModelSpec, get_model_spec, with_local_path
from harness.science.ranking_options import RankingOptions
from harness.science.stages import StageThresholds
from harness.science.threshold_search import SEARCH_MODES

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HarnessSettings:
    cache_dir: Path = field(default_factory=default_cache_dir)
    image_root: Path | None = None  # None: the built-in image set
    categories: tuple[str, ...] | None = None  # None: every category under image_root
    max_images: int | None = None  # per category
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused, named, before anything is decoded
    texts: tuple[Path, ...] | None = (
        None  # text-only models' texts, one category per file; None: built-in paragraph
    )
    text_max_tokens: int = 512  # a text is scored as one sequence of at most this many tokens (as PCICN)
    text_window: int | None = None  # cut the text into windows of this many tokens instead
    batch_size: int = 8
    max_new_tokens: int = 64
    ranking: RankingOptions = field(default_factory=RankingOptions)
    thresholds: StageThresholds = field(default_factory=StageThresholds)
    clip: ClipSpec | None = None  # None: the model's registered CLIP
    device: str = "auto"
    dtype: str | None = None  # None: the model's registered dtype
    # accelerate's device map (a strategy such as auto, or a JSON object): layers spread over devices, CPU and
    # disk instead of the whole model on `device`; None: one device
    device_map: str | None = None
    max_memory: tuple[tuple[str, str], ...] = ()  # (device, size) budgets of a device map, e.g. (("0", "70GiB"),)
    mask_mode: str = "auto"
    allow_download: bool = False
    k_max: int = 8192
    k_factor: float = 2.0
    search: str = "adaptive"  # how collapse_search cases find k₁ and k₂ (harness.science.threshold_search)
    # ks a threshold search evaluates together in one batched pass; None: by the device's batch room, 1 on a CPU
    # (rows cost about linearly there: no gain measured), ACCELERATOR_SEARCH_PARALLEL on an accelerator
    search_parallel: int | None = None
    control_seeds: int = 3  # random-k controls per curve at k₂
    # (registered name, local checkpoint folder or .gguf file): those models load from there instead
    model_paths: tuple[tuple[str, Path], ...] = ()

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "k_max", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)!r}")
        for name in ("max_images", "text_window", "search_parallel"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1 (or unset), got {getattr(self, name)!r}")
        if self.text_max_tokens < 2:
            raise ValueError(
                f"text_max_tokens must be ≥ 2 (a token to condition on, one to score), got {self.text_max_tokens}"
            )
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

    @property
    def device_map_argument(self) -> DeviceMap | None:
        """The device map as accelerate takes it (a strategy name or a dict), None for one device."""
        return None if self.device_map is None else parse_device_map(self.device_map)

    def model_spec(self, name: str) -> ModelSpec:
        """The registered model `name`, loaded from its local path where `model_paths` gives one."""
        spec = get_model_spec(name)
        path = dict(self.model_paths).get(name)
        return spec if path is None else with_local_path(spec, path)


ACCELERATOR_SEARCH_PARALLEL = 3


def search_parallel_for(settings: HarnessSettings, device: torch.device) -> int:
    """The ks per search pass: the setting, or by the device (see HarnessSettings.search_parallel)."""
    if settings.search_parallel is not None:
        return settings.search_parallel
    return 1 if device.type == "cpu" else ACCELERATOR_SEARCH_PARALLEL


def k_grid(site_size: int, k_max: int, factor: float = 2.0) -> list[int]:
    """0 (the baseline), then k growing geometrically from 1 up to min(k_max, site_size), that bound included."""
    limit = min(k_max, site_size)
    grid, k = [0], 1.0
    while round(k) <= limit:
        if round(k) != grid[-1]:
            grid.append(round(k))
        k *= factor
    if grid[-1] != limit and limit > 0:
        grid.append(limit)
    return grid
