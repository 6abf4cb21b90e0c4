"""Fault-and-tamper suite: what a result depends on is derived from the settings' declarations, never listed.

Replays the defect where the ranking cache key, the record stamped on points and the baseline's compared settings
were three hand-kept lists that disagreed (a text model's baseline recorded at 512 text tokens compared at 256 as
if nothing changed; curves searched to another k_max or on other images passing). Every field tagged as changing
results (harness.core.recorded) is walked here: changing it changes the record on every point and makes a
baseline say "measured with other settings", naming it; a field that changes rankings also changes the ranking
cache key, one that changes only measurements does not (rankings never read it). The walk is derived from the
tags, so a field added later is a new case here, failing until the table below says how to change it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from harness.core.recorded import MEASUREMENT, RANKING, RESULTS, affects, recorded, tags
from harness.data.images import scan_image_root
from harness.data.texts import BUILTIN_CATEGORY, TextSet
from harness.models.registry import ClipSpec, ModelSpec
from harness.runner.baseline import BaselineFile, Tolerances, check_against, entry_of
from harness.runner.data_sources import DataSources
from harness.runner.experiment import Experiment
from harness.runner.ranking_cache import RankingCache, cache_key
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.ranking import importance
from harness.science.ranking_methods import get_ranking_method, ranking_method_names
from harness.science.ranking_options import RankingOptions
from harness.science.stages import StageThresholds

SITE, CATEGORY, TEXT = "lm.down_proj", "circle", BUILTIN_CATEGORY
METRICS = {
    "k1": 2, "k2": 4, "baselines": {"log10_ppl": 0.1, "clip": 80.0}, "at_k2": {"log10_ppl": 1.6, "clip": 10.0},
}  # fmt: skip

# A valid other value for every field that changes results, by record name. A field tagged later without a line
# here fails `test_every_result_field_has_a_changed_value`.
CHANGED: dict[str, object] = {
    # the model spec
    "family": "llava_next",
    "model_class": "LlavaNextForConditionalGeneration",
    "processor_class": "LlavaProcessor",
    "processor_kwargs": {"backend": "torchvision"},
    "prompt_template": "Q: <image>\n{instruction} A:",
    "instruction": "Describe the image.",
    # resolved when the model loads: the loaded model's (or CLIP scorer's) value changes
    "device": torch.device("meta"),
    "dtype": torch.bfloat16,
    "clip_model": ClipSpec("ViT-B-32", "openai"),
    # settings
    "text_max_tokens": 256,
    "text_window": 20,
    "max_new_tokens": 5,
    "answer_max_tokens": 3,
    "mask_mode": "hook",
    "k_max": 16,
    "k_factor": 3.0,
    "search": "linear",
    "search_parallel": 2,
    "control_seeds": 1,
    # ranking options
    "method": "activation",
    "alpha": 0.5,
    "positions": "scored",
    "aggregation": "max",
    "noise_sigma": 2.0,
    "noise_samples": 7,
    "seed": 3,
    # stage thresholds
    "stage1_ppl_ratio": 3.0,
    "stage1_clip_fraction": 0.8,
    "stage1_accuracy_fraction": 0.8,
    "stage2_log10_ppl_ratio": 2.0,
    "stage2_degenerate_rate": 0.6,
    "text_stage2": "ppl+degenerate",
}


# records that follow from another: the search's ks per pass default by the device (1 on a CPU); the options a
# ranking records are those its method reads (activation reads no α)
FOLLOWING = {"device": {"search_parallel"}, "method": {"alpha"}}


def result_fields() -> dict[str, tuple[type, dataclasses.Field, object]]:
    """Every leaf field of the model spec and the settings whose tag says it changes results, by record name."""
    fields = {**tags(ModelSpec), **tags(HarnessSettings)}
    return {name: entry for name, entry in fields.items() if entry[2].scope in RESULTS}


@pytest.fixture(scope="module")
def text_base(cache_dir) -> Experiment:
    settings = HarnessSettings(cache_dir=cache_dir, max_new_tokens=6, batch_size=2, device="cpu", dtype="float32")
    return HarnessSession(settings).experiment("tiny-llama")


@pytest.fixture
def bases(experiment, text_base, session) -> dict[str, Experiment]:
    """An experiment through each probe: the tiny VLM captioning and answering questions, a tiny text model."""
    return {"captioning": experiment, "continuation": text_base, "vqa": session.experiment("tiny-llava", "vqa")}


def base_for(name: str, bases: dict[str, Experiment]) -> Experiment:
    """The experiment a field is read by: through the probe its tag names (the captioning one when it names none),
    ranked by a method that reads the field."""
    _, field, tag = result_fields()[name]
    base = bases[tag.kinds[0] if tag.kinds else "captioning"]
    if tag.per_method and field.name not in base.settings.ranking.method_declaration.reads:
        reader = next(m for m in ranking_method_names() if field.name in get_ranking_method(m).reads)
        base = rebuilt(base, settings=replace_field(base.settings, "method", reader))
    return base


def replace_field(settings: HarnessSettings, name: str, value: object) -> HarnessSettings:
    """`settings` with the field recorded as `name` set to `value`, wherever it is nested."""
    owner, field, _ = tags(HarnessSettings)[name]
    if owner is RankingOptions:
        return dataclasses.replace(settings, ranking=dataclasses.replace(settings.ranking, **{field.name: value}))
    if owner is StageThresholds:
        thresholds = dataclasses.replace(settings.thresholds, **{field.name: value})
        return dataclasses.replace(settings, thresholds=thresholds)
    return dataclasses.replace(settings, **{field.name: value})


class FixedClip:
    """A session whose CLIP scorer is the given one (a probe asks its session for it)."""

    def __init__(self, clip):
        self._clip = clip

    def clip(self, spec, device):
        return self._clip


def rebuilt(experiment, *, loaded=None, settings=None, clip=None, images=None, texts=None) -> Experiment:
    """An experiment through a new probe of the same kind, with some of its parts replaced: nothing it computed
    before is reused."""
    probe = experiment.probe
    loaded, settings = loaded or probe.loaded, settings or experiment.settings
    sources = probe.sources
    if images is not None or texts is not None:
        sources = DataSources(settings, images=images, texts=texts)
    session = FixedClip(clip or getattr(probe, "clip", None))
    return Experiment(type(probe)(loaded, settings, sources, session), settings, experiment.rankings)


def changed(experiment, name: str):
    """`experiment` with the field recorded as `name` changed to its CHANGED value."""
    owner, field, _ = result_fields()[name]
    value = CHANGED[name]
    if owner is ModelSpec:
        spec = dataclasses.replace(experiment.loaded.spec, **{field.name: value})
        return rebuilt(experiment, loaded=dataclasses.replace(experiment.loaded, spec=spec))
    if name in ("device", "dtype"):  # resolved: recorded as the loaded model has it
        return rebuilt(experiment, loaded=dataclasses.replace(experiment.loaded, **{name: value}))
    if name == "clip_model":  # resolved: recorded as the CLIP scorer in use has it
        return rebuilt(experiment, clip=SimpleNamespace(spec=value))
    return rebuilt(experiment, settings=replace_field(experiment.settings, name, value))


def baseline_entry(experiment, category: str) -> dict:
    """The baseline entry of a curve measured by `experiment` (its values made up: only the settings matter)."""
    row = {**METRICS, "options": experiment.options_record(category), "provenance": experiment.provenance_record()}
    return entry_of(row)


def test_every_result_field_has_a_changed_value():
    assert set(CHANGED) == set(result_fields())


def test_every_settings_field_is_tagged():
    """The record cannot silently leave a field out: every field of the four declarations has a tag."""
    for owner in (HarnessSettings, RankingOptions, StageThresholds, ModelSpec):
        assert tags(owner)

    @dataclasses.dataclass(frozen=True)
    class Extended:
        known: int = dataclasses.field(default=1, metadata=affects(RANKING))
        forgotten: int = 2

    with pytest.raises(TypeError, match=r"Extended.forgotten has no `affects` tag"):
        recorded(Extended(), RESULTS)


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_changing_a_result_setting_changes_the_record_and_fails_the_baseline(name, bases, tmp_path):
    base = base_for(name, bases)
    category = TEXT if base.probe.data == "texts" else CATEGORY
    other = changed(base, name)
    scope = result_fields()[name][2].scope

    before, after = base.options_record(category), other.options_record(category)
    differing = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert differing == {name} | FOLLOWING.get(name, set())

    file = BaselineFile(tmp_path / "baseline.json")  # through a real file: JSON must not blur any value
    file.record("curve", baseline_entry(base, category))
    stored = file.read()["curve"]
    assert check_against(stored, baseline_entry(base, category), "curve", file.path, Tolerances()) is None
    message = check_against(stored, baseline_entry(other, category), "curve", file.path, Tolerances())
    assert message is not None and "was measured with other settings" in message
    assert f"{name}: baseline " in message

    key_before, key_after = (cache_key(e.ranking_inputs(SITE, category)) for e in (base, other))
    if scope == RANKING:
        assert key_after != key_before
    else:
        assert scope == MEASUREMENT and key_after == key_before


MEASUREMENT_FIELDS = sorted(
    name for name, (_, _, tag) in result_fields().items() if tag.scope == MEASUREMENT and not tag.per_session
)


@pytest.mark.parametrize("name", MEASUREMENT_FIELDS)
def test_a_measurement_setting_never_reaches_a_ranking(name, bases, tmp_path):
    """Why a measurement setting may stay out of the cache key: the ranking computed afresh (an empty cache, a
    new model state: captions or text windows recomputed too) is bit for bit the same with it changed. (The CLIP
    model, fixed for a session, scores captions but never makes them.)"""
    base = base_for(name, bases)
    category = TEXT if base.probe.data == "texts" else CATEGORY

    def fresh_scores(source, folder: str) -> torch.Tensor:
        alone = rebuilt(source)  # a new probe: nothing computed before is reused
        alone.rankings = RankingCache(tmp_path / folder)
        return alone.ranking(SITE, category).scores

    assert torch.equal(fresh_scores(changed(base, name), "changed"), fresh_scores(base, "base"))


def test_settings_of_another_kind_or_method_change_nothing(experiment, text_base):
    """A setting only text models read leaves a VLM's key and record alone, and the other way round; so does a
    ranking option the method does not read (α under PCICN)."""
    for base, names in (
        (experiment, ("text_max_tokens", "text_window", "text_stage2")),
        (text_base, ("clip_model", "stage1_clip_fraction")),
    ):
        category = TEXT if base is text_base else CATEGORY
        for name in names:
            other = changed(base, name)
            assert other.options_record(category) == base.options_record(category), name
            assert other.ranking_inputs(SITE, category) == base.ranking_inputs(SITE, category), name
    pcicn = rebuilt(experiment, settings=replace_field(experiment.settings, "method", "pcicn"))
    assert changed(pcicn, "alpha").ranking_inputs(SITE, CATEGORY) == pcicn.ranking_inputs(SITE, CATEGORY)


def test_other_images_change_the_key_and_fail_the_baseline(experiment, images, tmp_path):
    """One pixel of one image re-saved: the data digest on every point, the ranking key and the baseline all see
    it; a copy of the same images elsewhere is the same data."""
    root = Path(shutil.copytree(images.root, tmp_path / "images"))
    same = rebuilt(experiment, images=scan_image_root(root, max_per_category=experiment.settings.max_images))
    assert same.options_record(CATEGORY) == experiment.options_record(CATEGORY)
    target = sorted((root / CATEGORY).glob("*.png"))[0]
    with Image.open(target) as image:
        edited = image.convert("RGB")
    edited.putpixel((0, 0), tuple(255 - c for c in edited.getpixel((0, 0))))
    edited.save(target)
    other = rebuilt(experiment, images=scan_image_root(root, max_per_category=experiment.settings.max_images))
    assert (
        other.ranking_inputs(SITE, CATEGORY)["data"]["images"][0]
        == hashlib.sha256(target.read_bytes()).hexdigest()
    )
    assert cache_key(other.ranking_inputs(SITE, CATEGORY)) != cache_key(experiment.ranking_inputs(SITE, CATEGORY))
    message = check_against(
        baseline_entry(experiment, CATEGORY), baseline_entry(other, CATEGORY), "c", tmp_path, Tolerances()
    )
    assert "measured with other settings (data: baseline " in message


def test_another_text_changes_the_key_and_fails_the_baseline(text_base, tmp_path):
    text = text_base.probe.texts.text(TEXT)
    other = rebuilt(text_base, texts=TextSet({TEXT: text.replace("the", "a", 1)}))
    assert other.ranking_inputs(SITE, TEXT)["data"] != text_base.ranking_inputs(SITE, TEXT)["data"]
    assert cache_key(other.ranking_inputs(SITE, TEXT)) != cache_key(text_base.ranking_inputs(SITE, TEXT))
    message = check_against(
        baseline_entry(text_base, TEXT), baseline_entry(other, TEXT), "c", tmp_path, Tolerances()
    )
    assert "measured with other settings (data: baseline " in message


# -- the ranking options' tags against what each method computes -----------------------------------------------
SMALL_PCICN = {"noise_samples": 3}  # a few noisy passes are enough to see the seed, σ and K matter
OPTION_VALUES = {"alpha": 0.5, "positions": "scored", "aggregate": "max", "noise_sigma": 2.0, "noise_samples": 4,
                 "seed": 3}  # fmt: skip


@pytest.mark.parametrize("method", ranking_method_names())
def test_a_method_reads_exactly_the_ranking_options_tagged_for_it(method, experiment, unmodified):
    """Each ranking option a method's tag does not name leaves its scores bit for bit as they were; each one it
    names changes them (so the cache key holds exactly what the scores depend on)."""
    base = RankingOptions(method=method, **(SMALL_PCICN if method == "pcicn" else {}))
    site = experiment.site(SITE)
    data = experiment.ranking_data(CATEGORY)

    def scores(options: RankingOptions) -> torch.Tensor:
        return importance(experiment.loaded, site, *data, options=options, batch_size=4)

    reference = scores(base)
    used = set(base.used()) - {"method"}
    for record_name, (_, field, _) in tags(RankingOptions).items():
        if field.name == "method":
            continue
        value = OPTION_VALUES[field.name]
        if field.name == "aggregate":  # the other aggregation than the method's own
            value = "mean" if base.aggregation == "max" else "max"
        other = scores(dataclasses.replace(base, **{field.name: value}))
        if record_name in used:
            assert not torch.equal(other, reference), f"{method} is tagged as reading {field.name}"
        else:
            assert torch.equal(other, reference), f"{method} reads {field.name}, which its tag leaves out"
