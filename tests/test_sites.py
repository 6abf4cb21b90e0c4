"""Sites: resolution against the module tree and the config, neuron addressing, k validation and probing errors."""

from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import numpy
import pytest
import torch
from torch import nn

from harness.core.errors import InvalidKError, SiteResolutionError, UnknownNameError
from harness.models.families import get_family
from harness.models.prompts import encode_prompts
from harness.models.sites import (
    SITES,
    Neuron,
    Site,
    inside_language_model,
    resolve_any_site,
    resolve_site,
    site_size,
    sites_of,
)

# (attribute below each decoder layer, counts output channels?, the width from the language model's config)
HEAD_DIM = lambda c: c.hidden_size // c.num_attention_heads  # noqa: E731  (the tiny models set no head_dim)
SITE_LAYOUT = {
    "lm.gate_proj": ("mlp.gate_proj", True, lambda c: c.intermediate_size),
    "lm.up_proj": ("mlp.up_proj", True, lambda c: c.intermediate_size),
    "lm.down_proj": ("mlp.down_proj", True, lambda c: c.hidden_size),
    "lm.mlp_hidden": ("mlp.down_proj", False, lambda c: c.intermediate_size),
    "lm.o_proj": ("self_attn.o_proj", True, lambda c: c.hidden_size),
    "lm.q_proj": ("self_attn.q_proj", True, lambda c: c.num_attention_heads * HEAD_DIM(c)),
    "lm.k_proj": ("self_attn.k_proj", True, lambda c: c.num_key_value_heads * HEAD_DIM(c)),
    "lm.v_proj": ("self_attn.v_proj", True, lambda c: c.num_key_value_heads * HEAD_DIM(c)),
}
# outside the language model: (the layers on tiny LLaVA, attribute below each, config giving the width, its field)
OTHER_LAYOUT = {
    "vision.fc1": (lambda m: m.model.vision_tower.encoder.layers, "mlp.fc1", "vision_config", "intermediate_size"),
    "vision.fc2": (lambda m: m.model.vision_tower.encoder.layers, "mlp.fc2", "vision_config", "hidden_size"),
    "projector": (lambda m: [m.model.multi_modal_projector.linear_1], "", "text_config", "hidden_size"),
}
QFORMER_SITES = {"qformer.fc1", "qformer.fc2"}  # InstructBLIP only
EXPECTED_SITES = set(SITE_LAYOUT) | set(OTHER_LAYOUT) | QFORMER_SITES


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.language_model.layers


def with_model(loaded, model: nn.Module) -> SimpleNamespace:
    """What resolve_site reads from a LoadedModel, around a different model."""
    return SimpleNamespace(model=model, family=loaded.family, text_config=model.config.text_config)


def test_registered_sites_are_the_ones_described_here():
    assert set(SITES) == EXPECTED_SITES
    assert set(sites_of(get_family("llava"))) == EXPECTED_SITES - QFORMER_SITES
    assert set(sites_of(get_family("instructblip"))) == EXPECTED_SITES


@pytest.mark.parametrize("name", sorted(OTHER_LAYOUT))
def test_vision_and_projector_sites_resolve_to_the_models_modules(name, loaded):
    """Outside the language model too: one Linear per layer (the projector: one layer), widths from the config
    the component has, each layer named by the site."""
    layers_of, path, config_name, field = OTHER_LAYOUT[name]
    width = getattr(getattr(loaded.model.config, config_name), field)
    layers = list(layers_of(loaded.model))
    site = resolve_site(loaded, name)
    assert (site.n_layers, site.width) == (len(layers), width)
    assert all(module is layer.get_submodule(path) for layer, module in zip(layers, site.modules, strict=True))
    assert all(module.out_features == width for module in site.modules)
    assert site.location(0) == (f"{name} (outputs)" if name == "projector" else f"{name} layer 0 ({path} outputs)")


def test_a_site_the_family_lacks_names_the_components_it_has(loaded):
    with pytest.raises(SiteResolutionError, match="llava models have no 'qformer' component; theirs: lm, vision"):
        resolve_site(loaded, "qformer.fc1")


