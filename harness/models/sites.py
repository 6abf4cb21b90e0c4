"""Sites: named sets of neurons, resolved by probing the module tree and checked against the config.

A neuron is addressed as (site, layer, channel). A site is one Linear per layer of a model component (language
model, vision tower, Q-Former) or the projector's Linear, its neurons the output channels or the input units.
Hook-point names follow TransformerLens' habit of naming the tensor, e.g. `lm.layers.1.mlp.down_proj.out` for an
output channel, `....down_proj.in` for a hidden unit, `projector.out` for the projector.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from harness.core.errors import InvalidKError, SiteResolutionError, UnknownNameError

Unit = Literal["output", "input"]
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
class ResolvedSite:
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
    def size(self) -> int:
        """Number of neurons in the site across all layers: the largest valid k."""
        return self.n_layers * self.width

    def summed(self, values: torch.Tensor, text_weights: torch.Tensor, aggregation: str = "mean") -> torch.Tensor:
        """[B, T, W] → [W]: the sum over images of each image's mean (or max) over positions. Language-model sites
        take the text positions `text_weights` chooses ([B, T], rows summing to 1, weighing the mean); the vision
        tower, Q-Former and projector all their own positions (patches, query tokens), across every crop when a
        model cuts an image into several (LLaVA-NeXT's any-resolution tiles: more rows than images). The sum is on
        the device of `text_weights`, wherever a device map put this layer."""
        images, values = text_weights.shape[0], values.to(text_weights.device)
        if aggregation == "max":
            if self.spec.component == "lm":
                chosen = (text_weights > 0)[..., None]
                return values.masked_fill(~chosen, float("-inf")).amax(1).sum(0)
            return values.amax(1).mean(0) * images
        if self.spec.component == "lm":
            return torch.einsum("btw,bt->w", values, text_weights)
        return values.mean(dim=(0, 1)) * images

    def location(self, layer: int) -> str:
        """One layer of the site in the names a user gives and reports show: 'lm.down_proj layer 1 (mlp.down_proj
        outputs)'; a component without layers (the projector) is the site alone."""
        units = f"{self.spec.unit}s"
        if not self.spec.module:
            return f"{self.name} ({units})"
        return f"{self.name} layer {layer} ({self.spec.module} {units})"

    @contextmanager
    def watched(self, callback: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
        """Call `callback(layer, activation)` with the site's tensor (output, or input for hidden units) in every
        forward pass inside the block; the hooks are removed on exit, also on exceptions."""
        handles = []
        try:
            for layer, module in enumerate(self.modules):
                if self.spec.unit == "output":
                    hook = module.register_forward_hook(lambda m, a, out, layer=layer: callback(layer, out))
                else:
                    hook = module.register_forward_pre_hook(lambda m, args, layer=layer: callback(layer, args[0]))
                handles.append(hook)
            yield
        finally:
            for handle in handles:
                handle.remove()

    def neurons(self, flat_indices: torch.Tensor) -> list[Neuron]:
        """(site, layer, channel) for indices into the flattened [layer, channel] score table."""
        return [Neuron(self.name, int(i) // self.width, int(i) % self.width) for i in flat_indices.tolist()]

    def check_k(self, k: int) -> int:
        """k as a Python int; any integer type (numpy, 0-d tensor) is accepted, bools and fractions are not."""
        return _checked_k(k, self.name, self.size, f"{self.n_layers} layers × {self.width} channels")


@dataclass(frozen=True)
class JointSite:
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
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def offsets(self) -> list[int]:
        """Flat index of each part's first neuron."""
        return list(itertools.accumulate((part.size for part in self.parts[:-1]), initial=0))

    def split(self, flat_indices: torch.Tensor) -> list[tuple[ResolvedSite, int, torch.Tensor]]:
        """(part, its offset, its own flat indices) for every part that holds any of `flat_indices`."""
        flat_indices = torch.as_tensor(flat_indices, dtype=torch.long).reshape(-1)
        found = []
        for part, offset in zip(self.parts, self.offsets, strict=True):
            inside = (flat_indices >= offset) & (flat_indices < offset + part.size)
            if inside.any():
                found.append((part, offset, flat_indices[inside] - offset))
        return found

    def neurons(self, flat_indices: torch.Tensor) -> list[Neuron]:
        """(site, layer, channel) in the order given."""
        flat_indices = torch.as_tensor(flat_indices, dtype=torch.long).reshape(-1)
        which = torch.bucketize(flat_indices, torch.tensor(self.offsets[1:]), right=True)
        local = flat_indices - torch.tensor(self.offsets)[which]
        widths = torch.tensor([part.width for part in self.parts])[which]
        names = [part.name for part in self.parts]
        return [
            Neuron(names[part], layer, channel)
            for part, layer, channel in zip(
                which.tolist(), (local // widths).tolist(), (local % widths).tolist(), strict=True
            )
        ]

    def check_k(self, k: int) -> int:
        sizes = " + ".join(str(part.size) for part in self.parts)
        return _checked_k(k, self.name, self.size, f"{sizes} neurons")


AnySite = ResolvedSite | JointSite


def inside_language_model(site: AnySite) -> bool:
    """Whether every neuron of `site` is in the language model: then a mask on it leaves the image features (vision
    tower, Q-Former, projector) as they are unmasked."""
    parts = site.parts if isinstance(site, JointSite) else (site,)
    return all(part.spec.component == "lm" for part in parts)


def _checked_k(k: int, name: str, size: int, shape: str) -> int:
    is_bool = isinstance(k, bool) or str(getattr(k, "dtype", "")) in ("torch.bool", "bool")
    try:
        value = None if is_bool else operator.index(k)
    except TypeError:
        value = None
    if value is None or value < 0 or value > size:
        raise InvalidKError(
            f"k={k!r} is invalid for site {name}: it has {shape}, so k must be an integer in [0, {size}]"
        )
    return value


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
