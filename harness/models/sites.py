"""Sites: named sets of neurons, resolved by probing the module tree and checked against the config.

A neuron is addressed as (site, layer, channel). A site is one Linear per layer of a model component (language
model, vision tower, Q-Former) or the projector's Linear, its neurons the output channels or the input units.
Several sites joined by '+' (or a named pool) are ranked and masked as one joint site. Both kinds are a `Site`:
a row of hook points (one per layer and part: the Linear and which side of it holds the neurons) over which the
flat neuron indices of the site's scores run, which is all that masks, rankings and reports need to know.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from harness.core.errors import InvalidKError, SiteResolutionError, UnknownNameError

Unit = Literal["output", "input"]
UNITS = ("output", "input")
JOINT = "+"  # lm.down_proj+lm.gate_proj: both sites ranked together


@dataclass(frozen=True)
class SiteSpec:
    """A kind of neuron: the output channels (or input units) of one Linear in every layer of a component."""

    name: str
    component: str  # harness.models.families.COMPONENTS
    module: str  # attribute path below each layer ('' = the component's module itself)
    unit: Unit
    width_field: str  # field(s) of the component's config whose product is the channels per layer ('a*b')
    description: str

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise UnknownNameError(f"unit of site {self.name!r}", self.unit, UNITS)

    def width(self, config) -> int:
        """Channels per layer, from the component's config; a missing `head_dim` is hidden_size / heads."""
        width = 1
        for name in self.width_field.split("*"):
            value = getattr(config, name, None)
            if value is None and name == "head_dim":
                value = config.hidden_size // config.num_attention_heads
            width *= value
        return width


SITES: dict[str, SiteSpec] = {
    spec.name: spec
    for spec in (
        SiteSpec("lm.gate_proj", "lm", "mlp.gate_proj", "output", "intermediate_size", "FFN gate outputs"),
        SiteSpec("lm.up_proj", "lm", "mlp.up_proj", "output", "intermediate_size", "FFN up projection outputs"),
        SiteSpec("lm.down_proj", "lm", "mlp.down_proj", "output", "hidden_size", "FFN down projection outputs"),
        SiteSpec("lm.mlp_hidden", "lm", "mlp.down_proj", "input", "intermediate_size", "FFN hidden act(gate)·up"),
        SiteSpec("lm.o_proj", "lm", "self_attn.o_proj", "output", "hidden_size", "attention output projection"),
        SiteSpec("lm.q_proj", "lm", "self_attn.q_proj", "output", "num_attention_heads*head_dim",
                 "attention query projection outputs"),
        SiteSpec("lm.k_proj", "lm", "self_attn.k_proj", "output", "num_key_value_heads*head_dim",
                 "attention key projection outputs"),
        SiteSpec("lm.v_proj", "lm", "self_attn.v_proj", "output", "num_key_value_heads*head_dim",
                 "attention value projection outputs"),
        SiteSpec("vision.fc1", "vision", "mlp.fc1", "output", "intermediate_size", "vision MLP hidden units"),
        SiteSpec("vision.fc2", "vision", "mlp.fc2", "output", "hidden_size", "vision MLP outputs"),
        SiteSpec("qformer.fc1", "qformer", "intermediate_query.dense", "output", "intermediate_size",
                 "Q-Former FFN hidden units (query tokens)"),
        SiteSpec("qformer.fc2", "qformer", "output_query.dense", "output", "hidden_size",
                 "Q-Former FFN outputs (query tokens)"),
        SiteSpec("projector", "projector", "", "output", "hidden_size",
                 "multimodal projector outputs (LLaVA linear_1, InstructBLIP language_projection)"),
    )
}  # fmt: skip


# Named pools of sites, ranked as one: `lm.all_linear` is the PCICN authors' module pool, every Linear under the
# language model's attention and MLP (their hooks also catch the MLP's activation function and the post-attention
# norm, which are not Linears: zeroing an act_fn channel is zeroing an lm.mlp_hidden unit).
POOLS = {
    "lm.all_linear": (
        "lm.q_proj", "lm.k_proj", "lm.v_proj", "lm.o_proj", "lm.gate_proj", "lm.up_proj", "lm.down_proj",
    ),
}  # fmt: skip


class Neuron(NamedTuple):
    site: str
    layer: int
    channel: int


@dataclass(frozen=True)
class HookPoint:
    """One layer of a single site: the Linear whose output channels (or input units) hold `width` of the site's
    neurons, the first of them at flat index `start` of the site (or of the joint site it is part of)."""

    site: str
    layer: int
    module: nn.Linear
    unit: Unit
    start: int
    width: int
    location: str  # the layer in the names a user gives and reports show (ResolvedSite.location)

    def hook(self, transform: Callable[[torch.Tensor], torch.Tensor | None]) -> RemovableHandle:
        """Call `transform` on the site's tensor here (the module's output, or its input for input units) in every
        forward pass, until the handle is removed; a tensor it returns replaces that one."""
        if self.unit == "output":
            return self.module.register_forward_hook(lambda module, args, output: transform(output))

        def on_input(module: nn.Module, args: tuple) -> tuple | None:
            replaced = transform(args[0])
            return None if replaced is None else (replaced, *args[1:])

        return self.module.register_forward_pre_hook(on_input)


