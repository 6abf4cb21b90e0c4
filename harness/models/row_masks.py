"""Masks that differ per batch row: row r of a batch has its own set of switched-off neurons.

One batched forward or generate then evaluates several variants of the same inputs at once — several k of a
threshold search, or the random-k and mean-ablation controls beside the ranked top-k — instead of one
sequential pass each, whose batch is mostly empty on small models. It is a mask plan with one row per batch row,
carried out by forward hooks only (a weight edit is shared by every row; harness.models.masking): a kept value is
passed on bit for bit and a masked one is exactly zero (or its replacement value), as in an ordinary mask, so row r
equals row r's neuron set masked alone. Nothing in the model is edited, and the hooks are removed on exit, also
when the body raises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.core.errors import MaskError
from harness.models.masking import Indices, MaskPlan, SiteMask
from harness.models.sites import Site


class RowMask(SiteMask):
    """Context manager: batch row r switches off `rows[r]` (flat indices of a single or joint site; empty for an
    unmasked row). With `values` (shaped like the site's scores, e.g. mean activations) the chosen neurons take
    those values instead of zero. Every forward inside must have exactly `len(rows)` batch rows."""

    def __init__(
        self, site: Site, rows: Sequence[Indices], values: torch.Tensor | None = None, verify: bool = True
    ):
        if not rows:
            raise MaskError(f"a per-row mask on {site.name} needs at least one row")
        super().__init__(MaskPlan.build(site, rows, values, per_row=True), mode="hook", verify=verify)


JointRowMask = RowMask  # the per-row mask over a JointSite: one class serves every Site


def mask_rows(
    site: Site, rows: Sequence[Indices], values: torch.Tensor | None = None, verify: bool = True
) -> RowMask:
    """The per-row mask for a single or a joint site (`values` shaped like its scores)."""
    return RowMask(site, rows, values=values, verify=verify)
