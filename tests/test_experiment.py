"""Experiments and HarnessSession: masked neurons in results, what a ranking's cache key covers, the image
set and its chance level, integer k types, remembered load failures and unsupported families."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy
import pytest
import torch
import transformers
from PIL import Image

import harness
import harness.runner.experiment
import harness.runner.session
from harness.core.code_fingerprint import fingerprint_of
from harness.core.errors import ModelUnavailableError, UnknownNameError, UnsupportedModelError
from harness.data.images import scan_image_root
from harness.models.families import FAMILIES, check_family_supported
from harness.models.registry import get_model_spec
from harness.runner.curve import CollapseCurve
from harness.runner.data_sources import load_image_set
from harness.runner.experiment import Experiment
from harness.runner.ranking_cache import cache_key
from harness.runner.session import HarnessSession
from harness.science.ablation import Intervention
from tests.test_tamper_settings import rebuilt

SITE = "lm.down_proj"
RANKING_FIELDS = {
    "code",
    "torch",
    "transformers",
    "checkpoint",
    "weights",
    "dtype",
    "device",
    "site",
    "method",
    "alpha",
    "positions",
    "aggregation",
    "prompt_template",
    "instruction",
    "processor_kwargs",
    "max_new_tokens",
    "data",
    "category",
    "model",
}
PROMPT = "USER: <image>\nProvide a one-sentence caption for the provided image. ASSISTANT:"


# -- masked neurons ---------------------------------------------------------------------------------------------
def test_masked_neurons_are_the_rankings_top_k_capped_at_64(experiment, loaded):
    """(site, layer, channel, score) of the top k neurons in rank order (score descending, ties by lower flat
    index), flat index = layer · width + channel; at most the first 64 are kept; none at k = 0."""
    site = "lm.gate_proj"  # its top 64 span both layers (down_proj's all sit in layer 0): the split is exercised
    width = loaded.text_config.intermediate_size
    flat = experiment.ranking(site, "circle").scores.reshape(-1).tolist()
    assert len(flat) == loaded.text_config.num_hidden_layers * width > 100
    by_rank = sorted(range(len(flat)), key=lambda index: (-flat[index], index))
    expected = [(site, index // width, index % width, flat[index]) for index in by_rank]
    assert experiment.measure(site, "circle", 0).masked_neurons == []
    assert experiment.measure(site, "circle", 3).masked_neurons == expected[:3]
    hundred = experiment.measure(site, "circle", 100).masked_neurons
    assert len(hundred) == 64
    assert hundred == expected[:64]
    assert {layer for _, layer, _, _ in hundred} == {0, 1}


@pytest.mark.parametrize("k", [numpy.int64(2), torch.tensor(0)], ids=["numpy", "tensor"])
def test_measure_records_an_integer_k_as_a_python_int(experiment, k):
    """A numpy or tensor k is measured like the int it holds and recorded as a plain int, so the point can be
    written to the JSON report."""
    point = experiment.measure(SITE, "circle", k)
    assert type(point.k) is int
    assert point.k == int(k)
    assert json.loads(json.dumps(point.to_row()))["k"] == int(k)


# -- ranking inputs ---------------------------------------------------------------------------------------------
def package_source_hash() -> str:
    """The harness's Python sources, hashed here independently: every module but the reporting layer and the
    pytest plugin, by path relative to the package."""
    root = Path(harness.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("reporting", "plugin"):
            continue
        digest.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def test_ranking_inputs_name_everything_a_ranking_depends_on(experiment, loaded, images):
    """The key covers the harness's code, the libraries, the checkpoint's identity and weights, dtype, device,
    site, CAN options, prompt, processor, caption length, category and its images' hashes; source and revision
    are not in it (the checkpoint id and weights say them), nor is anything that only changes measurements."""
    inputs = experiment.ranking_inputs(SITE, "circle")
    assert set(inputs) >= RANKING_FIELDS
    assert not {"source", "revision", "k_max", "stage1_ppl_ratio", "mask_mode", "batch_size"} & set(inputs)
    assert inputs["code"] == package_source_hash()
    assert (inputs["torch"], inputs["transformers"]) == (torch.__version__, transformers.__version__)
    assert inputs["checkpoint"] == "embedded:tiny-llava@v2"
    assert inputs["weights"] == loaded.weights_digest
    assert (inputs["dtype"], inputs["device"]) == ("float32", "cpu")
    assert (inputs["model"], inputs["site"], inputs["category"]) == ("tiny-llava", SITE, "circle")
    assert (inputs["alpha"], inputs["positions"], inputs["aggregation"]) == (1.0, "all", "mean")
    assert inputs["prompt_template"].format(instruction=inputs["instruction"]) == PROMPT
    assert (inputs["max_new_tokens"], inputs["processor_kwargs"]) == (12, {"backend": "pil"})
    files = sorted(p for p in (images.root / "circle").iterdir() if p.suffix == ".png")[:4]  # max_images=4
    assert len(files) == 4
    assert inputs["data"] == {"images": [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]}


def test_the_code_fingerprint_covers_every_module_but_presentation(tmp_path):
    """Editing any module of the package outside reporting and the plugin (image decoding, which the old
    hand-kept list missed; a ranking method added in a new module) changes the fingerprint; editing a report
    module does not."""
    root = Path(shutil.copytree(Path(harness.__file__).parent, tmp_path / "harness"))
    before = fingerprint_of(root)
    assert before == package_source_hash()
    for edited in ("data/images.py", "runner/text_experiment.py", "science/new_method.py"):
        copy = Path(shutil.copytree(root, tmp_path / edited.replace("/", "_")))
        with (copy / edited).open("a") as handle:
            handle.write("\n# edited\n")
        assert fingerprint_of(copy) != before, edited
    for presentation in ("reporting/report.py", "plugin/recorder.py"):
        copy = Path(shutil.copytree(root, tmp_path / presentation.replace("/", "_")))
        with (copy / presentation).open("a") as handle:
            handle.write("\n# edited\n")
        assert fingerprint_of(copy) == before, presentation


def experiment_on(experiment: Experiment, root: Path) -> Experiment:
    """The same loaded model and CLIP on the images under another root (a new probe)."""
    return rebuilt(experiment, images=scan_image_root(root, max_per_category=experiment.settings.max_images))


def test_changing_one_image_changes_its_hash_and_the_ranking_key(experiment, images, tmp_path):
    """A copy of the image set gives the same keys (the location is not an input); re-saving one circle image with
    one pixel changed changes that image's hash and circle's key, and nothing else."""
    root = Path(shutil.copytree(images.root, tmp_path / "images"))
    copy = experiment_on(experiment, root)
    before = copy.ranking_inputs(SITE, "circle")
    assert cache_key(before) == cache_key(experiment.ranking_inputs(SITE, "circle"))

    target = sorted((root / "circle").glob("*.png"))[1]
    old_bytes = target.read_bytes()
    with Image.open(target) as image:
        edited = image.convert("RGB")
    edited.putpixel((0, 0), tuple(255 - c for c in edited.getpixel((0, 0))))
    edited.save(target)
    assert target.read_bytes() != old_bytes

    changed = experiment_on(experiment, root)
    after = changed.ranking_inputs(SITE, "circle")
    hashes_before, hashes_after = before["data"]["images"], after["data"]["images"]
    assert [i for i, (a, b) in enumerate(zip(hashes_before, hashes_after, strict=True)) if a != b] == [1]
    assert hashes_after[1] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert {name for name in before if before[name] != after[name]} == {"data"}
    assert cache_key(after) != cache_key(before)
    assert cache_key(changed.ranking_inputs(SITE, "square")) == cache_key(
        experiment.ranking_inputs(SITE, "square")
    )


# -- the image set and the chance level --------------------------------------------------------------------------
def test_image_set_holds_every_category_whatever_the_selection(settings):
    """Selecting categories checks their names but keeps every category (the others set the chance level)."""
    selected = dataclasses.replace(settings, categories=("square",))
    assert load_image_set(selected).categories == ["circle", "cross", "square", "triangle"]
    assert HarnessSession(selected).images.categories == ["circle", "cross", "square", "triangle"]
    with pytest.raises(UnknownNameError) as error:
        load_image_set(dataclasses.replace(settings, categories=("circle", "hexagon")))
    assert error.value.name == "hexagon"
    assert error.value.valid == ["circle", "cross", "square", "triangle"]


def test_session_uses_a_given_image_set(settings, images):
    """An ImageSet handed to the session (the plugin's, scanned at collection) is used as is, not rescanned."""
    assert HarnessSession(settings, images=images).images is images


def test_a_single_category_has_no_chance_level(experiment, images, tmp_path):
    """With no other category there is nothing to score the captions against: the CLIP chance level is None on
    every point."""
    root = tmp_path / "only-circles"
    shutil.copytree(images.root / "circle", root / "circle")
    alone = experiment_on(experiment, root)
    assert alone.baseline("circle").chance == {"clip": None}
    point = alone.measure(SITE, "circle", 0)
    assert (point.chance, point.baseline_chance) == ({"clip": None}, {"clip": None})


# -- model start-up --------------------------------------------------------------------------------------------
class CountingLoad:
    """Stands in for harness.runner.session.load_model: counts its calls and raises the given error."""

    def __init__(self, error: Exception):
        self.error, self.calls = error, 0

    def __call__(self, spec, **kwargs):
        self.calls += 1
        raise self.error


def test_failed_model_start_is_remembered(settings, monkeypatch):
    """A model whose start failed raises the same error object again without a second load; another model
    still gets its own attempt."""
    load = CountingLoad(ModelUnavailableError("llava-1.5-7b: not on this machine"))
    monkeypatch.setattr(harness.runner.session, "load_model", load)
    session = HarnessSession(settings)
    with pytest.raises(ModelUnavailableError) as first:
        session.experiment("llava-1.5-7b")
    with pytest.raises(ModelUnavailableError) as second:
        session.experiment("llava-1.5-7b")
    assert first.value is load.error
    assert second.value is load.error
    assert load.calls == 1
    with pytest.raises(ModelUnavailableError):
        session.experiment("tiny-llava")
    assert load.calls == 2


@pytest.fixture
def unvalidated_instructblip(monkeypatch):
    """The instructblip family as it was before its captioning path was tested: what a new family starts as."""
    monkeypatch.setitem(
        FAMILIES, "instructblip", dataclasses.replace(FAMILIES["instructblip"], captioning_validated=False)
    )


def test_unsupported_family_is_refused_before_loading(settings, monkeypatch, unvalidated_instructblip):
    """A family whose captioning path is not validated is refused with UnsupportedModelError (remembered like any
    failed start) and its weights are never loaded."""
    load = CountingLoad(AssertionError("the weights of an unsupported model must not be loaded"))
    monkeypatch.setattr(harness.runner.session, "load_model", load)
    session = HarnessSession(settings)
    with pytest.raises(UnsupportedModelError) as first:
        session.experiment("instructblip-vicuna-7b")
    with pytest.raises(UnsupportedModelError) as second:
        session.experiment("instructblip-vicuna-7b")
    assert second.value is first.value
    assert load.calls == 0


def test_check_family_supported(unvalidated_instructblip):
    """An unvalidated family is refused naming the model, its family and the supported ones; others pass."""
    with pytest.raises(UnsupportedModelError) as error:
        check_family_supported(get_model_spec("instructblip-vicuna-7b"))
    message = str(error.value)
    assert message.startswith("instructblip-vicuna-7b: ")
    assert "'instructblip' family" in message
    assert message.endswith("families supported end to end: causal_lm, llava, llava_next")
    assert check_family_supported(get_model_spec("llava-1.5-7b")) is None
    assert check_family_supported(get_model_spec("tiny-llava")) is None


def test_both_paper_families_are_supported_end_to_end():
    assert check_family_supported(get_model_spec("instructblip-vicuna-7b")) is None


# -- threshold search on a real curve ----------------------------------------------------------------------------
def test_search_measures_every_point_it_reports(experiment, unmodified):
    """The adaptive search on the tiny model: every evaluated k is a measured point with the stage the search
    used, and the thresholds are onsets among them."""
    curve = CollapseCurve(experiment.with_settings(k_max=32), SITE, "circle")
    result = curve.search()
    points = curve.points
    assert set(points) == set(result.stages)
    assert all(points[k].stage == stage and points[k].k == k for k, stage in result.stages.items())
    if result.k2 is not None:
        assert points[result.k2].stage == 2 > points[result.k2 - 1].stage


def test_search_rejects_an_unknown_mode(experiment):
    with pytest.raises(ValueError, match="unknown search mode 'bisect'; valid: adaptive, linear"):
        experiment.with_settings(search="bisect")


def test_an_experiment_changes_only_settings_its_shared_state_was_not_computed_with(experiment):
    """Siblings on one model share its baselines: a measurement setting or a ranking may change, a setting the
    baselines were measured with may not (naming it), so no record claims a setting its numbers did not use."""
    other = experiment.with_settings(k_max=7, control_seeds=1)
    assert (other.settings.k_max, other.settings.control_seeds) == (7, 1)
    assert other.baseline("circle") is experiment.baseline("circle")
    assert experiment.with_settings(k_max=7, control_seeds=1) is other
    assert other.options_record("circle")["k_max"] == 7
    with pytest.raises(ValueError, match=r"max_new_tokens cannot change on a loaded experiment"):
        experiment.with_settings(max_new_tokens=3)
    with pytest.raises(ValueError, match=r"clip cannot change"):
        experiment.with_settings(clip=None)


def test_one_float_edited_in_a_local_checkpoint_gives_a_new_key_and_a_recomputed_ranking(
    loaded, settings, tmp_path
):
    """A regression harness must tell an updated checkpoint from the old one: one down_proj weight of a local
    copy multiplied by 3, in place (same size and folder), changes the weights digest, hence the ranking's key,
    and the ranking is computed again rather than read from the cache."""

    folder = Path(shutil.copytree(loaded.path, tmp_path / "local-tiny-llava"))
    cache = dataclasses.replace(settings, cache_dir=tmp_path / "cache", model_paths=(("tiny-llava", folder),))

    def ranking():
        return HarnessSession(cache).experiment("tiny-llava").ranking(SITE, "circle")

    before = ranking()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8:header_end]))
    stored = next(name for name in header if name.endswith("layers.1.mlp.down_proj.weight"))  # saved key layout
    start, _ = header[stored]["data_offsets"]
    parameter = dict(loaded.model.named_parameters())["model.language_model.layers.1.mlp.down_proj.weight"]
    offset = header_end + start + 4 * (3 * parameter.shape[1] + 5)  # element [3, 5], float32 row-major
    value = numpy.frombuffer(bytes(data[offset : offset + 4]), dtype="<f4")[0]
    assert value == parameter[3, 5].item()
    data[offset : offset + 4] = numpy.float32(value * 3).tobytes()
    weights.write_bytes(bytes(data))

    after = ranking()
    assert after.key != before.key
    assert len(list((tmp_path / "cache" / "rankings").glob("*.safetensors"))) == 2
    assert not torch.equal(after.scores, before.scores)


