"""Controls and ground truth: random-k selection, mean activations, single-neuron effects, rank agreement."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.core.errors import UnknownNameError
from harness.models.captioning import score_captions, teacher_forced_batch
from harness.models.masking import NeuronMask
from harness.science.ablation import (
    Intervention,
    mean_activations,
    random_selection,
    rank_correlation,
    single_neuron_effects,
    top_k_overlap,
)

SITE = "lm.down_proj"


def test_random_selection_is_seeded_nested_and_inside_the_site(experiment):
    site = experiment.site(SITE)
    eight = random_selection(site, 8, seed=3)
    assert torch.equal(random_selection(site, 8, seed=3), eight)
    assert torch.equal(random_selection(site, 4, seed=3), eight[:4])
    assert not torch.equal(random_selection(site, 8, seed=4), eight)
    assert len(set(eight.tolist())) == 8 and int(eight.min()) >= 0 and int(eight.max()) < site.size


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"selection": "top"}, "neuron selection"), ({"ablation": "x"}, "ablation")]
)
def test_unknown_intervention_names_the_valid_ones(kwargs, message):
    with pytest.raises(UnknownNameError, match=message):
        Intervention(**kwargs)


def test_mean_activations_match_a_direct_computation(experiment):
    """Per image, the mean over the real tokens of the site's output; then the mean over images."""
    loaded, site = experiment.loaded, experiment.site(SITE)
    images, captions = experiment.probe.images.images("circle"), experiment.baseline("circle").captions
    means = mean_activations(loaded, site, images, captions, positions="all", batch_size=3)
    batch = teacher_forced_batch(loaded, images, captions)
    seen = []
    handle = site.modules[1].register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        loaded.model(**batch.inputs, use_cache=False)
    handle.remove()
    mask = batch.inputs["attention_mask"].bool()
    per_image = torch.stack([seen[0][row][mask[row]].mean(0) for row in range(len(images))])
    torch.testing.assert_close(means[1], per_image.mean(0))


def test_mean_ablation_and_random_k_are_measured_and_labelled(experiment, unmodified):
    can = experiment.measure(SITE, "circle", 4)
    mean = experiment.measure(SITE, "circle", 4, Intervention(ablation="mean"))
    random = experiment.measure(SITE, "circle", 4, Intervention(selection="random", seed=1))
    assert (can.intervention, mean.intervention) == ("top-k, zero ablation", "top-k, mean ablation")
    assert random.intervention == "random-k (seed 1), zero ablation"
    assert mean.masked_neurons == can.masked_neurons and mean.mask_modes == ["hook"]
    chosen = random_selection(experiment.site(SITE), 4, seed=1)
    assert [tuple(n[:3]) for n in random.masked_neurons] == [
        (SITE, int(i) // experiment.site(SITE).width, int(i) % experiment.site(SITE).width) for i in chosen
    ]
    assert random.ranking_key is None


def test_single_neuron_effects_equal_masked_minus_unmasked_nll(experiment, unmodified):
    loaded, site = experiment.loaded, experiment.site(SITE)
    images, captions = experiment.probe.images.images("circle"), experiment.baseline("circle").captions
    effects = single_neuron_effects(loaded, site, images, captions, batch_size=4)
    assert effects.shape == (site.n_layers, site.width)

    def mean_nll():
        scores = score_captions(loaded, images, captions, batch_size=4)
        return sum(scores) / len(scores)

    baseline = mean_nll()
    with NeuronMask(site, [site.width + 5]):
        expected = mean_nll() - baseline
    assert effects[1, 5].item() == pytest.approx(expected, abs=1e-6)


@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=40, unique=True))
def test_rank_correlation_is_one_for_monotone_maps_and_minus_one_reversed(values):
    scores = torch.tensor(values, dtype=torch.float64)
    assert rank_correlation(scores, scores.pow(3) + scores) == pytest.approx(1.0)
    assert rank_correlation(scores, -scores) == pytest.approx(-1.0)


def test_top_k_overlap_counts_shared_top_entries():
    first = torch.tensor([9.0, 8.0, 7.0, 0.0, 0.0])
    second = torch.tensor([0.0, 8.0, 7.0, 9.0, 0.0])
    assert top_k_overlap(first, second, 3) == 2
    assert top_k_overlap(first, first, 3) == 3