@pytest.mark.parametrize("name", sorted(SITE_LAYOUT))
def test_resolve_site_matches_config_and_modules(name, loaded):
    """Layer count and width come out as the config says, and each layer's module is the model's own Linear."""
    config = loaded.model.config.text_config
    path, output, width_of = SITE_LAYOUT[name]
    site = resolve_site(loaded, name)
    assert site.name == name
    assert site.n_layers == config.num_hidden_layers == len(decoder_layers(loaded.model))
    assert site.width == width_of(config)
    assert site.size == config.num_hidden_layers * width_of(config)
    for layer, module in zip(decoder_layers(loaded.model), site.modules, strict=True):
        assert module is layer.get_submodule(path)
        assert (module.out_features if output else module.in_features) == width_of(config)


def test_unknown_site_names_every_valid_site(loaded):
    """An unknown site raises UnknownNameError naming it and listing every valid site."""
    with pytest.raises(UnknownNameError) as error:
        resolve_site(loaded, "lm.gate")
    message = str(error.value)
    assert "'lm.gate'" in message
    for name in EXPECTED_SITES:
        assert name in message


@pytest.mark.parametrize("k", [-1, "size+1", 1.5, True])
def test_check_k_rejects_invalid_k(k, loaded):
    """Negative, too large, fractional and boolean k raise InvalidKError naming k and the valid range."""
    site = resolve_site(loaded, "lm.up_proj")
    config = loaded.model.config.text_config
    size = config.num_hidden_layers * config.intermediate_size
    k = size + 1 if k == "size+1" else k
    with pytest.raises(InvalidKError) as error:
        site.check_k(k)
    assert f"k={k!r}" in str(error.value)
    assert f"[0, {size}]" in str(error.value)


def test_check_k_accepts_the_bounds(loaded):
    site = resolve_site(loaded, "lm.down_proj")
    config = loaded.model.config.text_config
    size = config.num_hidden_layers * config.hidden_size
    assert site.check_k(0) == 0
    assert site.check_k(size) == size


@pytest.mark.parametrize("name", ["lm.gate_proj", "lm.down_proj"])
def test_neurons_maps_flat_index_to_layer_and_channel(name, loaded):
    """Flat index layer·width + channel maps back to (site, layer, channel)."""
    width = SITE_LAYOUT[name][2](loaded.model.config.text_config)
    cases = [(0, 0), (0, 1), (0, width - 1), (1, 0), (1, 7), (1, width - 1)]
    flat = torch.tensor([layer * width + channel for layer, channel in cases])
    neurons = resolve_site(loaded, name).neurons(flat)
    assert neurons == [Neuron(name, layer, channel) for layer, channel in cases]
    assert all(type(n.layer) is int and type(n.channel) is int for n in neurons)


ANY_SITES = ["lm.down_proj", "lm.mlp_hidden", "projector", "vision.fc1+lm.gate_proj", "lm.all_linear"]


@pytest.mark.parametrize("name", ANY_SITES)
def test_single_and_joint_sites_are_one_protocol_whose_hook_points_tile_the_flat_indices(name, loaded):
    """Every site is a Site: one hook point per part and layer, in that order, on that layer's own Linear, their
    channels laid end to end over 0..size-1 (the scores' flat order); neurons() names each point's last neuron."""
    site = resolve_any_site(loaded, name)
    assert isinstance(site, Site)
    points = site.hook_points
    expected = [
        (part.name, layer, module, part.spec.unit, part.width, part.location(layer))
        for part in site.parts
        for layer, module in enumerate(part.modules)
    ]
    assert [(p.site, p.layer, p.module, p.unit, p.width, p.location) for p in points] == expected
    assert [p.start for p in points] == list(itertools.accumulate((p.width for p in points[:-1]), initial=0))
    assert site.size == sum(p.width for p in points) == math.prod(site.score_shape)
    last = torch.tensor([p.start + p.width - 1 for p in points])
    assert site.neurons(last) == [Neuron(p.site, p.layer, p.width - 1) for p in points]
    assert inside_language_model(site) == all(part.spec.component == "lm" for part in site.parts)


