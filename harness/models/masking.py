"""Switch neurons off without copying the model, and put every bit back afterwards.

Zeroing output channel j of a Linear is exactly zeroing row j of its weight (and bias entry j); zeroing its input
unit j is exactly zeroing column j. Both cost nothing at run time. Forward hooks do the same where the weight
cannot be edited in place (quantised or offloaded weights); both paths give identical outputs. The original
values are kept and copied back bit for bit on exit, also when the body raises.

Mean ablation (the control that separates "this neuron carries information" from "this neuron's large constant
value is load-bearing") replaces each neuron by a fixed value instead of zero; it always uses hooks, since a
bias-free Linear cannot output a constant.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from harness.core.choices import MASK_MODES
from harness.core.errors import MaskError
from harness.models.devices import execution_device
from harness.models.sites import AnySite, JointSite, ResolvedSite

MaskMode = Literal["auto", "weight", "hook"]


@dataclass
class _LayerMask:
    layer: int
    module: nn.Linear
    channels: torch.Tensor  # sorted unique channel indices, on the device the layer computes on
    mode: str = "weight"
    values: torch.Tensor | None = None  # replacement per channel (mean ablation); None: zero
    saved: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (parameter, original values)
    reached: bool = False


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


class _Reached(Protocol):
    layer: int
    reached: bool  # set by the mask's verification hook when a forward pass goes through the layer


def check_reached(kind: str, site: ResolvedSite, layers: Iterable[_Reached]) -> None:
    """MaskError naming each layer of `site` that no forward pass went through while the mask was active."""
    missed = [site.location(layer.layer) for layer in layers if not layer.reached]
    if missed:
        raise MaskError(
            f"{kind} never reached {', '.join(missed)}: no forward pass went through these modules while it was "
            "active, so the result does not measure it"
        )


class NeuronMask:
    """Context manager that switches off neurons of one site (given as flat [layer·width + channel] indices).

    `values` ([layers, width], e.g. each neuron's mean activation) replaces the neurons by those values instead
    of zero.
    """

    def __init__(
        self,
        site: ResolvedSite,
        flat_indices: torch.Tensor | Iterable[int],
        mode: MaskMode = "auto",
        verify: bool = True,
        values: torch.Tensor | None = None,
    ):
        if mode not in MASK_MODES:
            raise MaskError(f"unknown mask mode {mode!r}; valid modes: {', '.join(MASK_MODES)}")
        check_site_values(site, values)
        if values is not None and mode == "weight":
            raise MaskError("mean ablation (replacement values) needs mask mode 'hook' or 'auto'")
        shape = f"{site.n_layers} layers × {site.width} channels"
        indices = checked_flat_indices(flat_indices, site.name, site.size, shape)
        self.site, self.mode, self.verify = site, mode, verify
        self._layers: list[_LayerMask] = []
        unique = torch.unique(indices)
        for layer in torch.unique(unique // site.width).tolist():
            module = site.modules[layer]
            device = execution_device(module)
            channels = (unique[unique // site.width == layer] % site.width).to(device)
            if values is not None:
                replacement = values[layer, channels.cpu()].to(device)
                self._layers.append(_LayerMask(layer, module, channels, "hook", replacement))
                continue
            if mode == "weight" and not weight_is_editable(module):
                raise MaskError(
                    f"mask mode 'weight' cannot edit {site.location(layer)}: its weight is "
                    f"{uneditable_reason(module)}; use mask mode hook or auto (hooks there)"
                )
            chosen = mode if mode != "auto" else ("weight" if weight_is_editable(module) else "hook")
            self._layers.append(_LayerMask(layer, module, channels, chosen))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._active = False

    @property
    def modes(self) -> set[str]:
        """The mechanisms in use ('weight', 'hook'): recorded with every result."""
        return {layer.mode for layer in self._layers}

    def __enter__(self) -> NeuronMask:
        if self._active:
            raise MaskError(f"mask on {self.site.name} is already active; it cannot be entered twice")
        self._active = True
        try:
            for layer in self._layers:
                layer.reached = False
                if layer.mode == "weight":
                    self._zero_weights(layer)
                else:
                    self._add_zeroing_hook(layer)
                if self.verify:
                    self._add_verification_hook(layer)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._restore()
        if exc_type is None and self.verify:
            check_reached("mask", self.site, self._layers)

    # -- weight editing ---------------------------------------------------------------------------------------
    def _zero_weights(self, layer: _LayerMask) -> None:
        weight, channels = layer.module.weight, layer.channels
        with torch.no_grad():
            if self.site.spec.unit == "output":
                targets = [weight] + ([layer.module.bias] if layer.module.bias is not None else [])
                for parameter in targets:
                    original = parameter.index_select(0, channels).clone()
                    parameter.index_fill_(0, channels, 0)
                    layer.saved.append((parameter, original))  # only what was really changed is restored
            else:
                original = weight.index_select(1, channels).clone()
                weight.index_fill_(1, channels, 0)
                layer.saved.append((weight, original))

    def _restore(self) -> None:
        """Undo everything, continuing past a failing parameter so the others are still restored."""
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        self._active = False
        failures: list[str] = []
        dim = 0 if self.site.spec.unit == "output" else 1
        with torch.no_grad():
            for layer in reversed(self._layers):
                for parameter, original in reversed(layer.saved):
                    try:
                        parameter.index_copy_(dim, layer.channels, original)
                    except RuntimeError as error:
                        failures.append(f"{self.site.location(layer.layer)}: {error}")
                layer.saved.clear()
        if failures:
            raise MaskError("could not restore the masked weights; the model is modified: " + "; ".join(failures))

    # -- hooks ------------------------------------------------------------------------------------------------
    def _add_zeroing_hook(self, layer: _LayerMask) -> None:
        channels, values = layer.channels, layer.values

        def switch_off(tensor: torch.Tensor) -> torch.Tensor:
            index = channels.to(tensor.device)
            if values is None:
                return tensor.index_fill(-1, index, 0)
            replacement = values.to(device=tensor.device, dtype=tensor.dtype).expand(*tensor.shape[:-1], -1)
            return tensor.index_copy(-1, index, replacement.contiguous())

        if self.site.spec.unit == "output":
            self._handles.append(layer.module.register_forward_hook(lambda m, a, output: switch_off(output)))
        else:
            self._handles.append(
                layer.module.register_forward_pre_hook(lambda m, args: (switch_off(args[0]), *args[1:]))
            )

    def _add_verification_hook(self, layer: _LayerMask) -> None:
        """On the first forward through the module, check that the masked neurons really hold their new values."""
        site, channels = self.site, layer.channels
        expected = "zero" if layer.values is None else "their replacement values"

        def check(values: torch.Tensor, what: str) -> None:
            if layer.reached:
                return
            seen = values.index_select(-1, channels.to(values.device))
            wrong = (
                seen.count_nonzero()
                if layer.values is None
                else (seen != layer.values.to(device=seen.device, dtype=seen.dtype)).count_nonzero()
            )
            if wrong:
                raise MaskError(
                    f"mask on {site.location(layer.layer)} did not take effect: {what} of the masked channels "
                    f"are not {expected} during the forward pass (mode {layer.mode!r}); weights that are "
                    "offloaded or re-materialised per call need mode='hook'"
                )
            layer.reached = True

        if site.spec.unit == "output":
            self._handles.append(layer.module.register_forward_hook(lambda m, a, out: check(out, "outputs")))
        elif layer.mode == "hook":
            self._handles.append(layer.module.register_forward_pre_hook(lambda m, args: check(args[0], "inputs")))
        else:
            self._handles.append(
                layer.module.register_forward_pre_hook(lambda m, args: check(m.weight, "weight columns"))
            )


class PartMasks:
    """A mask over a JointSite made of one mask per part: entered together (a part that fails to enter undoes
    the parts before it) and undone in reverse order (two parts may edit the same weight: down_proj rows and
    its input columns)."""

    def __init__(self, site: JointSite, masks: list):
        self.site, self._masks = site, masks
        self._stack: ExitStack | None = None

    @property
    def modes(self) -> set[str]:
        return set().union(*(mask.modes for mask in self._masks))

    def __enter__(self):
        if self._stack is not None:
            raise MaskError(f"mask on {self.site.name} is already active; it cannot be entered twice")
        with ExitStack() as stack:
            for mask in self._masks:
                stack.enter_context(mask)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        stack, self._stack = self._stack, None
        stack.__exit__(exc_type, exc, traceback)


def check_site_values(site: ResolvedSite, values: torch.Tensor | None) -> None:
    """A single site's replacement values are [layers, width], one per neuron."""
    if values is not None and tuple(values.shape) != (site.n_layers, site.width):
        raise MaskError(
            f"replacement values for {site.name} have shape {tuple(values.shape)}; expected "
            f"({site.n_layers}, {site.width}) (layers × channels)"
        )


def check_joint_values(site: JointSite, values: torch.Tensor | None) -> None:
    """A joint site's replacement values are flat, one per neuron of the pool."""
    if values is not None and tuple(values.shape) != (site.size,):
        raise MaskError(
            f"replacement values for {site.name} have shape {tuple(values.shape)}; expected ({site.size},)"
        )


def part_values(values: torch.Tensor | None, part: ResolvedSite, offset: int) -> torch.Tensor | None:
    """The [layers, width] slice of a joint site's flat replacement values that belongs to `part`."""
    return None if values is None else values[offset : offset + part.size].reshape(part.n_layers, -1)


class JointMask(PartMasks):
    """NeuronMask over a JointSite: one per part that holds chosen neurons."""

    def __init__(
        self,
        site: JointSite,
        flat_indices: torch.Tensor | Iterable[int],
        mode: MaskMode = "auto",
        verify: bool = True,
        values: torch.Tensor | None = None,
    ):
        indices = checked_flat_indices(flat_indices, site.name, site.size, f"{site.size} neurons")
        check_joint_values(site, values)
        masks = [
            NeuronMask(part, local, mode=mode, verify=verify, values=part_values(values, part, offset))
            for part, offset, local in site.split(indices)
        ]
        super().__init__(site, masks)


def checked_flat_indices(
    flat_indices: torch.Tensor | Iterable[int], name: str, size: int, shape: str
) -> torch.Tensor:
    """Indices as a flat long CPU tensor, each checked to lie in [0, size)."""
    indices = torch.as_tensor(list(flat_indices) if not torch.is_tensor(flat_indices) else flat_indices)
    indices = indices.to(torch.long).reshape(-1).cpu()
    bad = indices[(indices < 0) | (indices >= size)]
    if bad.numel():
        raise MaskError(
            f"neuron indices {bad[:5].tolist()} are outside site {name} "
            f"({shape}: valid flat indices 0..{size - 1})"
        )
    return indices


def mask_neurons(
    site: AnySite,
    flat_indices: torch.Tensor | Iterable[int],
    mode: MaskMode = "auto",
    verify: bool = True,
    values: torch.Tensor | None = None,
) -> NeuronMask | JointMask:
    """The mask for a single or a joint site; `values` has the shape of its scores ([layers, width] or flat)."""
    mask_type = JointMask if isinstance(site, JointSite) else NeuronMask
    return mask_type(site, flat_indices, mode=mode, verify=verify, values=values)
