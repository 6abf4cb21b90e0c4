"""Joint sites (`a+b`): several sites ranked as one pool, masked together, and broken down by site.

The paper's localisation finding ("the critical neurons sit in down_proj") is a statement about where the top of
one ranking over several sites lands; these tests pin the pieces that make that ranking and its masks honest.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from harness.core.errors import InvalidKError, MaskError, UnknownNameError
from harness.models.masking import JointMask, NeuronMask
from harness.models.prompts import encode_prompts
from harness.models.sites import (
    SITES,
    JointSite,
    ResolvedSite,
    resolve_any_site,
    resolve_site,
    site_names,
    site_size,
)
from harness.runner.analysis import neurons_by_site_and_layer
from harness.science.ablation import Intervention
from harness.science.ranking import importance, importances
from harness.science.ranking_options import RankingOptions

DOWN_AND_HIDDEN = "lm.down_proj+lm.mlp_hidden"  # rows and columns of the same down_proj weight
DOWN_AND_GATE = "lm.down_proj+lm.gate_proj"


def test_site_names_checks_every_part():
    assert site_names("lm.down_proj") == ["lm.down_proj"]
    assert site_names(DOWN_AND_GATE) == ["lm.down_proj", "lm.gate_proj"]
    with pytest.raises(UnknownNameError, match=re.escape("unknown site 'lm.gate'; valid choices: lm.down_proj")):
        site_names("lm.down_proj+lm.gate")
    with pytest.raises(UnknownNameError, match="unknown site ''"):
        site_names("lm.down_proj+")
    with pytest.raises(ValueError, match=re.escape("names lm.down_proj more than once")):
        site_names("lm.down_proj+lm.gate_proj+lm.down_proj")


def test_site_size_is_the_sum_of_the_parts(loaded):
    text = loaded.text_config
    layers, hidden, ffn = text.num_hidden_layers, text.hidden_size, text.intermediate_size
    assert site_size("lm.down_proj", loaded.model.config, loaded.family) == layers * hidden
    assert site_size(DOWN_AND_GATE, loaded.model.config, loaded.family) == layers * hidden + layers * ffn


def test_joint_site_addresses_each_neuron_in_its_own_site(loaded):
    """Flat index = offset of the part + index in the part; neurons() and the hook points agree with the parts."""
    joint = resolve_any_site(loaded, DOWN_AND_GATE)
    down, gate = resolve_site(loaded, "lm.down_proj"), resolve_site(loaded, "lm.gate_proj")
    assert isinstance(joint, JointSite) and joint.name == DOWN_AND_GATE
    assert (joint.size, joint.offsets) == (down.size + gate.size, [0, down.size])
    chosen = torch.tensor([down.size + 5, 3, joint.size - 1, down.size - 1])
    assert joint.neurons(chosen) == [
        *gate.neurons(torch.tensor([5])),
        *down.neurons(torch.tensor([3])),
        *gate.neurons(torch.tensor([gate.size - 1])),
        *down.neurons(torch.tensor([down.size - 1])),
    ]
    expected_points = [
        *(
            (module, "lm.down_proj", layer, layer * down.width, down.width)
            for layer, module in enumerate(down.modules)
        ),
        *(
            (module, "lm.gate_proj", layer, down.size + layer * gate.width, gate.width)
            for layer, module in enumerate(gate.modules)
        ),
    ]
    assert [(p.module, p.site, p.layer, p.start, p.width) for p in joint.hook_points] == expected_points
    assert isinstance(resolve_any_site(loaded, "lm.down_proj"), ResolvedSite)


@pytest.mark.parametrize("bad", [-1, "size + 1", 2.0, True])
def test_joint_k_is_checked_against_the_whole_pool(loaded, bad):
    joint = resolve_any_site(loaded, DOWN_AND_GATE)
    bad = joint.size + 1 if bad == "size + 1" else bad
    sizes = " + ".join(str(part.size) for part in joint.parts)
    expected = f"{sizes} neurons, so k must be an integer in [0, {joint.size}]"
    with pytest.raises(InvalidKError, match=re.escape(expected)):
        joint.check_k(bad)
    assert joint.check_k(joint.size) == joint.size


@pytest.fixture(scope="module")
def prompt_inputs(loaded, images):
    """A one-image prompt: the cheapest forward through every language layer."""
    return encode_prompts(loaded, images.images("circle")[:1])


@torch.no_grad()
def logits(loaded, inputs) -> torch.Tensor:
    return loaded.model(**inputs, use_cache=False).logits


@pytest.mark.parametrize("mode", ["weight", "hook"])
def test_joint_mask_equals_the_parts_masks_together_and_restores_the_model(
    mode, loaded, unmodified, prompt_inputs
):
    """Masking down_proj rows and its input columns (one weight) as a joint site gives the same logits as the
    two single-site masks nested, differs from the unmasked model, and leaves no trace."""
    joint = resolve_any_site(loaded, DOWN_AND_HIDDEN)
    down, hidden = joint.parts
    chosen = torch.tensor([0, 7, down.size + 3, down.size + hidden.width + 1])  # both layers of mlp_hidden
    unmasked = logits(loaded, prompt_inputs)
    with JointMask(joint, chosen, mode=mode) as mask:
        masked = logits(loaded, prompt_inputs)
    assert mask.modes == {mode}
    with NeuronMask(down, [0, 7], mode=mode), NeuronMask(hidden, [3, hidden.width + 1], mode=mode):
        reference = logits(loaded, prompt_inputs)
    assert torch.equal(masked, reference)
    assert not torch.equal(masked, unmasked)
    assert torch.equal(logits(loaded, prompt_inputs), unmasked)


def test_joint_mask_never_reached_names_the_layers_of_every_part(loaded):
    joint = resolve_any_site(loaded, DOWN_AND_GATE)
    down, gate = joint.parts
    chosen = [3, down.size + gate.width + 1]  # down_proj layer 0, gate_proj layer 1
    with pytest.raises(MaskError, match="never reached") as error, JointMask(joint, chosen):
        pass
    assert f"{down.location(0)}, {gate.location(1)}:" in str(error.value)


def test_joint_mask_undoes_the_first_part_when_the_second_cannot_be_entered():
    torch.manual_seed(0)
    editable, second = nn.Linear(4, 3), nn.Linear(4, 3)
    original = {name: value.clone() for name, value in editable.state_dict().items()}
    joint = JointSite(
        (
            ResolvedSite(spec=SITES["lm.gate_proj"], modules=(editable,), width=3),
            ResolvedSite(spec=SITES["lm.up_proj"], modules=(second,), width=3),
        )
    )
    mask = JointMask(joint, [1, 4], mode="weight")
    with torch.inference_mode():
        second.weight = nn.Parameter(torch.zeros(3, 4))  # an inference tensor refuses in-place edits
    with pytest.raises(RuntimeError, match="inference tensor"), mask:
        pass
    for name, value in editable.state_dict().items():
        assert torch.equal(value, original[name]), name


def test_joint_mask_rejects_indices_and_values_outside_the_pool(loaded):
    joint = resolve_any_site(loaded, DOWN_AND_GATE)
    with pytest.raises(MaskError, match=re.escape(f"[{joint.size}] are outside site {DOWN_AND_GATE}")):
        JointMask(joint, [0, joint.size])
    with pytest.raises(MaskError, match=re.escape(f"expected ({joint.size},)")):
        JointMask(joint, [0], values=torch.zeros(3))


def test_joint_ranking_merges_the_parts_scores(experiment):
    """A neuron's CAN score depends on its own site only, so the joint ranking is the parts' scores side by side
    and its top k is the k best of the union."""
    joint = experiment.ranking(DOWN_AND_GATE, "circle")
    down, gate = experiment.ranking("lm.down_proj", "circle"), experiment.ranking("lm.gate_proj", "circle")
    assert torch.equal(joint.scores, torch.cat([down.scores.reshape(-1), gate.scores.reshape(-1)]))
    k = 40
    best = sorted(joint.scores.tolist(), reverse=True)[:k]
    assert sorted(joint.scores[joint.top_k(k)].tolist(), reverse=True) == best
    assert joint.key == f"{down.key}+{gate.key}"


@pytest.mark.parametrize(
    "options",
    [{"method": "can"}, {"method": "gradient", "aggregate": "max"}, {"method": "pcicn", "noise_samples": 3}],
)
def test_sites_scored_in_the_same_passes_equal_each_site_scored_alone(experiment, options, unmodified):
    """A joint site's parts are ranked together (one backward, or one set of noisy passes): the same draws and
    the same gradients reach every part, so each part's scores equal its ranking alone."""
    parts = [resolve_site(experiment.loaded, name) for name in ("lm.down_proj", "lm.gate_proj", "lm.q_proj")]
    data = experiment.ranking_data("circle")
    ranking = RankingOptions(**options)
    together = importances(experiment.loaded, parts, *data, options=ranking, batch_size=4)
    for part, scores in zip(parts, together, strict=True):
        alone = importance(experiment.loaded, part, *data, options=ranking, batch_size=4)
        assert torch.allclose(scores, alone, rtol=1e-6, atol=1e-9), part.name


