"""Option validation: HarnessSettings and StageThresholds refuse values a run could not use, naming them; settings
from values by record name (HarnessSettings.from_options), as the plugin, scripts and benchmarks build them."""

from __future__ import annotations

import re

import pytest
import torch

from harness.core.recorded import tags
from harness.models.registry import ClipSpec
from harness.runner.settings import HarnessSettings
from harness.science.ranking_options import RankingOptions
from harness.science.stages import StageThresholds

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("device", "gpu0", "invalid device 'gpu0'"),
        ("device", "cuda:x", "invalid device 'cuda:x'"),
        ("device", "", "invalid device ''"),
        ("dtype", "fp32", "unknown dtype 'fp32'"),
        ("dtype", "float64", "unknown dtype 'float64'"),
        ("k_factor", NAN, "got nan"),
        ("k_factor", INF, "got inf"),
        ("k_factor", 1.0, "got 1.0"),
        ("mask_mode", "zero", "unknown mask mode 'zero'"),
        ("search_parallel", 0, "search_parallel must be ≥ 1 (or unset), got 0"),
    ],
)
def test_invalid_settings_raise_naming_the_value(tmp_path, field, value, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        HarnessSettings(cache_dir=tmp_path, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", "auto"),
        ("device", "cpu"),
        ("device", "cuda"),
        ("device", "cuda:1"),  # parsed, not opened: valid on a machine without a GPU
        ("dtype", None),
        ("dtype", "auto"),
        ("dtype", "float32"),
        ("dtype", "bfloat16"),
        ("dtype", "float16"),
        ("k_factor", 1.01),
    ],
)
def test_valid_settings_are_kept_as_given(tmp_path, field, value):
    assert getattr(HarnessSettings(cache_dir=tmp_path, **{field: value}), field) == value


@pytest.mark.parametrize("field", [f for f, v in StageThresholds().as_dict().items() if isinstance(v, float)])
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_stage_thresholds_must_be_finite(field, value):
    """NaN would make every comparison false and inf every threshold unreachable: both are rejected, naming the
    threshold and the value."""
    with pytest.raises(ValueError, match=re.escape(f"{field} must be a finite number, got {value!r}")):
        StageThresholds(**{field: value})


def test_ks_per_search_pass_follow_the_device_unless_set(tmp_path):
    """By default one k a pass on a CPU (batch rows cost about linearly there) and three on an accelerator;
    an explicit setting wins on both."""
    from harness.runner.settings import ACCELERATOR_SEARCH_PARALLEL, search_parallel_for

    default, explicit = HarnessSettings(cache_dir=tmp_path), HarnessSettings(cache_dir=tmp_path, search_parallel=5)
    assert search_parallel_for(default, torch.device("cpu")) == 1
    assert search_parallel_for(default, torch.device("cuda:0")) == ACCELERATOR_SEARCH_PARALLEL == 3
    assert (
        search_parallel_for(explicit, torch.device("cpu"))
        == search_parallel_for(explicit, torch.device("cuda"))
        == 5
    )


def test_a_local_model_path_is_carried_by_the_settings_not_written_into_the_registry(tmp_path):
    from harness.models.registry import get_model_spec

    registered = get_model_spec("llava-1.5-7b")
    settings = HarnessSettings(cache_dir=tmp_path, model_paths=(("llava-1.5-7b", tmp_path / "local"),))
    local = settings.model_spec("llava-1.5-7b")
    assert local.source == str(tmp_path / "local") and local.prompt == registered.prompt
    assert get_model_spec("llava-1.5-7b") == registered  # the registry is as it was
    assert HarnessSettings(cache_dir=tmp_path).model_spec("llava-1.5-7b") == registered


def test_a_model_given_two_local_paths_is_refused(tmp_path):
    with pytest.raises(ValueError, match="names a model twice: tiny-llava, tiny-llava"):
        HarnessSettings(cache_dir=tmp_path, model_paths=(("tiny-llava", tmp_path), ("tiny-llava", tmp_path)))


def test_settings_from_record_names_fill_the_nested_options(tmp_path):
    settings = HarnessSettings.from_options(
        {"alpha": 0.5, "k_max": 16, "stage1_ppl_ratio": 3.0, "device": "cpu", "cache_dir": tmp_path}
    )
    assert settings == HarnessSettings(
        cache_dir=tmp_path,
        k_max=16,
        device="cpu",
        ranking=RankingOptions(alpha=0.5),
        thresholds=StageThresholds(stage1_ppl_ratio=3.0),
    )
    assert HarnessSettings.from_options({"cache_dir": tmp_path}) == HarnessSettings(cache_dir=tmp_path)


def test_fields_recorded_under_another_name_are_given_under_it(tmp_path):
    """`aggregation` sets RankingOptions.aggregate and `clip_model` HarnessSettings.clip, each with the field's
    own value; the field names themselves are unknown, with a hint."""
    clip = ClipSpec(model_name="ViT-B-32", pretrained="openai")
    settings = HarnessSettings.from_options({"aggregation": "max", "clip_model": clip, "cache_dir": tmp_path})
    assert (settings.ranking.aggregate, settings.clip) == ("max", clip)
    with pytest.raises(ValueError, match=r"give 'aggregate' as 'aggregation'; valid: .*\balpha\b"):
        HarnessSettings.from_options({"aggregate": "max"})


def test_every_record_name_sets_the_field_it_names(tmp_path):
    """Each name reaches its own field: the field's default given under its name changes nothing, and a value
    given under it lands there."""
    default = HarnessSettings(cache_dir=tmp_path)
    owners = {HarnessSettings: default, RankingOptions: default.ranking, StageThresholds: default.thresholds}
    for name, (owner, field, _) in tags(HarnessSettings).items():
        value = getattr(owners[owner], field.name)
        assert HarnessSettings.from_options({name: value, "cache_dir": tmp_path}) == default, name
    given = HarnessSettings.from_options({"noise_sigma": 2.5, "text_stage2": "ppl+degenerate", "batch_size": 3})
    assert given.ranking.noise_sigma == 2.5
    assert (given.thresholds.text_stage2, given.batch_size) == ("ppl+degenerate", 3)


def test_unknown_setting_names_are_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'k-max', 'ranking'; valid: .*k_max") as error:
        HarnessSettings.from_options({"k-max": 16, "ranking": RankingOptions()})
    assert all(name in str(error.value) for name in tags(HarnessSettings))


def test_a_bad_value_is_the_dataclass_s_own_error():
    with pytest.raises(ValueError, match=re.escape("CAN alpha must be in [0, 1], got 2.0")):
        HarnessSettings.from_options({"alpha": 2.0})
