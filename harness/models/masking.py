"""Switch neurons off without copying the model, and put every bit back afterwards.

A mask is a plan and one mechanism that carries it out. The plan (MaskPlan) says which neurons of a site to switch
off in which batch row, and how: to zero, or to given replacement values (mean ablation, the control that
separates "this neuron carries information" from "this neuron's large constant value is load-bearing"). An
ordinary mask has one row, applied to every batch row; a per-row mask (harness.models.row_masks) one row per batch
row. The mechanism (SiteMask) applies the plan at each of the site's hook points that it touches, one of two ways
that give identical outputs:

- weight edit: zeroing output channel j of a Linear is exactly zeroing row j of its weight (and bias entry j);
  zeroing its input unit j is exactly zeroing column j. It costs nothing at run time; the original values are
  copied back bit for bit on exit, also when the body raises. Used for a one-row plan to zero on a weight that is
  a plain float tensor in memory, in mask mode 'weight' or 'auto'.
- forward hooks: the switched-off entries of the site's tensor (a module's output, or its input for input units)
  are replaced with `torch.where`, every other value passed on bit for bit. Used for everything else: per-row
  plans (a weight edit is shared by every row), replacement values (a bias-free Linear cannot output a constant),
  offloaded or quantised weights, and mask mode 'hook'.

Unless told not to, a mask verifies in the first forward pass through each layer that the switched-off neurons
really hold their new values, and on exit that a forward pass went through every layer it masks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from harness.core.choices import MASK_MODES
from harness.core.errors import MaskError
from harness.models.devices import execution_device
from harness.models.sites import HookPoint, Site

MaskMode = Literal["auto", "weight", "hook"]
Indices = torch.Tensor | Iterable[int]


def weight_is_editable(module: nn.Linear) -> bool:
    """A plain floating-point weight that lives in memory (not meta/offloaded, not quantised)."""
    return uneditable_reason(module) is None


def uneditable_reason(module: nn.Linear) -> str | None:
    """Why a weight mask cannot edit `module`'s weight, in words for an error; None when it can."""
    weight = module.weight
    if weight.device.type == "meta":
        return "offloaded by accelerate (a meta tensor its hook loads at each forward)"
    if not isinstance(weight, nn.Parameter) or not weight.is_floating_point():
        return f"not a plain float parameter ({type(weight).__name__}, {weight.dtype}: quantised?)"
    if weight.is_inference():
        return "an inference tensor, which refuses in-place edits outside inference mode"
    return None


def checked_flat_indices(flat_indices: Indices, site: Site) -> torch.Tensor:
    """Indices as a flat long CPU tensor, each checked to lie in [0, site.size)."""
    indices = torch.as_tensor(list(flat_indices) if not torch.is_tensor(flat_indices) else flat_indices)
    indices = indices.to(torch.long).reshape(-1).cpu()
    bad = indices[(indices < 0) | (indices >= site.size)]
    if bad.numel():
        raise MaskError(
            f"neuron indices {bad[:5].tolist()} are outside site {site.name} "
            f"({site.layout}: valid flat indices 0..{site.size - 1})"
        )
    return indices


@dataclass(frozen=True)
class PointPlan:
    """A plan's share at one hook point: the channels each row switches off, and what they become."""

    point: HookPoint
    switched_off: torch.Tensor  # [rows, width] bool
    replacement: torch.Tensor | None  # [width] value of each channel (mean ablation); None: zero


@dataclass(frozen=True)
class MaskPlan:
    """Which neurons of `site` to switch off in which batch row, and how. `per_row`: batch row r takes row r (a
    forward pass must have exactly `rows` batch rows); else the one row applies to every batch row."""

    site: Site
    rows: int
    per_row: bool
    replacing: bool  # replacement values instead of zero
    points: tuple[PointPlan, ...]  # the hook points any row touches, in flat-index order

    @classmethod
    def build(
        cls, site: Site, rows: Sequence[Indices], values: torch.Tensor | None = None, *, per_row: bool
    ) -> MaskPlan:
        """The plan switching off `rows[r]` (flat indices of `site`, duplicates allowed) in row r, to zero or to
        `values` (shaped like the site's scores: one value per neuron)."""
        if values is not None and tuple(values.shape) != site.score_shape:
            raise MaskError(
                f"replacement values for {site.name} have shape {tuple(values.shape)}; expected "
                f"{site.score_shape}, the shape of its scores ({site.layout})"
            )
        switched: dict[int, torch.Tensor] = {}
        for row, indices in enumerate(rows):
            which, channels = site.locate(checked_flat_indices(indices, site))
            for index in torch.unique(which).tolist():
                if index not in switched:
                    switched[index] = torch.zeros(len(rows), site.hook_points[index].width, dtype=torch.bool)
                switched[index][row, channels[which == index]] = True
        flat_values = None if values is None else values.reshape(-1)
        points = []
        for index in sorted(switched):
            point = site.hook_points[index]
            replacement = None if flat_values is None else flat_values[point.start : point.start + point.width]
            points.append(PointPlan(point, switched[index], replacement))
        return cls(site, len(rows), per_row, values is not None, tuple(points))


