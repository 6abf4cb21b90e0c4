"""Per-row masks: each row of one batched pass equals that row's neuron set evaluated alone, bit for bit; the
model is left as it was; bad rows and batch mismatches are clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.core.errors import MaskError
from harness.models.captioning import generate_captions
from harness.models.masking import MaskPlan, NeuronMask, SiteMask, mask_neurons
from harness.models.prompts import encode_prompts
from harness.models.row_masks import RowMask, mask_rows
from harness.models.sites import ResolvedSite, get_site_spec, resolve_any_site, resolve_site

MAX_NEW_TOKENS = 8
SITES = ["lm.down_proj", "lm.mlp_hidden", "vision.fc2", "projector", "lm.down_proj+lm.gate_proj"]


@pytest.fixture(scope="module")
def rows_of_images(images):
    """One image repeated: the rows differ only in their masks."""
    return [images.images("circle")[0]] * 4


def row_sets(site, seed: int = 0) -> list[torch.Tensor]:
    """Four rows: nothing masked, one neuron, four neurons, a random quarter of the site."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(site.size, generator=generator)
    return [order[:0], order[:1], order[:4], order[: site.size // 4]]


@torch.no_grad()
def logits(loaded, inputs) -> torch.Tensor:
    return loaded.model(**inputs, use_cache=False).logits


@pytest.mark.parametrize("name", SITES)
def test_each_row_equals_its_mask_alone(name, loaded, rows_of_images, unmodified):
    """Logits of a prompt forward and the greedy captions: row r of the per-row pass is bit for bit what a
    hook mask of row r's neurons gives on the same batch; unmasked row r = 0 equals the unmasked model."""
    site = resolve_any_site(loaded, name)
    rows = row_sets(site)
    inputs = encode_prompts(loaded, rows_of_images)
    with mask_rows(site, rows) as mask:
        assert mask.modes == {"hook"}
        together = logits(loaded, inputs)
        captions = generate_captions(loaded, rows_of_images, max_new_tokens=MAX_NEW_TOKENS, batch_size=4)
    for row, indices in enumerate(rows):
        with mask_neurons(site, indices, mode="hook", verify=indices.numel() > 0):
            alone = logits(loaded, inputs)
            expected = generate_captions(loaded, rows_of_images, max_new_tokens=MAX_NEW_TOKENS, batch_size=4)
        assert torch.equal(together[row], alone[row]), (name, row)
        assert captions[row].token_ids == expected[row].token_ids, (name, row)
    assert not torch.equal(together[0], together[3])  # the masks have an effect


def test_replacement_values_per_row_equal_a_mean_ablation_alone(loaded, rows_of_images, unmodified):
    site = resolve_site(loaded, "lm.down_proj")
    values = torch.linspace(-1, 1, site.size).view(site.n_layers, site.width)
    rows = row_sets(site, seed=1)
    inputs = encode_prompts(loaded, rows_of_images)
    with RowMask(site, rows, values=values):
        together = logits(loaded, inputs)
    for row, indices in enumerate(rows[1:], start=1):
        with NeuronMask(site, indices, mode="hook", values=values):
            assert torch.equal(together[row], logits(loaded, inputs)[row]), row


def test_hooks_are_removed_on_exit_and_on_exceptions(loaded, rows_of_images, unmodified):
    site = resolve_site(loaded, "lm.down_proj")
    inputs = encode_prompts(loaded, rows_of_images)
    unmasked = logits(loaded, inputs)
    with pytest.raises(RuntimeError, match="inside"), RowMask(site, row_sets(site)):
        logits(loaded, inputs)
        raise RuntimeError("inside the mask")
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in site.modules)
    assert torch.equal(logits(loaded, inputs), unmasked)


def test_a_batch_of_another_size_is_a_clear_error(loaded, rows_of_images, unmodified):
    site = resolve_site(loaded, "lm.down_proj")
    mask = RowMask(site, row_sets(site))
    with pytest.raises(MaskError, match=r"has 4 rows but the forward pass has a batch of 2"), mask:
        logits(loaded, encode_prompts(loaded, rows_of_images[:2]))


def test_bad_rows_are_rejected_before_anything_is_hooked(loaded):
    site = resolve_site(loaded, "lm.down_proj")
    with pytest.raises(MaskError, match=rf"outside site lm.down_proj .*valid flat indices 0..{site.size - 1}"):
        RowMask(site, [[0], [site.size]])
    with pytest.raises(MaskError, match="needs at least one row"):
        RowMask(site, [])
    with pytest.raises(MaskError, match=r"replacement values for lm\.down_proj have shape"):
        RowMask(site, [[0]], values=torch.zeros(3))


def test_a_per_row_mask_needs_hooks():
    site = ResolvedSite(spec=get_site_spec("lm.down_proj"), modules=(nn.Linear(6, 4),), width=4)
    with pytest.raises(MaskError, match="a per-row mask needs mask mode 'hook' or 'auto'"):
        SiteMask(MaskPlan.build(site, [[0], [1]], per_row=True), mode="weight")


def test_a_per_row_mask_is_verified_like_any_mask():
    """Each row's switched-off channels are checked in the first forward (here the switching hook disappears
    behind the mask's back), and a mask no forward pass went through is an error on exit."""
    linear = nn.Linear(6, 4)
    site = ResolvedSite(spec=get_site_spec("lm.down_proj"), modules=(linear,), width=4)
    mask = RowMask(site, [[1], [], [2, 3]], values=torch.full((1, 4), 9.0))
    with (
        pytest.raises(MaskError, match=r"per-row mask on lm\.down_proj layer 0 .* are not their replacement"),
        mask,
    ):
        mask._handles[0].remove()  # the replacing hook; the verification hook stays
        linear(torch.randn(3, 6))
    with pytest.raises(MaskError, match=r"per-row mask never reached lm\.down_proj layer 0"), RowMask(site, [[1]]):
        pass
