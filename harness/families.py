"""Where each model family keeps its language model, found by probing rather than by version checks.

transformers moved LLaVA's language model between releases (4.x `language_model.model.layers`, 5.x
`model.language_model.layers`); probing the known paths and then checking the layer count against the config
keeps one code path for both.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.errors import SiteResolutionError, UnknownNameError


@dataclass(frozen=True)
class Family:
    """A model family: the candidate attribute paths of its language-model decoder layers."""

    name: str
    language_layer_paths: tuple[str, ...]

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
    "llava": Family(
        "llava",
        ("model.language_model.layers", "language_model.model.layers", "model.language_model.model.layers"),
    ),
    "instructblip": Family("instructblip", ("language_model.model.layers", "language_model.layers")),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UnknownNameError("model family", name, sorted(FAMILIES))
    return FAMILIES[name]
