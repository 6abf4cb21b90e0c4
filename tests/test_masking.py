"""NeuronMask: weight and hook masks agree, zero exactly the requested neurons, restore the model bit for bit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import harness.models.masking
from harness.core.errors import MaskError
from harness.models.captioning import generate_captions, teacher_forced_batch
from harness.models.masking import MaskPlan, NeuronMask
from harness.models.prompts import encode_prompts
from harness.models.sites import SITES, JointSite, ResolvedSite, resolve_site, sites_of

MAX_NEW_TOKENS = 8
LM_SITES = [name for name, spec in SITES.items() if spec.component == "lm"]
OUTPUT_SITES = [name for name in LM_SITES if SITES[name].unit == "output"]
OTHER_LLAVA_SITES = ["vision.fc1", "vision.fc2", "projector"]


class Boom(Exception):
    """Raised inside mask bodies by the tests."""


@pytest.fixture(scope="module")
def sites(loaded):
    return {name: resolve_site(loaded, name) for name in sites_of(loaded.family)}


@pytest.fixture(scope="module")
def caption_images(images):
    return images.images("circle")


@pytest.fixture(scope="module")
def scored(loaded, caption_images):
    """prompt + unmasked-caption batch for teacher-forced forwards."""
    captions = generate_captions(loaded, caption_images, max_new_tokens=MAX_NEW_TOKENS, batch_size=4)
    return teacher_forced_batch(loaded, caption_images, captions)


@pytest.fixture(scope="module")
def prompt(loaded, caption_images):
    """A one-image prompt: the cheapest forward that goes through every language layer."""
    return encode_prompts(loaded, caption_images[:1])


@pytest.fixture(scope="module")
def pristine(loaded, prompt):
    """State dict and hook registry of the model as loaded (after one forward, which installs HF's own hooks)."""
    forward(loaded, prompt)
    return clone_state(loaded.model), hook_registry(loaded.model)


@torch.no_grad()
def forward(loaded, inputs) -> torch.Tensor:
    return loaded.model(**inputs, use_cache=False).logits


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def hook_registry(model: nn.Module) -> dict[str, tuple[list[int], list[int]]]:
    return {
        name: (list(module._forward_hooks), list(module._forward_pre_hooks))
        for name, module in model.named_modules()
    }


def assert_pristine(loaded, sites, pristine) -> None:
    """Every state-dict entry equal bit for bit to the original, and no hook added or left behind."""
    state, hooks = pristine
    now = loaded.model.state_dict()
    assert now.keys() == state.keys()
    bit_views = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    for name, original in state.items():
        value = now[name]
        assert value.dtype == original.dtype and value.shape == original.shape, name
        assert torch.equal(value, original), name
        if value.is_floating_point():
            view = bit_views[value.element_size()]
            assert torch.equal(value.view(view), original.view(view)), name
    assert hook_registry(loaded.model) == hooks
    for site in sites.values():
        for module in site.modules:
            assert not module._forward_hooks and not module._forward_pre_hooks


def spread_indices(n_layers: int, width: int) -> list[int]:
    """A seeded random quarter of the site's neurons (so a mix across every layer), plus one duplicate."""
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randperm(n_layers * width, generator=generator)[: n_layers * width // 4].tolist()
    return [*chosen, chosen[0]]


def site_geometry(loaded, name: str) -> tuple[int, int]:
    """(layers, channels) from the config, independently of harness.models.sites."""
    config = loaded.model.config.text_config
    head_dim = config.hidden_size // config.num_attention_heads
    width = {
        "lm.down_proj": config.hidden_size,
        "lm.o_proj": config.hidden_size,
        "lm.q_proj": config.num_attention_heads * head_dim,
        "lm.k_proj": config.num_key_value_heads * head_dim,
        "lm.v_proj": config.num_key_value_heads * head_dim,
    }.get(name, config.intermediate_size)
    return config.num_hidden_layers, width


@pytest.mark.parametrize("name", LM_SITES + OTHER_LLAVA_SITES)
def test_weight_and_hook_masks_give_identical_logits_and_captions(
    name, loaded, sites, scored, caption_images, unmodified
):
    """Both mechanisms give bit-identical teacher-forced logits and the same greedy captions; the masked logits
    differ from the unmasked model's (the mask has an effect)."""
    site = sites[name]
    indices = spread_indices(site.n_layers, site.width)
    unmasked = forward(loaded, scored.inputs)
    results = {}
    for mode in ("weight", "hook"):
        with NeuronMask(site, indices, mode=mode) as mask:
            assert mask.modes == {mode}
            logits = forward(loaded, scored.inputs)
            captions = generate_captions(loaded, caption_images, max_new_tokens=MAX_NEW_TOKENS, batch_size=4)
        results[mode] = logits, [caption.token_ids for caption in captions]
    assert torch.equal(results["weight"][0], results["hook"][0])
    assert results["weight"][1] == results["hook"][1]
    assert not torch.equal(results["weight"][0], unmasked)


def layer0_channels(indices: list[int], width: int) -> torch.Tensor:
    return torch.tensor(sorted({i for i in indices if i < width}))


def capture(module: nn.Module, inputs_or_outputs: str, sink: list) -> torch.utils.hooks.RemovableHandle:
    if inputs_or_outputs == "outputs":
        return module.register_forward_hook(lambda m, args, output: sink.append(output.detach().clone()))
    return module.register_forward_pre_hook(lambda m, args: sink.append(args[0].detach().clone()))


@pytest.mark.parametrize("mode", ["weight", "hook"])
@pytest.mark.parametrize("name", OUTPUT_SITES)
def test_output_mask_zeroes_exactly_the_masked_channels(name, mode, loaded, sites, prompt, unmodified):
    """At layer 0 (whose input the mask cannot change) the masked output channels are exactly 0 and every other
    channel equals the unmasked run's, seen by a hook of the test's own registered inside the mask."""
    site = sites[name]
    n_layers, width = site_geometry(loaded, name)
    indices = spread_indices(n_layers, width)
    masked = layer0_channels(indices, width)
    kept = torch.tensor([c for c in range(width) if c not in set(masked.tolist())])
    module = loaded.model.model.language_model.layers[0].get_submodule(site.spec.module)
    reference, seen = [], []
    handle = capture(module, "outputs", reference)
    forward(loaded, prompt)
    handle.remove()
    with NeuronMask(site, indices, mode=mode):
        handle = capture(module, "outputs", seen)
        try:
            forward(loaded, prompt)
        finally:
            handle.remove()
    assert reference[0][..., masked].count_nonzero() > 0
    assert seen[0][..., masked].count_nonzero() == 0
    assert torch.equal(seen[0][..., kept], reference[0][..., kept])


@pytest.mark.parametrize("mode", ["weight", "hook"])
def test_mlp_hidden_mask_removes_the_hidden_units_contribution(mode, loaded, sites, prompt, unmodified):
    """At layer 0, masking hidden units makes down_proj output exactly F.linear(hidden with those units zeroed,
    original weight), i.e. the unmasked output minus those units' contribution."""
    site = sites["lm.mlp_hidden"]
    n_layers, width = site_geometry(loaded, "lm.mlp_hidden")
    indices = spread_indices(n_layers, width)
    masked = layer0_channels(indices, width)
    down_proj = loaded.model.model.language_model.layers[0].mlp.down_proj
    weight = down_proj.weight.detach().clone()
    hidden, reference, seen = [], [], []
    handles = [capture(down_proj, "inputs", hidden), capture(down_proj, "outputs", reference)]
    forward(loaded, prompt)
    for handle in handles:
        handle.remove()
    with NeuronMask(site, indices, mode=mode):
        handle = capture(down_proj, "outputs", seen)
        try:
            forward(loaded, prompt)
        finally:
            handle.remove()
    zeroed = hidden[0].clone()
    zeroed[..., masked] = 0
    assert torch.equal(seen[0], nn.functional.linear(zeroed, weight))
    contribution = nn.functional.linear(hidden[0][..., masked], weight[:, masked])
    assert contribution.count_nonzero() > 0
    torch.testing.assert_close(seen[0], reference[0] - contribution)


@pytest.mark.parametrize("mode", ["weight", "hook"])
def test_output_mask_also_zeroes_the_bias(mode):
    """On a Linear with a bias, an output-channel mask zeroes the channel (bias included) and restores the bias
    bit for bit."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 4, bias=True)
    original = clone_state(linear)
    site = ResolvedSite(spec=SITES["lm.down_proj"], modules=(linear,), width=4)
    x = torch.randn(3, 6)
    with torch.no_grad(), NeuronMask(site, [1, 3], mode=mode):
        output = linear(x)
    assert output[:, [1, 3]].count_nonzero() == 0
    assert torch.equal(output[:, [0, 2]], nn.functional.linear(x, original["weight"], original["bias"])[:, [0, 2]])
    for name, value in linear.state_dict().items():
        assert torch.equal(value.view(torch.int32), original[name].view(torch.int32))


def test_a_plan_marks_each_rows_channels_at_the_hook_points_it_touches():
    """Over down_proj's output rows and input units (2 layers each: flat 0-7, then 8-19), duplicates folded: the
    plan holds only the touched hook points, in flat order, and the replacement values of each."""
    layers = (nn.Linear(6, 4), nn.Linear(6, 4))
    rows = ResolvedSite(spec=SITES["lm.down_proj"], modules=layers, width=4)
    hidden = ResolvedSite(spec=SITES["lm.mlp_hidden"], modules=layers, width=6)
    values = torch.arange(20.0)
    plan = MaskPlan.build(JointSite((rows, hidden)), [[1, 9], [9, 9, 19]], values, per_row=True)
    assert (plan.rows, plan.per_row, plan.replacing) == (2, True, True)
    assert [part.point.location for part in plan.points] == [
        "lm.down_proj layer 0 (mlp.down_proj outputs)",
        "lm.mlp_hidden layer 0 (mlp.down_proj inputs)",
        "lm.mlp_hidden layer 1 (mlp.down_proj inputs)",
    ]
    switched = [part.switched_off.nonzero().tolist() for part in plan.points]
    assert switched == [[[0, 1]], [[0, 1], [1, 1]], [[1, 5]]]
    assert [part.replacement.tolist() for part in plan.points] == [
        [0.0, 1.0, 2.0, 3.0],
        [8.0, 9.0, 10.0, 11.0, 12.0, 13.0],
        [14.0, 15.0, 16.0, 17.0, 18.0, 19.0],
    ]


def test_restored_after_normal_exit(loaded, sites, prompt, pristine):
    """Entering and leaving masks on every site (both modes) leaves parameters and hooks exactly as loaded."""
    for site in sites.values():
        for mode in ("weight", "hook"):
            with NeuronMask(site, spread_indices(site.n_layers, site.width), mode=mode):
                forward(loaded, prompt)
            assert_pristine(loaded, sites, pristine)


@pytest.mark.parametrize("mode", ["weight", "hook"])
def test_restored_after_exception_in_body(mode, loaded, sites, prompt, pristine):
    """An exception raised in the body propagates unchanged, and the model is restored bit for bit."""
    site = sites["lm.up_proj"]
    with pytest.raises(Boom, match="body failed"), NeuronMask(site, [0, 5, site.width + 7], mode=mode):
        forward(loaded, prompt)
        raise Boom("body failed")
    assert_pristine(loaded, sites, pristine)


def test_weight_mode_refuses_a_weight_it_cannot_edit_before_touching_any():
    with torch.inference_mode():
        frozen = nn.Linear(4, 3)
    site = ResolvedSite(spec=SITES["lm.gate_proj"], modules=(nn.Linear(4, 3), frozen), width=3)
    with pytest.raises(
        MaskError,
        match=r"cannot edit lm\.gate_proj layer 1 \(mlp\.gate_proj outputs\): .*an inference tensor.*mode hook",
    ):
        NeuronMask(site, [1, 4], mode="weight")


def test_failed_entry_restores_layers_already_zeroed():
    """When zeroing fails part-way through __enter__ (layer 1's weight became an inference tensor, which refuses
    in-place edits, after the mask was made), the error propagates and layer 0, already zeroed, is restored bit
    for bit."""
    torch.manual_seed(0)
    editable, second = nn.Linear(4, 3), nn.Linear(4, 3)
    original = clone_state(editable)
    site = ResolvedSite(spec=SITES["lm.gate_proj"], modules=(editable, second), width=3)
    mask = NeuronMask(site, [1, 4], mode="weight")
    with torch.inference_mode():
        second.weight = nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="inference tensor"), mask:
        pass
    for name, value in editable.state_dict().items():
        assert torch.equal(value.view(torch.int32), original[name].view(torch.int32)), name


mask_plans = st.lists(
    st.tuples(
        st.sampled_from(LM_SITES + OTHER_LLAVA_SITES),
        st.lists(st.floats(0, 1, exclude_max=True), max_size=6),  # fractions of the site's size
        st.sampled_from(["weight", "hook", "auto"]),
        st.booleans(),  # the body raises
        st.booleans(),  # repeat the first index (duplicates)
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=25, deadline=None)
@given(plan=mask_plans)
def test_random_nested_masks_restore_the_model(plan, loaded, sites, prompt, pristine):
    """Random sites, index sets (empty, duplicated), modes, LIFO nesting and raising bodies: the model ends up
    exactly as loaded, and the exception (if any) reaches the caller."""

    def enter(level: int) -> None:
        if level == len(plan):
            return
        name, fractions, mode, raises, duplicate = plan[level]
        site = sites[name]
        indices = [int(f * site.size) for f in fractions]
        if duplicate and indices:
            indices.append(indices[0])
        with NeuronMask(site, indices, mode=mode):
            forward(loaded, prompt)
            enter(level + 1)
            if raises:
                raise Boom(f"level {level}")

    if any(step[3] for step in plan):
        with pytest.raises(Boom):
            enter(0)
    else:
        enter(0)
    assert_pristine(loaded, sites, pristine)


@pytest.mark.parametrize("bad", [-1, "size"])
def test_index_outside_site_is_rejected(bad, loaded, sites):
    """An index < 0 or ≥ layers × width raises MaskError naming the index and the valid flat range."""
    n_layers, width = site_geometry(loaded, "lm.gate_proj")
    bad = n_layers * width if bad == "size" else bad
    with pytest.raises(MaskError) as error:
        NeuronMask(sites["lm.gate_proj"], [0, bad, 3])
    assert str(bad) in str(error.value)
    assert f"0..{n_layers * width - 1}" in str(error.value)


def test_unknown_mode_is_rejected(sites):
    """An unknown mode raises MaskError naming every valid mode."""
    with pytest.raises(MaskError, match="'zero'") as error:
        NeuronMask(sites["lm.gate_proj"], [0], mode="zero")
    for mode in ("auto", "weight", "hook"):
        assert mode in str(error.value)


def test_entering_a_mask_twice_is_rejected(loaded, sites, pristine):
    """Re-entering an active mask raises, and the outer activation is still undone."""
    mask = NeuronMask(sites["lm.gate_proj"], [1, 2])
    with pytest.raises(MaskError, match="already active"), mask, mask:
        pass
    assert_pristine(loaded, sites, pristine)


def test_mask_never_reached_is_an_error_only_when_verifying(loaded, sites, pristine):
    """A body with no forward pass raises 'never reached' on exit with verify=True, naming exactly the layers
    that were not reached; with verify=False it passes silently."""
    site = sites["lm.down_proj"]
    indices = [3, site.width + 3]
    with pytest.raises(MaskError, match="never reached") as error, NeuronMask(site, indices):
        pass
    assert "lm.down_proj layer 0 (" in str(error.value) and "lm.down_proj layer 1 (" in str(error.value)
    with pytest.raises(MaskError, match="never reached") as error, NeuronMask(site, indices), torch.no_grad():
        site.modules[0](torch.randn(2, site.modules[0].in_features))  # reaches layer 0 only
    assert "layer 0 (" not in str(error.value) and "lm.down_proj layer 1 (mlp.down_proj outputs)" in str(
        error.value
    )
    with NeuronMask(site, indices, verify=False):
        pass
    assert_pristine(loaded, sites, pristine)


@pytest.mark.parametrize("name", LM_SITES)
def test_zeroing_undone_behind_the_masks_back_is_detected(name, loaded, sites, prompt, pristine):
    """If the zeroed weights come back before the forward (offloaded weights), the forward raises 'did not take
    effect', and the model is restored afterwards."""
    site = sites[name]
    module = site.modules[1]
    channel = 4
    dim = 0 if site.spec.unit == "output" else 1
    original = module.weight.detach().select(dim, channel).clone()
    with pytest.raises(MaskError, match="did not take effect"), NeuronMask(site, [site.width + channel], "weight"):
        with torch.no_grad():
            module.weight.select(dim, channel).copy_(original)
        forward(loaded, prompt)
    assert_pristine(loaded, sites, pristine)


def test_auto_mode_edits_weights_of_plain_float_linears(sites):
    """mode='auto' edits float weights in place."""
    for site in sites.values():
        assert NeuronMask(site, [0, site.size - 1]).modes == {"weight"}


@pytest.mark.parametrize("weight", ["meta", "int8"])
def test_auto_mode_hooks_weights_that_cannot_be_edited(weight):
    """mode='auto' falls back to hooks for meta (offloaded) and non-float (quantised) weights."""
    with torch.device("meta" if weight == "meta" else "cpu"):
        linear = nn.Linear(4, 3)
    if weight == "int8":
        linear.weight = nn.Parameter(torch.ones(3, 4, dtype=torch.int8), requires_grad=False)
    site = ResolvedSite(spec=SITES["lm.gate_proj"], modules=(linear,), width=3)
    assert NeuronMask(site, [1]).modes == {"hook"}


def test_auto_mode_falls_back_to_hooks_with_identical_outputs(monkeypatch, loaded, sites, scored, unmodified):
    """When weights are reported not editable, 'auto' uses hooks, with logits identical to weight mode."""
    site = sites["lm.mlp_hidden"]
    indices = spread_indices(*site_geometry(loaded, "lm.mlp_hidden"))
    with NeuronMask(site, indices, mode="weight"):
        expected = forward(loaded, scored.inputs)
    monkeypatch.setattr(harness.models.masking, "weight_is_editable", lambda module: False)
    with NeuronMask(site, indices, mode="auto") as mask:
        assert mask.modes == {"hook"}
        logits = forward(loaded, scored.inputs)
    assert torch.equal(logits, expected)


# -- replacement values (mean ablation) --------------------------------------------------------------------------
def one_linear_site(site_name: str, linear: nn.Linear) -> ResolvedSite:
    width = linear.out_features if SITES[site_name].unit == "output" else linear.in_features
    return ResolvedSite(spec=SITES[site_name], modules=(linear,), width=width)


@pytest.mark.parametrize("mode", ["auto", "hook"])
def test_values_replace_output_channels_and_leave_the_rest(mode):
    """Mean ablation: the masked output channels hold exactly their replacement values at every position, the
    others are untouched, and the module's parameters are never edited."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 4, bias=False)
    original = clone_state(linear)
    site = one_linear_site("lm.down_proj", linear)
    values = torch.tensor([[10.0, -2.0, 3.5, 7.0]])
    x = torch.randn(2, 3, 6)
    with torch.no_grad(), NeuronMask(site, [1, 3], mode=mode, values=values) as mask:
        output = linear(x)
    assert mask.modes == {"hook"}
    assert torch.equal(output[..., 1], torch.full((2, 3), -2.0))
    assert torch.equal(output[..., 3], torch.full((2, 3), 7.0))
    assert torch.equal(output[..., [0, 2]], nn.functional.linear(x, original["weight"])[..., [0, 2]])
    assert torch.equal(linear.weight, original["weight"])


def test_values_replace_hidden_units_at_the_input():
    """On an input-unit site (lm.mlp_hidden) the replacement is applied to the module's input."""
    torch.manual_seed(0)
    linear = nn.Linear(5, 3, bias=False)
    site = one_linear_site("lm.mlp_hidden", linear)
    values = torch.arange(5, dtype=torch.float32)[None] + 1
    x = torch.randn(4, 5)
    with torch.no_grad(), NeuronMask(site, [0, 4], values=values):
        output = linear(x)
    replaced = x.clone()
    replaced[:, 0], replaced[:, 4] = 1.0, 5.0
    assert torch.equal(output, nn.functional.linear(replaced, linear.weight))


def test_values_need_the_site_shape_and_a_hook_mode():
    linear = nn.Linear(6, 4, bias=False)
    site = one_linear_site("lm.down_proj", linear)
    with pytest.raises(MaskError, match=r"shape \(4,\); expected \(1, 4\)"):
        NeuronMask(site, [0], values=torch.zeros(4))
    with pytest.raises(MaskError, match="needs mask mode 'hook' or 'auto'"):
        NeuronMask(site, [0], mode="weight", values=torch.zeros(1, 4))


def test_replacement_undone_behind_the_masks_back_is_detected():
    """The verification hook checks the replacement values, not zero."""
    linear = nn.Linear(6, 4, bias=False)
    site = one_linear_site("lm.down_proj", linear)
    mask = NeuronMask(site, [2], values=torch.full((1, 4), 9.0))
    with pytest.raises(MaskError, match="are not their replacement values"), mask:
        mask._handles[0].remove()  # the replacing hook disappears; the verification hook stays
        linear(torch.randn(1, 6))
