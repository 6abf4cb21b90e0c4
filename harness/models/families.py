"""Where each model family keeps its components — language model, vision tower, Q-Former, projector — found by
probing known attribute paths and then checking the layer count against the config (transformers has moved these
paths between releases)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from harness.core.errors import SiteResolutionError, UnknownNameError, UnsupportedModelError

COMPONENTS = {"lm": "language-model", "vision": "vision-tower", "qformer": "Q-Former", "projector": "projector"}


@dataclass(frozen=True)
class Component:
    """One part of a model: candidate attribute paths of its layer list (or, unlayered, of its one module), and the
    attribute of the model config that describes it ('' = the model config itself)."""

    paths: tuple[str, ...]
    config: str
    layered: bool = True


@dataclass(frozen=True)
class Family:
    """A model family: where its components live, the data its models take and the probe that measures them."""

    name: str
    components: dict[str, Component] = field(hash=False)
    captioning_validated: bool  # prompts, generation and teacher-forced scoring checked on a tiny offline model
    default_probe: str = "captioning"  # how its models are measured unless a case names another probe
    inputs: tuple[str, ...] = ("images",)  # the data its models take (harness.runner.probe.Probe.data)

    def component(self, name: str) -> Component:
        if name not in self.components:
            raise SiteResolutionError(
                f"{self.name} models have no {name!r} component; theirs: {', '.join(self.components)}"
            )
        return self.components[name]

    def component_config(self, config, name: str):
        attribute = self.component(name).config
        return getattr(config, attribute) if attribute else config

    def text_config(self, config):
        """The language model's config."""
        return self.component_config(config, "lm")

    def layers(self, model: nn.Module, name: str) -> list[nn.Module]:
        """The component's layers (one module for an unlayered component), their count checked against the
        config."""
        component = self.component(name)
        for path in component.paths:
            found = _get_path(model, path)
            if component.layered and isinstance(found, nn.ModuleList):
                expected = self.component_config(model.config, name).num_hidden_layers
                if len(found) != expected:
                    raise SiteResolutionError(
                        f"{type(model).__name__}.{path} holds {len(found)} layers but the config says {expected}"
                    )
                return found
            if not component.layered and isinstance(found, nn.Module):
                return nn.ModuleList([found])
        what = "layers" if component.layered else "module"
        raise SiteResolutionError(
            f"no {COMPONENTS[name]} {what} found in {type(model).__name__} (family {self.name!r}); "
            f"probed: {', '.join(component.paths)}"
        )


def _get_path(root: nn.Module, path: str) -> object | None:
    node: object = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


LLAVA_COMPONENTS = {
    "lm": Component(("model.language_model.layers",), "text_config"),
    "vision": Component(
        ("model.vision_tower.encoder.layers", "model.vision_tower.vision_model.encoder.layers"), "vision_config"
    ),
    "projector": Component(("model.multi_modal_projector.linear_1",), "text_config", layered=False),
}
FAMILIES = {
    "llava": Family("llava", LLAVA_COMPONENTS, captioning_validated=True),
    # LLaVA-NeXT (1.6): LLaVA's layout; images are cut into any-resolution tiles, each a row of the vision tower
    "llava_next": Family("llava_next", LLAVA_COMPONENTS, captioning_validated=True),
    "instructblip": Family(
        "instructblip",
        {
            "lm": Component(("language_model.model.layers",), "text_config"),
            "vision": Component(("vision_model.encoder.layers",), "vision_config"),
            "qformer": Component(("qformer.encoder.layer",), "qformer_config"),
            "projector": Component(("language_projection",), "text_config", layered=False),
        },
        captioning_validated=True,
    ),
    # any AutoModelForCausalLM with a Llama-style decoder (Llama, Qwen2, Gemma, Mistral; Phi-3 fuses gate_proj and
    # up_proj into gate_up_proj, so only its lm.down_proj, lm.mlp_hidden and lm.o_proj sites exist)
    "causal_lm": Family(
        "causal_lm",
        {"lm": Component(("model.layers",), "")},
        captioning_validated=True,
        default_probe="continuation",
        inputs=("texts",),
    ),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UnknownNameError("model family", name, sorted(FAMILIES))
    return FAMILIES[name]


def check_family_supported(spec) -> None:
    """Refuse to run collapse experiments on a family whose captioning path has not been validated: its token
    offsets could be silently wrong. Loading and site resolution work for every registered family."""
    family = get_family(spec.family)
    if not family.captioning_validated:
        validated = sorted(name for name, f in FAMILIES.items() if f.captioning_validated)
        raise UnsupportedModelError(
            f"{spec.name}: collapse experiments on the {family.name!r} family are not supported yet (its "
            f"captioning path is untested); families supported end to end: {', '.join(validated)}"
        )