@runtime_checkable
class Site(Protocol):
    """What every site offers, single (ResolvedSite) or joint (JointSite), so that masks, rankings and reports need
    not ask which kind they hold. Its neurons have the flat indices 0..size-1 of its scores: its hook points one
    after the other (layer by layer, part after part), each `width` channels wide."""

    name: str  # as users give it: 'lm.down_proj', 'lm.down_proj+lm.gate_proj', or a pool's name
    parts: tuple[ResolvedSite, ...]  # the single sites it is made of; a single site is its own only part
    hook_points: tuple[HookPoint, ...]  # one per (part, layer), in flat-index order
    layout: str  # its shape in words, for errors: '2 layers × 64 channels', '128 + 256 neurons'
    score_shape: tuple[int, ...]  # the shape of its scores, its mean activations and a mask's replacement values

    @property
    def size(self) -> int:
        """Number of neurons in the site across all layers (and parts): the largest valid k."""
        return sum(point.width for point in self.hook_points)

    def locate(self, flat_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index into hook_points, channel there) of each flat index of a long tensor."""
        starts = torch.tensor([point.start for point in self.hook_points])
        which = torch.bucketize(flat_indices, starts[1:], right=True)
        return which, flat_indices - starts[which]

    def neurons(self, flat_indices: torch.Tensor) -> list[Neuron]:
        """(site, layer, channel) of each flat index, in the order given; the neurons of a joint site name the part
        they are in."""
        which, channels = self.locate(torch.as_tensor(flat_indices, dtype=torch.long).reshape(-1))
        points = self.hook_points
        return [
            Neuron(points[index].site, points[index].layer, channel)
            for index, channel in zip(which.tolist(), channels.tolist(), strict=True)
        ]

    def check_k(self, k: int) -> int:
        """k as a Python int; any integer type (numpy, 0-d tensor) is accepted, bools and fractions are not."""
        is_bool = isinstance(k, bool) or str(getattr(k, "dtype", "")) in ("torch.bool", "bool")
        try:
            value = None if is_bool else operator.index(k)
        except TypeError:
            value = None
        if value is None or value < 0 or value > self.size:
            raise InvalidKError(
                f"k={k!r} is invalid for site {self.name}: it has {self.layout}, so k must be an integer in "
                f"[0, {self.size}]"
            )
        return value

    @contextmanager
    def watched(self, callback: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
        """Call `callback(point, activation)` with the site's tensor at each hook point (`point` indexes
        hook_points: the layer, for a single site) in every forward pass inside the block, leaving the tensor as
        it is; the hooks are removed on exit, also on exceptions."""

        def observer(index: int) -> Callable[[torch.Tensor], None]:
            def observe(activation: torch.Tensor) -> None:
                callback(index, activation)  # returns None whatever the callback returns: nothing is replaced

            return observe

        handles: list[RemovableHandle] = []
        try:
            for index, point in enumerate(self.hook_points):
                handles.append(point.hook(observer(index)))
            yield
        finally:
            for handle in handles:
                handle.remove()


@dataclass(frozen=True)
class ResolvedSite(Site):
    """A site bound to one loaded model: its Linear per layer and the channel count per layer."""

    spec: SiteSpec
    modules: tuple[nn.Linear, ...]
    width: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_layers(self) -> int:
        return len(self.modules)

    @property
    def parts(self) -> tuple[ResolvedSite, ...]:
        return (self,)

    @property
    def layout(self) -> str:
        return f"{self.n_layers} layers × {self.width} channels"

    @property
    def score_shape(self) -> tuple[int, ...]:
        return (self.n_layers, self.width)

    @cached_property
    def hook_points(self) -> tuple[HookPoint, ...]:
        return tuple(
            HookPoint(
                self.name, layer, module, self.spec.unit, layer * self.width, self.width, self.location(layer)
            )
            for layer, module in enumerate(self.modules)
        )

    def location(self, layer: int) -> str:
        """One layer of the site in the names a user gives and reports show: 'lm.down_proj layer 1 (mlp.down_proj
        outputs)'; a component without layers (the projector) is the site alone."""
        units = f"{self.spec.unit}s"
        if not self.spec.module:
            return f"{self.name} ({units})"
        return f"{self.name} layer {layer} ({self.spec.module} {units})"


@dataclass(frozen=True)
class JointSite(Site):
    """Several sites ranked together as one pool, named `a+b`: a neuron's flat index is its index in its own
    site plus the sizes of the sites before it. Only a joint ranking can say *which* site the critical neurons
    come from (the paper's localisation finding); with α = 1 a CAN score is a first-order loss attribution, so
    scores of different sites are on one scale."""

    parts: tuple[ResolvedSite, ...]
    alias: str | None = None  # a named pool (POOLS) is shown by its name

    @property
    def name(self) -> str:
        return self.alias or JOINT.join(part.name for part in self.parts)

    @property
    def offsets(self) -> list[int]:
        """Flat index of each part's first neuron."""
        return list(itertools.accumulate((part.size for part in self.parts[:-1]), initial=0))

    @property
    def layout(self) -> str:
        return " + ".join(str(part.size) for part in self.parts) + " neurons"

    @property
    def score_shape(self) -> tuple[int, ...]:
        return (self.size,)

    @cached_property
    def hook_points(self) -> tuple[HookPoint, ...]:
        return tuple(
            replace(point, start=offset + point.start)
            for part, offset in zip(self.parts, self.offsets, strict=True)
            for point in part.hook_points
        )


