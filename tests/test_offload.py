"""Models larger than one device: accelerate's device map, with layers offloaded to disk on this CPU machine.
Where the layers live changes no number and no cache key."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from harness.core.errors import MaskError
from harness.core.placement import max_memory_argument, parse_device_map, parse_max_memory
from harness.models.devices import map_input_device, mapped_accelerators
from harness.models.masking import mask_neurons
from harness.plugin.options import OPTIONS, given_fields
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings

# tiny-llava's second language layer lives on disk: its weights are meta tensors, loaded by accelerate's hooks
ONE_LAYER_ON_DISK = json.dumps(
    {
        "model.vision_tower": "cpu",
        "model.multi_modal_projector": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.layers.0": "cpu",
        "model.language_model.layers.1": "disk",
        "model.language_model.norm": "cpu",
        "lm_head": "cpu",
    }
)
SITE = "lm.down_proj"


@pytest.fixture(scope="module")
def offloaded(settings, tmp_path_factory):
    """tiny-llava under the session's settings but one layer on disk, in a cache of its own, so that its ranking
    is computed afresh rather than read from the in-memory model's."""
    placed = replace(
        settings, cache_dir=tmp_path_factory.mktemp("offload-cache"), device="auto", device_map=ONE_LAYER_ON_DISK
    )
    return HarnessSession(placed).experiment("tiny-llava")


def test_the_layer_is_really_on_disk(offloaded):
    loaded = offloaded.loaded
    assert loaded.placement["model.language_model.layers.1"] == "disk"
    down_proj = offloaded.site(SITE).modules[1]
    assert down_proj.weight.device.type == "meta"
    assert loaded.device == torch.device("cpu")
    offload_folder = loaded.offload_folder
    assert offload_folder is not None and offload_folder.is_relative_to(offloaded.settings.cache_dir)


def test_cache_key_and_records_do_not_depend_on_where_layers_live(experiment, offloaded):
    assert offloaded.ranking_inputs(SITE, "circle") == experiment.ranking_inputs(SITE, "circle")
    assert offloaded.options_record("circle") == experiment.options_record("circle")


def test_ranking_is_the_in_memory_models(experiment, offloaded):
    in_memory, on_disk = experiment.ranking(SITE, "circle"), offloaded.ranking(SITE, "circle")
    torch.testing.assert_close(on_disk.scores, in_memory.scores, rtol=1e-5, atol=1e-7)
    assert torch.equal(on_disk.top_k(8), in_memory.top_k(8))


@pytest.mark.parametrize("k", [0, 3, 40])
def test_masked_measurement_is_the_in_memory_models(experiment, offloaded, k):
    in_memory, on_disk = experiment.measure(SITE, "circle", k), offloaded.measure(SITE, "circle", k)
    assert on_disk.captions == in_memory.captions
    assert on_disk.metrics["log10_ppl"] == pytest.approx(in_memory.metrics["log10_ppl"], abs=1e-5)
    assert on_disk.metrics["clip"] == pytest.approx(in_memory.metrics["clip"], abs=1e-4)
    assert on_disk.stage == in_memory.stage
    offloaded.loaded.assert_unmodified()


def test_offloaded_layers_are_masked_by_hooks(offloaded):
    """k = 40 reaches both layers (the site is 2 layers × 32): the in-memory one is edited, the one on disk
    hooked."""
    site = offloaded.site(SITE)
    both_layers = torch.tensor([0, site.width])
    mask = mask_neurons(site, both_layers, mode="auto")
    assert mask.modes == {"weight", "hook"}
    with pytest.raises(
        MaskError, match=r"lm\.down_proj layer 1 \(mlp\.down_proj outputs\): .*offloaded.*use mask mode hook"
    ):
        mask_neurons(site, both_layers, mode="weight")