@dataclass
class _Switch:
    """A PointPlan made ready on the device its layer computes on, with the mechanism chosen for it."""

    point: HookPoint
    mechanism: str  # 'weight' or 'hook'
    switched_off: torch.Tensor  # [rows, width] bool, as in the PointPlan
    channels: torch.Tensor  # the channels any row switches off, sorted: the weight rows or columns to edit
    replacement: torch.Tensor | None  # [width], as in the PointPlan
    reached: bool = False  # set by the verification hook when a forward pass goes through the layer


class SiteMask:
    """Context manager that carries out a MaskPlan: weight edits where the plan and the weight allow them and
    `mode` asks for them (see the module docstring), forward hooks elsewhere; `verify` checks the new values in
    the first forward through each layer and, on exit, that every masked layer was reached."""

    def __init__(self, plan: MaskPlan, mode: MaskMode = "auto", verify: bool = True):
        if mode not in MASK_MODES:
            raise MaskError(f"unknown mask mode {mode!r}; valid modes: {', '.join(MASK_MODES)}")
        if mode == "weight" and plan.per_row:
            raise MaskError(
                "a per-row mask needs mask mode 'hook' or 'auto': a weight edit is shared by every row"
            )
        if mode == "weight" and plan.replacing:
            raise MaskError(
                "mean ablation (replacement values) needs mask mode 'hook' or 'auto': a weight edit can only zero"
            )
        self.plan, self.site, self.verify = plan, plan.site, verify
        self.kind = "per-row mask" if plan.per_row else "mask"
        self._switches = [self._prepared(part, mode) for part in plan.points]
        self._handles: list[RemovableHandle] = []
        self._edits: list[tuple[HookPoint, nn.Parameter, int, torch.Tensor, torch.Tensor]] = []
        self._active = False

    @property
    def modes(self) -> set[str]:
        """The mechanisms in use ('weight', 'hook'): recorded with every result."""
        return {switch.mechanism for switch in self._switches}

    def _prepared(self, part: PointPlan, mode: MaskMode) -> _Switch:
        """`part` on its layer's device, with its mechanism: a weight edit is refused here, before anything is
        touched, when mode 'weight' meets a weight it cannot edit."""
        point, device = part.point, execution_device(part.point.module)
        if self.plan.per_row or self.plan.replacing or mode == "hook":
            mechanism = "hook"
        elif weight_is_editable(point.module):
            mechanism = "weight"
        elif mode == "weight":
            raise MaskError(
                f"mask mode 'weight' cannot edit {point.location}: its weight is "
                f"{uneditable_reason(point.module)}; use mask mode hook or auto (hooks there)"
            )
        else:
            mechanism = "hook"
        switched_off = part.switched_off.to(device)
        channels = part.switched_off.any(0).nonzero().reshape(-1).to(device)
        replacement = None if part.replacement is None else part.replacement.to(device)
        return _Switch(point, mechanism, switched_off, channels, replacement)

    def __enter__(self) -> SiteMask:
        if self._active:
            raise MaskError(f"mask on {self.site.name} is already active; it cannot be entered twice")
        self._active = True
        try:
            for switch in self._switches:
                switch.reached = False
                if switch.mechanism == "weight":
                    self._edit_weight(switch)
                else:
                    self._handles.append(
                        switch.point.hook(lambda tensor, switch=switch: self._switch(switch, tensor))
                    )
                if self.verify:
                    self._handles.append(self._verification_hook(switch))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._restore()
        if exc_type is None and self.verify:
            missed = [switch.point.location for switch in self._switches if not switch.reached]
            if missed:
                raise MaskError(
                    f"{self.kind} never reached {', '.join(missed)}: no forward pass went through these modules "
                    "while it was active, so the result does not measure it"
                )

    # -- weight edit --------------------------------------------------------------------------------------------
    def _edit_weight(self, switch: _Switch) -> None:
        """Zero the weight rows and bias entries of output channels, or the weight columns of input units,
        keeping only what is really changed, to be copied back."""
        module, channels = switch.point.module, switch.channels
        if switch.point.unit == "output":
            targets = [(module.weight, 0)] + ([(module.bias, 0)] if module.bias is not None else [])
        else:
            targets = [(module.weight, 1)]
        with torch.no_grad():
            for parameter, dim in targets:
                original = parameter.index_select(dim, channels).clone()
                parameter.index_fill_(dim, channels, 0)
                self._edits.append((switch.point, parameter, dim, channels, original))

    def _restore(self) -> None:
        """Undo everything, latest first (two parts of a joint site may edit one weight: down_proj's rows and its
        input columns), continuing past a failing parameter so that the others are still restored."""
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        self._active = False
        failures: list[str] = []
        with torch.no_grad():
            for point, parameter, dim, channels, original in reversed(self._edits):
                try:
                    parameter.index_copy_(dim, channels, original)
                except RuntimeError as error:
                    failures.append(f"{point.location}: {error}")
        self._edits.clear()
        if failures:
            raise MaskError("could not restore the masked weights; the model is modified: " + "; ".join(failures))

    # -- hooks --------------------------------------------------------------------------------------------------
    def _rows_of(self, switch: _Switch, tensor: torch.Tensor, switched_off: torch.Tensor) -> torch.Tensor:
        """`switched_off` ([rows, channels]) shaped to broadcast against `tensor` ([batch, ..., channels]): the one
        row against every batch row, or row r against batch row r of a per-row plan."""
        if not self.plan.per_row:
            return switched_off[0].to(tensor.device)
        if tensor.shape[0] != self.plan.rows:
            raise MaskError(
                f"per-row mask on {switch.point.location} has {self.plan.rows} rows but the forward pass has a "
                f"batch of {tensor.shape[0]}: give each batch row its own neuron set"
            )
        return switched_off.to(tensor.device).view(self.plan.rows, *([1] * (tensor.dim() - 2)), -1)

    def _switch(self, switch: _Switch, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` with the switched-off channels at zero or their replacement values, the rest untouched."""
        if switch.replacement is None:
            replacement = tensor.new_zeros(())
        else:
            replacement = switch.replacement.to(device=tensor.device, dtype=tensor.dtype)
        return torch.where(self._rows_of(switch, tensor, switch.switched_off), replacement, tensor)

    def _verification_hook(self, switch: _Switch) -> RemovableHandle:
        """On the first forward through the layer, check that the switched-off neurons hold their new values: in
        the site's tensor, or, where input units are masked by a weight edit, in the weight's columns."""
        if switch.mechanism == "weight" and switch.point.unit == "input":
            return switch.point.module.register_forward_pre_hook(
                lambda module, args: self._verify(switch, module.weight, "weight columns")
            )
        what = f"{switch.point.unit}s"
        return switch.point.hook(lambda tensor: self._verify(switch, tensor, what))

    def _verify(self, switch: _Switch, tensor: torch.Tensor, what: str) -> None:
        """Once, at the first forward through the layer: MaskError unless every switched-off channel of `tensor`
        holds its new value; then the layer counts as reached."""
        if switch.reached:
            return
        seen = tensor.index_select(-1, switch.channels.to(tensor.device))
        if switch.replacement is None:
            expected, new_values = "zero", seen.new_zeros(())
        else:
            expected = "their replacement values"
            new_values = switch.replacement[switch.channels].to(device=seen.device, dtype=seen.dtype)
        switched_off = self._rows_of(switch, tensor, switch.switched_off[:, switch.channels])
        if ((seen != new_values) & switched_off).any():
            raise MaskError(
                f"{self.kind} on {switch.point.location} did not take effect: {what} of the masked channels are "
                f"not {expected} during the forward pass (mode {switch.mechanism!r}); weights that are offloaded "
                "or re-materialised per call need mode='hook'"
            )
        switch.reached = True


class NeuronMask(SiteMask):
    """Context manager that switches off neurons of a site, single or joint (given as flat indices into its
    scores), in every batch row. `values` (shaped like the site's scores, e.g. each neuron's mean activation)
    replaces the neurons by those values instead of zero."""

    def __init__(
        self,
        site: Site,
        flat_indices: Indices,
        mode: MaskMode = "auto",
        verify: bool = True,
        values: torch.Tensor | None = None,
    ):
        super().__init__(MaskPlan.build(site, [flat_indices], values, per_row=False), mode=mode, verify=verify)


JointMask = NeuronMask  # the name the runner gives a mask over a JointSite: one class serves every Site


def mask_neurons(
    site: Site,
    flat_indices: Indices,
    mode: MaskMode = "auto",
    verify: bool = True,
    values: torch.Tensor | None = None,
) -> NeuronMask:
    """The mask for a single or a joint site; `values` has the shape of its scores ([layers, width] or flat)."""
    return NeuronMask(site, flat_indices, mode=mode, verify=verify, values=values)