AnySite = ResolvedSite | JointSite  # the two kinds of Site that resolve_any_site returns


def inside_language_model(site: Site) -> bool:
    """Whether every neuron of `site` is in the language model: then a mask on it leaves the image features (vision
    tower, Q-Former, projector) as they are unmasked."""
    return all(part.spec.component == "lm" for part in site.parts)


def site_names(name: str) -> list[str]:
    """The sites in `name` (one, several joined by '+', or a named pool), each checked against the registry of
    sites."""
    names = [site for part in name.split(JOINT) for site in POOLS.get(part, (part,))]
    for part in names:
        get_site_spec(part)
    repeated = sorted({part for part in names if names.count(part) > 1})
    if repeated:
        raise ValueError(f"site {name!r} names {', '.join(repeated)} more than once; join distinct sites")
    return names


def site_size(name: str, config, family) -> int:
    """Neurons in a site or joint site, from the model config alone (no weights needed)."""
    return sum(math.prod(site_shape(part, config, family)) for part in site_names(name))


def site_shape(name: str, config, family) -> tuple[int, int]:
    """(layers, channels per layer) of a site, from the model config alone (no weights needed)."""
    spec = get_site_spec(name)
    component = family.component(spec.component)
    component_config = family.component_config(config, spec.component)
    layers = component_config.num_hidden_layers if component.layered else 1
    return layers, spec.width(component_config)


def register_site(spec: SiteSpec, *, replace: bool = False) -> SiteSpec:
    """Add a site (e.g. from a conftest); re-declaring a name needs `replace=True`, so a typo never shadows a
    built-in. The name must not hold the joint-site separator or be a pool's."""
    if JOINT in spec.name or spec.name in POOLS:
        raise ValueError(f"site name {spec.name!r} may not contain {JOINT!r} or be a pool's name")
    if spec.name in SITES and not replace and SITES[spec.name] != spec:
        raise ValueError(f"site {spec.name!r} is already registered; pass replace=True to redefine it")
    SITES[spec.name] = spec
    return spec


def get_site_spec(name: str) -> SiteSpec:
    if name not in SITES:
        raise UnknownNameError("site", name, sorted(SITES) + sorted(POOLS))
    return SITES[name]


def resolve_any_site(loaded, name: str) -> AnySite:
    """A single site, or a JointSite for names like `lm.down_proj+lm.gate_proj`."""
    names = site_names(name)
    if len(names) == 1:
        return resolve_site(loaded, names[0])
    return JointSite(tuple(resolve_site(loaded, part) for part in names), alias=name if name in POOLS else None)


def resolve_site(loaded, name: str) -> ResolvedSite:
    """Bind site `name` to the modules of `loaded` (a LoadedModel), asserting layer count and widths."""
    spec = get_site_spec(name)
    layers = loaded.family.layers(loaded.model, spec.component)
    n_layers, width = site_shape(name, loaded.model.config, loaded.family)
    modules = []
    for index, layer in enumerate(layers):
        module = layer.get_submodule(spec.module) if _has_submodule(layer, spec.module) else None
        if not isinstance(module, nn.Linear):
            raise SiteResolutionError(
                f"site {name}: layer {index} has no Linear at {spec.module or 'the module itself'!r} "
                f"(found {type(module).__name__}{_linears_beside(layer, spec.module)})"
            )
        actual = module.out_features if spec.unit == "output" else module.in_features
        if actual != width:
            raise SiteResolutionError(
                f"site {name}: layer {index} {spec.module or spec.component} has {actual} {spec.unit} channels "
                f"but the config's {spec.width_field} is {width}"
            )
        modules.append(module)
    if len(modules) != n_layers:
        raise SiteResolutionError(f"site {name}: found {len(modules)} layers, config says {n_layers}")
    return ResolvedSite(spec=spec, modules=tuple(modules), width=width)


def _linears_beside(layer: nn.Module, path: str) -> str:
    """'; its mlp has: gate_up_proj, down_proj': what a family that fuses or renames Linears has instead."""
    parent_path, _, _ = path.rpartition(".")
    if not parent_path or not _has_submodule(layer, parent_path):
        return ""
    names = [
        name for name, child in layer.get_submodule(parent_path).named_children() if isinstance(child, nn.Linear)
    ]
    return f"; its {parent_path} has: {', '.join(names)}" if names else ""


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def sites_of(family) -> list[str]:
    """The registered sites a model family has the components for."""
    return [name for name, spec in SITES.items() if spec.component in family.components]
