"""Masks that differ per batch row: row r of a batch has its own set of switched-off neurons.

One batched forward or generate then evaluates several variants of the same inputs at once — several k of a
threshold search, or the random-k and mean-ablation controls beside the ranked top-k — instead of one
sequential pass each, whose batch is mostly empty on small models. Only hooks can do this (a weight edit is
shared by every row); each hook selects with `torch.where`, so a kept value is passed on bit for bit and a
masked one is exactly zero (or its replacement value), as a single mask's `index_fill` makes it. Nothing in
the model is edited, and the hooks are removed on exit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.core.errors import MaskError
from harness.models.devices import execution_device
from harness.models.masking import (
    PartMasks,
    check_joint_values,
    check_reached,
    check_site_values,
    checked_flat_indices,
    part_values,
)
from harness.models.sites import AnySite, JointSite, ResolvedSite


@dataclass
class _LayerRows:
    layer: int
    module: nn.Linear
    masked: torch.Tensor  # [rows, width] bool: True where row r switches the channel off
    reached: bool = False


class RowMask:
    """Context manager: batch row r switches off `rows[r]` (flat [layer·width + channel] indices of one site;
    empty for an unmasked row). With `values` ([layers, width], e.g. mean activations) the chosen neurons take
    those values instead of zero. Every forward inside must have exactly `len(rows)` batch rows."""

    def __init__(
        self,
        site: ResolvedSite,
        rows: Sequence[torch.Tensor | Iterable[int]],
        values: torch.Tensor | None = None,
        verify: bool = True,
    ):
        if not rows:
            raise MaskError(f"a per-row mask on {site.name} needs at least one row")
        check_site_values(site, values)
        shape = f"{site.n_layers} layers × {site.width} channels"
        flat = [torch.unique(checked_flat_indices(row, site.name, site.size, shape)) for row in rows]
        self.site, self.verify, self.rows = site, verify, len(rows)
        self._values = values
        self._layers: list[_LayerRows] = []
        for layer in sorted(set(torch.cat(flat).div(site.width, rounding_mode="floor").tolist())):
            masked = torch.zeros(len(rows), site.width, dtype=torch.bool)
            for row, indices in enumerate(flat):
                masked[row, indices[indices // site.width == layer] % site.width] = True
            module = site.modules[layer]
            self._layers.append(_LayerRows(layer, module, masked.to(execution_device(module))))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def modes(self) -> set[str]:
        return {"hook"} if self._layers else set()

    def __enter__(self) -> RowMask:
        if self._handles:
            raise MaskError(f"mask on {self.site.name} is already active; it cannot be entered twice")
        for layer in self._layers:
            layer.reached = False
            if self.site.spec.unit == "output":
                hook = layer.module.register_forward_hook(self._output_hook(layer))
            else:
                hook = layer.module.register_forward_pre_hook(self._input_hook(layer))
            self._handles.append(hook)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        if exc_type is None and self.verify:
            check_reached("per-row mask", self.site, self._layers)

    def _switch_off(self, layer: _LayerRows, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[0] != self.rows:
            raise MaskError(
                f"per-row mask on {self.site.location(layer.layer)} has {self.rows} rows but the forward pass "
                f"has a batch of {tensor.shape[0]}: give each batch row its own neuron set"
            )
        layer.reached = True
        masked = layer.masked.to(tensor.device).view(self.rows, *([1] * (tensor.dim() - 2)), -1)
        if self._values is None:
            replacement = tensor.new_zeros(())
        else:
            replacement = self._values[layer.layer].to(device=tensor.device, dtype=tensor.dtype)
        return torch.where(masked, replacement, tensor)

    def _output_hook(self, layer: _LayerRows):
        return lambda module, args, output: self._switch_off(layer, output)

    def _input_hook(self, layer: _LayerRows):
        return lambda module, args: (self._switch_off(layer, args[0]), *args[1:])


class JointRowMask(PartMasks):
    """RowMask over a JointSite: one per part that any row touches."""

    def __init__(
        self,
        site: JointSite,
        rows: Sequence[torch.Tensor | Iterable[int]],
        values: torch.Tensor | None = None,
        verify: bool = True,
    ):
        check_joint_values(site, values)
        flat = [checked_flat_indices(row, site.name, site.size, f"{site.size} neurons") for row in rows]
        masks = []
        for part, offset in zip(site.parts, site.offsets, strict=True):
            local = [row[(row >= offset) & (row < offset + part.size)] - offset for row in flat]
            if any(indices.numel() for indices in local):
                masks.append(RowMask(part, local, values=part_values(values, part, offset), verify=verify))
        super().__init__(site, masks)


def mask_rows(
    site: AnySite,
    rows: Sequence[torch.Tensor | Iterable[int]],
    values: torch.Tensor | None = None,
    verify: bool = True,
) -> RowMask | JointRowMask:
    """The per-row mask for a single or a joint site (`values` shaped like its scores)."""
    mask_type = JointRowMask if isinstance(site, JointSite) else RowMask
    return mask_type(site, rows, values=values, verify=verify)
