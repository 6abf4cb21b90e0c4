"""Where each model family keeps its language model, found by probing its known attribute paths and then
checking the layer count against the config (transformers has moved these paths between releases)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.errors import SiteResolutionError, UnknownNameError, UnsupportedModelError


@dataclass(frozen=True)
class Family:
    """A model family: the candidate attribute paths of its language-model decoder layers."""

    name: str
    language_layer_paths: tuple[str, ...]
    captioning_validated: bool  # prompts, generation and teacher-forced scoring checked on a tiny offline model

    def text_config(self, config):
        """The language model's config (VLM configs nest it as `text_config`)."""
        return getattr(config, "text_config", None) or config

    def language_layers(self, model: nn.Module) -> nn.ModuleList:
        for path in self.language_layer_paths:
            layers = _get_path(model, path)
            if isinstance(layers, nn.ModuleList):
                expected = self.text_config(model.config).num_hidden_layers
                if len(layers) != expected:
                    raise SiteResolutionError(
                        f"{type(model).__name__}.{path} holds {len(layers)} layers but the config says {expected}"
                    )
                return layers
        raise SiteResolutionError(
            f"no language-model layers found in {type(model).__name__} (family {self.name!r}); "
            f"probed: {', '.join(self.language_layer_paths)}"
        )


def _get_path(root: nn.Module, path: str) -> object | None:
    node: object = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


FAMILIES = {
    "llava": Family("llava", ("model.language_model.layers",), captioning_validated=True),
    "instructblip": Family("instructblip", ("language_model.model.layers",), captioning_validated=False),
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
