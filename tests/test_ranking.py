"""Every ranking method against a computation written out here by hand, on the tiny model, and the order a
ranking induces.

The gradient methods (CAN, activation, gradient) are checked against activations and gradients retained one image
at a time; PCICN is re-derived from its definition: draw the noise, add it to the input embeddings, average the
absolute change of each neuron's output.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.errors import UnknownNameError
from harness.core.labels import DEFAULT_RANKING
from harness.models.captioning import teacher_forced_batch
from harness.models.masking import NeuronMask
from harness.models.sites import resolve_site
from harness.science.ranking import Ranking, importance
from harness.science.ranking_methods import ranking_method_names
from harness.science.ranking_options import RankingOptions

CATEGORY = "circle"
LAYERS_PATH = "model.language_model.layers"
# site -> (Linear below each decoder layer, which side of it holds the neurons)
SITE_TENSORS = {
    "lm.down_proj": ("mlp.down_proj", "output"),
    "lm.mlp_hidden": ("mlp.down_proj", "input"),
}


@pytest.fixture(scope="module")
def baseline_captions(experiment):
    return experiment.baseline(CATEGORY).captions


@pytest.fixture(scope="module")
def ragged_captions(baseline_captions, loaded):
    """The baseline captions cut to different lengths (one ending in EOS), so batches need right padding."""
    eos = loaded.tokenizer.eos_token_id
    cuts = [(12, False), (5, True), (2, False), (9, False)]
    return [
        dataclasses.replace(c, token_ids=c.token_ids[:n] + ((eos,) if ended else ()), ended=ended)
        for c, (n, ended) in zip(baseline_captions, cuts, strict=True)
    ]


@pytest.fixture(scope="module")
def caption_sets(baseline_captions, ragged_captions):
    return {"baseline": baseline_captions, "ragged": ragged_captions}


def reference_terms(loaded, site_name, images, captions):
    """Per image, one at a time: ([(activation, gradient)] per layer as [T, W] float64, prompt_len, total_len).

    The loss is the caption tokens' mean cross-entropy; gradients flow from the token embeddings (made to require
    grad) through retained activation gradients, not from a leaf at the hooked activation as the harness does.
    """
    path, unit = SITE_TENSORS[site_name]
    modules = [layer.get_submodule(path) for layer in loaded.model.get_submodule(LAYERS_PATH)]
    embed = loaded.model.get_input_embeddings()
    terms = []
    for image, caption in zip(images, captions, strict=True):
        batch = teacher_forced_batch(loaded, [image], [caption])
        prompt_len, total_len = int(batch.prompt_lengths[0]), int(batch.total_lengths[0])
        captured = []

        def grab(tensor, captured=captured):
            tensor.retain_grad()
            captured.append(tensor)

        handles = [embed.register_forward_hook(lambda m, args, out: out.requires_grad_())]
        for module in modules:
            if unit == "output":
                handles.append(module.register_forward_hook(lambda m, args, out: grab(out)))
            else:
                handles.append(module.register_forward_pre_hook(lambda m, args: grab(args[0])))
        try:
            with torch.enable_grad():
                logits = loaded.model(**batch.inputs, use_cache=False).logits[0]
                targets = batch.inputs["input_ids"][0, prompt_len:total_len]
                F.cross_entropy(logits[prompt_len - 1 : total_len - 1], targets).backward()
        finally:
            for handle in handles:
                handle.remove()
        assert batch.inputs["input_ids"].shape[1] == total_len
        layers = [(a[0].detach().double(), a.grad[0].double()) for a in captured]
        terms.append((layers, prompt_len, total_len))
    return terms


def reference_can(terms, alpha, positions):
    """mean over images of (mean over the chosen positions of |g|^α·|a|), [layers, W] float32."""
    per_image = []
    for layers, prompt_len, total_len in terms:
        rows = slice(0, total_len) if positions == "all" else slice(prompt_len - 1, total_len - 1)
        per_image.append(torch.stack([(g[rows].abs().pow(alpha) * a[rows].abs()).mean(0) for a, g in layers]))
    return torch.stack(per_image).mean(0).float()


@pytest.fixture(scope="module")
def terms(loaded, images, caption_sets):
    """Reference (activation, gradient) terms per (site, caption set), computed on first use."""
    found = {}

    def get(site_name, which):
        if (site_name, which) not in found:
            found[site_name, which] = reference_terms(
                loaded, site_name, images.images(CATEGORY), caption_sets[which]
            )
        return found[site_name, which]

    return get


def harness_scores(loaded, images, captions, site_name, batch_size=4, **options) -> torch.Tensor:
    return importance(
        loaded,
        resolve_site(loaded, site_name),
        images.images(CATEGORY),
        captions,
        options=RankingOptions(**options),
        batch_size=batch_size,
    )


@pytest.mark.parametrize("positions", ["all", "scored"])
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("which", ["baseline", "ragged"])
@pytest.mark.parametrize("site_name", ["lm.down_proj", "lm.mlp_hidden"])
def test_can_matches_per_image_hand_computation(
    loaded, images, caption_sets, terms, site_name, which, alpha, positions, unmodified
):
    """Batched CAN scores equal mean over images of mean over positions of |∂L/∂a|^α·|a|, computed per image."""
    expected = reference_can(terms(site_name, which), alpha, positions)
    actual = harness_scores(loaded, images, caption_sets[which], site_name, alpha=alpha, positions=positions)
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-7), (actual - expected).abs().max()


def test_positions_choice_changes_scores(loaded, images, ragged_captions):
    """'all' and 'scored' aggregate different positions, so they give different scores."""
    all_positions = harness_scores(loaded, images, ragged_captions, "lm.down_proj", positions="all")
    scored = harness_scores(loaded, images, ragged_captions, "lm.down_proj", positions="scored")
    assert not torch.allclose(all_positions, scored)


def test_alpha_zero_is_activation_magnitude_without_backward(loaded, images, ragged_captions, terms, monkeypatch):
    """α = 0 scores are mean |a| and need no backward pass at all."""
    expected = torch.stack(
        [torch.stack([a.abs().mean(0) for a, _ in layers]) for layers, _, _ in terms("lm.down_proj", "ragged")]
    ).mean(0)

    def no_backward(*args, **kwargs):
        raise AssertionError("α = 0 must not run a backward pass")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    actual = harness_scores(loaded, images, ragged_captions, "lm.down_proj", alpha=0.0)
    assert torch.allclose(actual, expected.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("positions", ["all", "scored"])
def test_up_proj_and_hidden_units_have_equal_alpha_one_scores(loaded, images, ragged_captions, positions):
    """Chain rule: h = act(gate)·up gives ∂L/∂up·up = ∂L/∂h·h, so α = 1 scores of the two sites coincide."""
    up = harness_scores(loaded, images, ragged_captions, "lm.up_proj", alpha=1.0, positions=positions)
    hidden = harness_scores(loaded, images, ragged_captions, "lm.mlp_hidden", alpha=1.0, positions=positions)
    assert up.abs().max() > 0
    assert torch.allclose(up, hidden, rtol=1e-4, atol=1e-8), (up - hidden).abs().max()


@pytest.mark.parametrize("mode", ["weight", "hook"])
@pytest.mark.parametrize(("layer", "channel"), [(0, 3), (1, 100)])
def test_masking_hidden_unit_equals_masking_gate_or_up(
    loaded, images, baseline_captions, layer, channel, mode, unmodified
):
    """Zeroing gate_proj, up_proj or the hidden unit j gives identical logits: SiLU(0)·up = SiLU(gate)·0 = 0."""
    batch = teacher_forced_batch(loaded, images.images(CATEGORY), baseline_captions)

    def logits():
        with torch.no_grad():
            return loaded.model(**batch.inputs, use_cache=False).logits

    unmasked = logits()
    width = loaded.text_config.intermediate_size
    masked = {}
    for site_name in ("lm.gate_proj", "lm.up_proj", "lm.mlp_hidden"):
        with NeuronMask(resolve_site(loaded, site_name), [layer * width + channel], mode=mode):
            masked[site_name] = logits()
    assert not torch.equal(masked["lm.mlp_hidden"], unmasked)
    assert torch.equal(masked["lm.gate_proj"], masked["lm.mlp_hidden"])
    assert torch.equal(masked["lm.up_proj"], masked["lm.mlp_hidden"])


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("positions", ["all", "scored"])
def test_batches_do_not_interact(loaded, images, ragged_captions, batch_size, positions):
    """Scores do not depend on how the images are batched (ragged captions, so padding differs)."""
    together = harness_scores(loaded, images, ragged_captions, "lm.down_proj", batch_size=4, positions=positions)
    split = harness_scores(
        loaded, images, ragged_captions, "lm.down_proj", batch_size=batch_size, positions=positions
    )
    assert torch.allclose(split, together, rtol=1e-4, atol=1e-7), (split - together).abs().max()


def test_order_breaks_ties_by_lower_index():
    """Highest score first; equal scores keep flat-index order; every neuron appears exactly once."""
    ranking = Ranking(site="lm.down_proj", scores=torch.tensor([[3.0, 1.0, 3.0], [2.0, 3.0, 1.0]]), key="k")
    assert ranking.order.tolist() == [0, 2, 4, 3, 1, 5]
    assert ranking.top_k(0).tolist() == []
    assert ranking.top_k(2).tolist() == [0, 2]
    assert ranking.top_k(6).tolist() == [0, 2, 4, 3, 1, 5]


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda layers: st.integers(1, 6).flatmap(
            lambda width: st.lists(
                st.lists(st.integers(0, 3), min_size=width, max_size=width), min_size=layers, max_size=layers
            )
        )
    )
)
def test_top_k_is_nested_and_order_is_a_permutation(rows):
    """top_k(k) is a prefix of top_k(k + 1), sorted by (score desc, index asc), over heavily tied scores."""
    ranking = Ranking(site="lm.down_proj", scores=torch.tensor(rows, dtype=torch.float32), key="k")
    flat = [value for row in rows for value in row]
    expected = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    assert ranking.order.tolist() == expected
    for k in range(len(flat)):
        assert ranking.top_k(k + 1).tolist()[:k] == ranking.top_k(k).tolist()
    assert sorted(ranking.top_k(len(flat)).tolist()) == list(range(len(flat)))


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    """α must lie in [0, 1]; the error names the bad value."""
    with pytest.raises(ValueError, match=str(alpha)):
        RankingOptions(alpha=alpha)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_bounds_are_accepted(alpha):
    """The interval is closed: 0 and 1 are valid."""
    assert RankingOptions(alpha=alpha).alpha == alpha


def test_unknown_positions_are_rejected():
    """An unknown position aggregation names itself and lists the valid ones."""
    with pytest.raises(UnknownNameError) as error:
        RankingOptions(positions="bogus")
    message = str(error.value)
    assert "bogus" in message
    assert "all" in message
    assert "scored" in message
    assert error.value.valid == ["all", "scored"]


# -- the other methods -------------------------------------------------------------------------------------


def mean_over_images(per_image: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(per_image).mean(0).float()


@pytest.mark.parametrize("site_name", ["lm.down_proj", "lm.mlp_hidden"])
def test_activation_method_is_the_mean_absolute_activation(loaded, images, ragged_captions, terms, site_name):
    expected = mean_over_images(
        [torch.stack([a.abs().mean(0) for a, _ in layers]) for layers, _, _ in terms(site_name, "ragged")]
    )
    actual = harness_scores(loaded, images, ragged_captions, site_name, method="activation")
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("positions", ["all", "scored"])
@pytest.mark.parametrize("site_name", ["lm.down_proj", "lm.mlp_hidden"])
def test_gradient_method_is_the_mean_absolute_gradient(
    loaded, images, ragged_captions, terms, site_name, positions
):
    per_image = []
    for layers, prompt_len, total_len in terms(site_name, "ragged"):
        rows = slice(0, total_len) if positions == "all" else slice(prompt_len - 1, total_len - 1)
        per_image.append(torch.stack([g[rows].abs().mean(0) for _, g in layers]))
    expected = mean_over_images(per_image)
    actual = harness_scores(loaded, images, ragged_captions, site_name, method="gradient", positions=positions)
    assert expected.abs().max() > 0
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-9), (actual - expected).abs().max()


def test_gradient_and_activation_rank_differently_from_can(loaded, images, ragged_captions):
    """The three gradient-family methods are different functions of the same terms, not one under three names."""
    scores = {
        method: harness_scores(loaded, images, ragged_captions, "lm.down_proj", method=method)
        for method in ("can", "activation", "gradient")
    }
    assert not torch.allclose(scores["can"], scores["activation"])
    assert not torch.allclose(scores["can"], scores["gradient"])


def reference_pcicn(
    loaded, images, captions, site_name, sigma, samples, seed, positions, aggregate
) -> torch.Tensor:
    """PCICN from its definition, one image at a time: K times, noise ~ N(0, σ²) of the embedding output's shape
    is drawn from a CPU generator seeded with `seed` and added to the input embeddings; each element (position,
    neuron) scores the mean over samples of |output(clean) − output(noisy)|, each neuron the max (or mean) of its
    elements over the chosen positions, then the mean over images."""
    path, unit = SITE_TENSORS[site_name]
    modules = [layer.get_submodule(path) for layer in loaded.model.get_submodule(LAYERS_PATH)]
    embed = loaded.model.get_input_embeddings()
    generator = torch.Generator().manual_seed(seed)
    per_image = []
    for image, caption in zip(images, captions, strict=True):
        batch = teacher_forced_batch(loaded, [image], [caption])
        prompt_len, total_len = int(batch.prompt_lengths[0]), int(batch.total_lengths[0])
        rows = slice(0, total_len) if positions == "all" else slice(prompt_len - 1, total_len - 1)

        def outputs(batch, noise: torch.Tensor | None) -> list[torch.Tensor]:
            seen = []
            handles = [
                module.register_forward_hook(lambda m, args, out: seen.append(out[0].double()))
                if unit == "output"
                else module.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].double()))
                for module in modules
            ]
            if noise is not None:
                handles.append(embed.register_forward_hook(lambda m, args, out: out + noise))
            try:
                with torch.no_grad():
                    loaded.model(**batch.inputs, use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            return seen

        clean = outputs(batch, None)
        total = 0
        for _ in range(samples):
            shape = (1, batch.inputs["input_ids"].shape[1], embed.embedding_dim)
            noisy = outputs(batch, sigma * torch.randn(shape, generator=generator))
            total = total + torch.stack([(c - n)[rows].abs() for c, n in zip(clean, noisy, strict=True)])
        elements = total / samples  # [layer, position, neuron]
        per_image.append(elements.amax(1) if aggregate == "max" else elements.mean(1))
    return mean_over_images(per_image)


@pytest.mark.parametrize(
    ("site_name", "positions", "aggregate"),
    [("lm.down_proj", "all", "max"), ("lm.down_proj", "all", "mean"), ("lm.mlp_hidden", "scored", "max")],
)
def test_pcicn_reproduces_its_definition_exactly(
    loaded, images, ragged_captions, site_name, positions, aggregate, unmodified
):
    """Same noise draws, same sum: the batched harness (one image per batch, so the draws line up) equals the
    definition to float32 rounding, for either aggregation over positions."""
    options = {"sigma": 5.0, "samples": 3, "seed": 7}
    expected = reference_pcicn(
        loaded, images.images(CATEGORY), ragged_captions, site_name, positions=positions, aggregate=aggregate,
        **options,
    )  # fmt: skip
    actual = harness_scores(
        loaded, images, ragged_captions, site_name, batch_size=1, method="pcicn", positions=positions,
        aggregate=aggregate, noise_sigma=options["sigma"], noise_samples=options["samples"], seed=options["seed"],
    )  # fmt: skip
    assert expected.abs().max() > 0
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6), (actual - expected).abs().max()


def test_pcicn_depends_on_sigma_and_seed_and_not_on_batching_in_expectation(loaded, images, ragged_captions):
    base = {"method": "pcicn", "noise_samples": 2}
    first = harness_scores(loaded, images, ragged_captions, "lm.down_proj", **base)
    assert torch.equal(first, harness_scores(loaded, images, ragged_captions, "lm.down_proj", **base))
    assert not torch.equal(first, harness_scores(loaded, images, ragged_captions, "lm.down_proj", **base, seed=1))
    small = harness_scores(loaded, images, ragged_captions, "lm.down_proj", **base, noise_sigma=0.01)
    assert small.sum() < first.sum()  # less noise, smaller changes


def test_random_method_is_seeded_uniform_and_runs_no_model(loaded, images, ragged_captions, monkeypatch):
    site = resolve_site(loaded, "lm.down_proj")

    def no_forward(*args, **kwargs):
        raise AssertionError("a random ranking must not run the model")

    monkeypatch.setattr(loaded.model, "forward", no_forward)
    scores = harness_scores(loaded, images, ragged_captions, "lm.down_proj", method="random", seed=3)
    expected = torch.rand(site.n_layers, site.width, generator=torch.Generator().manual_seed(3))
    assert torch.equal(scores, expected)


def test_options_record_only_what_the_method_reads():
    assert RankingOptions().used() == {"method": "can", "alpha": 1.0, "positions": "all", "aggregation": "mean"}
    assert RankingOptions(method="random", alpha=0.3).used() == {"method": "random", "seed": 0}
    assert RankingOptions(method="pcicn").used() == {
        "method": "pcicn", "positions": "all", "aggregation": "max", "noise_sigma": 5.0, "noise_samples": 100,
        "seed": 0,
    }  # fmt: skip
    assert RankingOptions(aggregate="max").used()["aggregation"] == "max"
    assert RankingOptions(method="pcicn", aggregate="mean").label.startswith("PCICN, mean over all positions")
    assert (
        RankingOptions().label == "CAN, α=1, mean over all positions" == DEFAULT_RANKING
    )  # curves named without it
    pcicn = RankingOptions(method="pcicn", noise_samples=8)
    assert pcicn.label == "PCICN, max over all positions, σ=5, K=8, seed=0"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"method": "saliency"},
            "unknown ranking method 'saliency'; valid choices: " + ", ".join(ranking_method_names()),
        ),
        ({"noise_sigma": 0.0}, "noise sigma must be a finite number > 0, got 0.0"),
        ({"noise_sigma": float("nan")}, "got nan"),
        ({"noise_samples": 0}, "noise samples must be ≥ 1, got 0"),
        ({"aggregate": "median"}, "unknown position aggregation 'median'; valid choices: mean, max"),
    ],
)
def test_bad_ranking_options_name_the_value(options, message):
    with pytest.raises((ValueError, UnknownNameError), match=message.replace("(", r"\(")):
        RankingOptions(**options)


def test_an_experiment_ranked_another_way_shares_captions_not_rankings(experiment):
    other = experiment.with_ranking(RankingOptions(method="random"))
    assert experiment.with_ranking(experiment.settings.ranking) is experiment
    assert experiment.with_ranking(RankingOptions(method="random")) is other
    assert other.baseline(CATEGORY) is experiment.baseline(CATEGORY)
    assert not torch.equal(
        other.ranking("lm.down_proj", CATEGORY).scores, experiment.ranking("lm.down_proj", CATEGORY).scores
    )
    assert other.ranking("lm.down_proj", CATEGORY).key != experiment.ranking("lm.down_proj", CATEGORY).key
    assert other.probe.baseline(CATEGORY) is experiment.probe.baseline(CATEGORY)  # one probe's data and baselines
    assert other.with_ranking(experiment.settings.ranking) is experiment  # back from the sibling: the same one


def test_a_text_models_experiment_ranked_another_way_keeps_its_probe(session):
    text = session.experiment("tiny-llama")
    other = text.with_ranking(RankingOptions(method="random"))
    assert other.probe.name == text.probe.name == "continuation" and other.probe.texts is text.probe.texts


@pytest.mark.parametrize("site_name", ["vision.fc1", "projector"])
def test_vision_side_scores_average_their_own_positions(loaded, images, ragged_captions, site_name):
    """Outside the language model a score averages the component's own positions (image patches), not text
    positions: activation scores equal the mean |a| over patches and images, seen by a hook of the test's own."""
    site = resolve_site(loaded, site_name)
    seen = {layer: [] for layer in range(site.n_layers)}
    handles = [
        module.register_forward_hook(lambda m, args, out, layer=layer: seen[layer].append(out.detach().abs()))
        for layer, module in enumerate(site.modules)
    ]
    try:
        for image, caption in zip(images.images(CATEGORY), ragged_captions, strict=True):
            with torch.no_grad():
                loaded.model(**teacher_forced_batch(loaded, [image], [caption]).inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    expected = torch.stack([torch.stack([a[0].mean(0) for a in seen[layer]]).mean(0) for layer in seen])
    actual = harness_scores(loaded, images, ragged_captions, site_name, method="activation")
    assert expected.shape == actual.shape == (site.n_layers, site.width)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-7)
