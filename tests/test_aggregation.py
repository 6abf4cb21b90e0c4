"""Position aggregation (harness.science.aggregation): each image's mean or max over the positions its site
reads, summed over images, computed here element by element."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.core.errors import UnknownNameError
from harness.models.sites import SITES, ResolvedSite
from harness.science.aggregation import summed_over_images


def one_layer_site(name: str, width: int) -> ResolvedSite:
    return ResolvedSite(spec=SITES[name], modules=(nn.Linear(2, width),), width=width)


VALUES = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4).sin()  # [images, positions, channels]
WEIGHTS = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])  # image 0 reads positions 0 and 1, image 1 position 2


def test_language_model_sites_read_the_weighted_text_positions():
    site = one_layer_site("lm.down_proj", 4)
    mean = 0.25 * VALUES[0, 0] + 0.75 * VALUES[0, 1] + VALUES[1, 2]
    best = torch.maximum(VALUES[0, 0], VALUES[0, 1]) + VALUES[1, 2]
    torch.testing.assert_close(summed_over_images(site, VALUES, WEIGHTS, "mean"), mean)
    assert torch.equal(summed_over_images(site, VALUES, WEIGHTS, "max"), best)


def test_other_sites_read_all_their_positions_across_every_crop():
    """Four crops of two images (LLaVA-NeXT tiles): the mean (or max) over each crop's positions, averaged over
    the crops and counted once per image."""
    site = one_layer_site("vision.fc2", 4)
    crops = torch.cat([VALUES, VALUES.flip(1) * 2])
    mean = torch.stack([crops[c, p] for c in range(4) for p in range(3)]).mean(0) * 2
    best = torch.stack([torch.stack([crops[c, p] for p in range(3)]).amax(0) for c in range(4)]).mean(0) * 2
    torch.testing.assert_close(summed_over_images(site, crops, WEIGHTS, "mean"), mean)
    torch.testing.assert_close(summed_over_images(site, crops, WEIGHTS, "max"), best)


def test_an_unknown_aggregation_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown position aggregation 'median'; valid choices: mean, max"):
        summed_over_images(one_layer_site("lm.down_proj", 4), VALUES, WEIGHTS, "median")