def test_watched_sees_each_hook_points_tensor_and_leaves_no_hook(loaded, images):
    """On down_proj's output rows and its input units (one Linear, two hook points a layer), `watched` hands each
    point's own tensor to the callback, by index into hook_points, passes it on whatever the callback returns
    (here an int), and removes its hooks on exit."""
    site = resolve_any_site(loaded, "lm.down_proj+lm.mlp_hidden")
    seen: dict[int, int] = {}
    with site.watched(lambda index, activation: seen.setdefault(index, activation.shape[-1])), torch.no_grad():
        loaded.model(**encode_prompts(loaded, images.images("circle")[:1]), use_cache=False)
    assert seen == {index: point.width for index, point in enumerate(site.hook_points)}
    assert all(not p.module._forward_hooks and not p.module._forward_pre_hooks for p in site.hook_points)
    assert not inside_language_model(resolve_any_site(loaded, "projector+lm.down_proj"))


def test_layer_count_disagreeing_with_config_is_an_error(loaded):
    """A model missing a decoder layer raises SiteResolutionError naming both counts."""
    model = copy.deepcopy(loaded.model)
    expected = len(decoder_layers(model))
    del decoder_layers(model)[-1]
    with pytest.raises(SiteResolutionError) as error:
        resolve_site(with_model(loaded, model), "lm.gate_proj")
    assert f"{expected - 1} layers" in str(error.value)
    assert f"config says {expected}" in str(error.value)


def test_model_without_language_layers_lists_probed_paths(loaded):
    """A model (here the vision tower) with no decoder layers at any probed path raises SiteResolutionError
    listing every probed path."""
    tower = loaded.model.model.vision_tower
    target = SimpleNamespace(model=tower, family=loaded.family, text_config=loaded.text_config)
    with pytest.raises(SiteResolutionError, match="no language-model layers found") as error:
        resolve_site(target, "lm.gate_proj")
    paths = loaded.family.component("lm").paths
    assert "model.language_model.layers" in paths
    for path in paths:
        assert path in str(error.value)


@pytest.mark.parametrize(
    ("name", "in_delta", "out_delta"),
    [("lm.down_proj", 0, 1), ("lm.mlp_hidden", 1, 0), ("lm.gate_proj", 0, -1)],
)
def test_width_mismatch_names_layer_and_config_field(name, in_delta, out_delta, loaded):
    """A Linear whose width disagrees with the config raises SiteResolutionError naming the layer and field."""
    model = copy.deepcopy(loaded.model)
    path = SITE_LAYOUT[name][0]
    field = {"lm.down_proj": "hidden_size"}.get(name, "intermediate_size")
    parent, attribute = path.rsplit(".", 1)
    mlp = decoder_layers(model)[1].get_submodule(parent)
    old = getattr(mlp, attribute)
    setattr(mlp, attribute, nn.Linear(old.in_features + in_delta, old.out_features + out_delta, bias=False))
    with pytest.raises(SiteResolutionError) as error:
        resolve_site(with_model(loaded, model), name)
    assert "layer 1 " in str(error.value)
    assert field in str(error.value)


def test_missing_linear_is_an_error(loaded):
    """A layer whose module at the site's path is not a Linear raises SiteResolutionError naming the layer."""
    model = copy.deepcopy(loaded.model)
    decoder_layers(model)[0].mlp.up_proj = nn.Identity()
    with pytest.raises(SiteResolutionError, match="layer 0 has no Linear"):
        resolve_site(with_model(loaded, model), "lm.up_proj")


@pytest.fixture(scope="module")
def llava_7b():
    """LLaVA-1.5-7b's architecture on the meta device: full-size modules, no weights."""
    # imported here, after `harness` (which repairs the torchvision import transformers relies on)
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        text_config=LlamaConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            vocab_size=32064,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return SimpleNamespace(model=model, family=get_family("llava"), text_config=config.text_config)


@pytest.fixture(scope="module")
def instructblip_7b():
    """InstructBLIP-Vicuna-7b's architecture on the meta device: EVA ViT-g, Q-Former, Vicuna-7b; no weights."""
    from transformers import (
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        LlamaConfig,
    )

    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(
            hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16, image_size=224,
            patch_size=14,
        ).to_dict(),
        qformer_config=InstructBlipQFormerConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            encoder_hidden_size=1408, vocab_size=30523,
        ).to_dict(),
        text_config=LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            vocab_size=32001,
        ).to_dict(),
        num_query_tokens=32,
    )  # fmt: skip
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(config)
    return SimpleNamespace(model=model, family=get_family("instructblip"), text_config=config.text_config)