def test_settings_refuse_a_bad_placement_before_anything_loads(settings):
    with pytest.raises(ValueError, match=r"'everywhere'.*auto, balanced, balanced_low_0, sequential"):
        replace(settings, device="auto", device_map="everywhere")
    with pytest.raises(ValueError, match=r"not valid JSON"):
        replace(settings, device="auto", device_map="{model: 0}")
    with pytest.raises(ValueError, match=r"'lm_head' is placed on 'gpu'"):
        replace(settings, device="auto", device_map='{"lm_head": "gpu"}')
    with pytest.raises(ValueError, match=r"max_memory needs a device_map"):
        replace(settings, device="auto", max_memory=(("cpu", "1GiB"),))
    with pytest.raises(ValueError, match=r"max memory 'cpu=lots'"):
        replace(settings, device="auto", device_map="auto", max_memory=(("cpu", "lots"),))
    with pytest.raises(ValueError, match=r"device 'cpu' and device_map 'auto'"):
        replace(settings, device_map="auto")


@pytest.mark.parametrize(
    "text, budget",
    [
        ("0=70GiB,cpu=200GiB", {0: "70GiB", "cpu": "200GiB"}),
        ("cpu = 512MB", {"cpu": "512MB"}),
        ("1=1000", {1: "1000"}),
        ("cuda:1=2GiB,xpu:0=1GiB", {1: "2GiB", "xpu:0": "1GiB"}),
    ],
)
def test_memory_budget_parses_as_accelerate_takes_it(text, budget):
    assert max_memory_argument(parse_max_memory(text)) == budget


@pytest.mark.parametrize(
    "text, named",
    [("cpu:20GiB", "'cpu:20GiB'"), ("gpu=1GiB", "'gpu=1GiB'"), ("cpu=lots", "'cpu=lots'"), (",", "','")],
)
def test_memory_budget_names_what_is_wrong(text, named):
    with pytest.raises(ValueError, match=named):
        parse_max_memory(text)


def test_strategies_pass_through_and_maps_parse():
    assert parse_device_map("balanced") == "balanced"
    assert parse_device_map('{"model": 0, "lm_head": "cuda:1"}') == {"model": 0, "lm_head": "cuda:1"}


def test_a_map_computes_first_on_its_first_accelerator():
    """Known before loading, it decides the auto dtype: the first device of the map that is neither cpu nor
    disk, a GPU index meaning that CUDA device."""
    mapping = parse_device_map('{"model.embed_tokens": "cpu", "model.layers": 1, "lm_head": "cuda:0"}')
    assert mapped_accelerators(mapping) == ["cuda:1", "cuda:0"]
    assert map_input_device(mapping) == torch.device("cuda", 1)
    assert map_input_device(parse_device_map('{"model": "cpu", "lm_head": "disk"}')) == torch.device("cpu")
    assert mapped_accelerators("auto") == []
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert map_input_device("auto") == expected


def test_the_command_line_values_become_the_settings_accelerate_gets(tmp_path):
    """As the plugin builds them: each flag's value through its option's type into the settings field."""
    flags = {option.flag: option for option in OPTIONS}
    given = {"--can-device-map": '{"model": 0, "lm_head": "disk"}', "--can-max-memory": "cuda:0=1GiB, cpu=2GiB"}
    values = {flags[flag].dest: (flags[flag].type or str)(text) for flag, text in given.items()}
    settings = HarnessSettings(cache_dir=tmp_path, **given_fields(values, HarnessSettings))
    assert settings.device_map_argument == {"model": 0, "lm_head": "disk"}
    assert max_memory_argument(settings.max_memory) == {0: "1GiB", "cpu": "2GiB"}


def test_a_text_model_spread_by_accelerate_within_a_budget_measures_the_same(settings, session, tmp_path):
    """`auto` within 250 kB of CPU memory: the embeddings stay in memory, the decoder layers go to disk."""
    budget = replace(
        settings, cache_dir=tmp_path, device="auto", device_map="auto", max_memory=(("cpu", "250KB"),)
    )
    spread = HarnessSession(budget).experiment("tiny-llama")
    assert spread.loaded.placement["model.embed_tokens"] == "cpu"
    assert spread.loaded.placement["model.layers"] == "disk"
    in_memory = session.experiment("tiny-llama")
    for k in (0, 5, 60):
        on_disk, alone = spread.measure(SITE, "paragraph", k), in_memory.measure(SITE, "paragraph", k)
        assert on_disk.metrics["log10_ppl"] == pytest.approx(alone.metrics["log10_ppl"], abs=1e-5)
        assert on_disk.captions == alone.captions
        assert on_disk.masked_neurons == alone.masked_neurons