def test_joint_points_name_the_site_of_every_masked_neuron(experiment, unmodified):
    point = experiment.measure(DOWN_AND_GATE, "circle", 40)
    expected = experiment.site(DOWN_AND_GATE).neurons(experiment.ranking(DOWN_AND_GATE, "circle").top_k(40))
    assert [tuple(n[:3]) for n in point.masked_neurons] == [tuple(n) for n in expected]
    assert {n[0] for n in point.masked_neurons} == {"lm.down_proj", "lm.gate_proj"}  # the pool is really mixed
    mean = experiment.measure(DOWN_AND_GATE, "circle", 40, Intervention(ablation="mean"))
    assert mean.mask_modes == ["hook"] and mean.masked_neurons == point.masked_neurons
    means = experiment.mean_activations(DOWN_AND_GATE, "circle")
    assert means.shape == (experiment.site(DOWN_AND_GATE).size,)
    down = experiment.mean_activations("lm.down_proj", "circle")
    assert torch.equal(means[: down.numel()].reshape(down.shape), down)


def test_breakdown_by_site_and_layer(experiment):
    """Counted independently from the merged scores: each site of the pool appears, even with no neuron."""
    k = 40
    joint = experiment.site(DOWN_AND_GATE)
    scores = experiment.ranking(DOWN_AND_GATE, "circle").scores
    top = scores.argsort(descending=True, stable=True)[:k].tolist()
    down = joint.parts[0]
    expected: dict[str, dict[int, int]] = {"lm.down_proj": {}, "lm.gate_proj": {}}
    for index in sorted(top):
        site, local = ("lm.down_proj", index) if index < down.size else ("lm.gate_proj", index - down.size)
        width = down.width if site == "lm.down_proj" else joint.parts[1].width
        expected[site][local // width] = expected[site].get(local // width, 0) + 1
    found = neurons_by_site_and_layer(experiment, DOWN_AND_GATE, "circle", k)
    assert found == {site: dict(sorted(counts.items())) for site, counts in expected.items()}
    assert sum(sum(counts.values()) for counts in found.values()) == k