FULL_SIZE = {  # site: (layers, width), as the two models' published configs say
    "lm.gate_proj": (32, 11008), "lm.up_proj": (32, 11008), "lm.mlp_hidden": (32, 11008),
    "lm.down_proj": (32, 4096), "lm.o_proj": (32, 4096), "projector": (1, 4096),
}  # fmt: skip
LLAVA_VISION = {"vision.fc1": (24, 4096), "vision.fc2": (24, 1024)}  # CLIP ViT-L/14-336
INSTRUCTBLIP_VISION = {  # EVA ViT-g/14 and the BERT-base-sized Q-Former
    "vision.fc1": (39, 6144), "vision.fc2": (39, 1408), "qformer.fc1": (12, 3072), "qformer.fc2": (12, 768),
}  # fmt: skip


@pytest.mark.parametrize(("name", "shape"), {**FULL_SIZE, **LLAVA_VISION}.items())
def test_full_size_llava_sites_resolve(name, shape, llava_7b):
    """Every site of the real LLaVA-1.5-7b architecture resolves with its published layer count and width."""
    site = resolve_site(llava_7b, name)
    assert (site.n_layers, site.width) == shape
    assert site.size == shape[0] * shape[1]
    assert all(module.weight.device.type == "meta" for module in site.modules)


@pytest.mark.parametrize(("name", "shape"), {**FULL_SIZE, **INSTRUCTBLIP_VISION}.items())
def test_full_size_instructblip_sites_resolve(name, shape, instructblip_7b):
    """Every site of the real InstructBLIP-Vicuna-7b architecture resolves with its published layer count and
    width; its sizes from the config alone (what collection uses) agree."""
    site = resolve_site(instructblip_7b, name)
    assert (site.n_layers, site.width) == shape
    assert site_size(name, instructblip_7b.model.config, instructblip_7b.family) == site.size
    assert all(module.weight.device.type == "meta" for module in site.modules)


@pytest.mark.parametrize(
    "k",
    [numpy.int64(3), numpy.int32(3), numpy.uint8(3), torch.tensor(3), torch.tensor(3, dtype=torch.int32)],
    ids=["int64", "int32", "uint8", "tensor", "tensor-int32"],
)
def test_check_k_accepts_integer_types_and_returns_a_python_int(k, loaded):
    """numpy integers and 0-d integer tensors are valid k; the value comes back as a plain int."""
    value = resolve_site(loaded, "lm.down_proj").check_k(k)
    assert type(value) is int
    assert value == 3


@pytest.mark.parametrize(
    "k",
    [False, 2.0, numpy.float64(2.0), torch.tensor(2.0), numpy.True_, torch.tensor(True), "2", None],
    ids=["False", "float", "numpy-float", "float-tensor", "numpy-bool", "bool-tensor", "str", "None"],
)
def test_check_k_rejects_bools_fractions_and_non_numbers(k, loaded):
    """Booleans (Python, numpy or tensor), floats (even integral ones) and non-numbers raise InvalidKError."""
    with pytest.raises(InvalidKError) as error:
        resolve_site(loaded, "lm.down_proj").check_k(k)
    assert f"k={k!r}" in str(error.value)


def test_check_k_bounds_apply_to_numpy_integers(loaded):
    config = loaded.model.config.text_config
    size = config.num_hidden_layers * config.hidden_size
    site = resolve_site(loaded, "lm.down_proj")
    assert site.check_k(numpy.int64(size)) == size
    for k in (numpy.int64(size + 1), numpy.int64(-1), torch.tensor(-1)):
        with pytest.raises(InvalidKError, match=rf"\[0, {size}\]"):
            site.check_k(k)


def test_transformers_4_llava_layout_is_no_longer_probed(loaded):
    """Only transformers 5's `model.language_model.layers` is a LLaVA language model: a module laid out the 4.x
    way (`language_model.model.layers`) has no language-model layers."""
    inner = nn.Module()
    inner.layers = decoder_layers(loaded.model)
    language_model = nn.Module()
    language_model.model = inner
    old_style = nn.Module()
    old_style.language_model = language_model
    target = SimpleNamespace(model=old_style, family=loaded.family, text_config=loaded.text_config)
    assert loaded.family.component("lm").paths == ("model.language_model.layers",)
    with pytest.raises(SiteResolutionError, match="no language-model layers"):
        resolve_site(target, "lm.down_proj")