CONTROLS = [Intervention(selection="random", seed=seed) for seed in range(3)] + [
    Intervention(),
    Intervention(ablation="mean"),
]


def assert_same_point(together, alone, tolerance: float = 1e-5) -> None:
    """A point of the batched pass against the same intervention measured alone: identical captions, neurons
    and stage; NLLs, PPLs and CLIP equal up to float rounding (the batched pass has larger batches, so its
    matrix products may round differently)."""
    assert together.intervention == alone.intervention
    assert together.captions == alone.captions
    assert together.masked_neurons == alone.masked_neurons
    assert together.stage == alone.stage
    assert together.metrics.keys() == alone.metrics.keys() and together.chance.keys() == alone.chance.keys()
    for record in ("metrics", "chance"):
        for name, a in getattr(together, record).items():
            b = getattr(alone, record)[name]
            assert (a is None and b is None) or a == pytest.approx(b, abs=tolerance), (record, name)


@pytest.mark.parametrize("site", ["lm.down_proj", "vision.fc2", "lm.down_proj+lm.gate_proj"])
def test_each_k_of_a_search_pass_equals_that_k_measured_alone(experiment, site, unmodified):
    """A k-parallel search pass: several top-k of one site in one batched pass, row r masked with its own k."""
    ks = [1, 5, 33]
    together = experiment.measure_many(site, "circle", [(k, Intervention()) for k in ks])
    for point, k in zip(together, ks, strict=True):
        assert point.k == k
        assert_same_point(point, experiment.measure(site, "circle", k))


@pytest.mark.parametrize("site", ["lm.down_proj", "vision.fc2", "lm.down_proj+lm.gate_proj"])
def test_controls_measured_together_equal_each_measured_alone(experiment, site, unmodified):
    """measure_many puts the zero-ablation controls (and the top-k) into one batched pass with per-row masks;
    each of its points is what measure gives for that intervention alone; the mean ablation is measured alone."""
    together = experiment.measure_many(site, "circle", [(4, control) for control in CONTROLS])
    for point, intervention in zip(together, CONTROLS, strict=True):
        alone = experiment.measure(site, "circle", 4, intervention)
        assert_same_point(point, alone)
        assert point.mask_modes == (["hook"] if intervention.ablation == "zero" else alone.mask_modes)
