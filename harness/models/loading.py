"""Load a registered model through the real `from_pretrained` path, never downloading unless allowed, and never
running code a checkpoint ships (`trust_remote_code=False` everywhere: no prompt under `pytest -s` either)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.core.errors import CorruptCheckpointError, MaskError, ModelUnavailableError
from harness.core.placement import DeviceMap, max_memory_argument
from harness.core.store import COMPLETE_MARKER, ensure_built
from harness.models import gguf
from harness.models.devices import execution_device, map_input_device, resolve_device, resolve_dtype
from harness.models.families import Family, get_family
from harness.models.registry import ModelSpec, get_model_spec
from harness.models.weight_digest import folder_digest


@dataclass
class LoadedModel:
    """A model ready for experiments: eval mode, gradients off for every parameter, on its device (the device
    it computes on first, when a device map spreads it over several)."""

    spec: ModelSpec
    model: nn.Module
    processor: object
    family: Family
    device: torch.device
    dtype: torch.dtype
    path: Path
    weights_digest: str  # sha256 of every weight byte (harness.models.weight_digest)
    checkpoint_id: str
    placement: dict[str, int | str] | None = None  # accelerate's device map as loaded (module → device or disk)
    offload_folder: Path | None = None  # where accelerate keeps the weights it offloaded to disk
    _checksums: dict[str, int] | None = None

    @property
    def tokenizer(self):
        """The processor's tokenizer; a text-only model's processor is its tokenizer."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def text_config(self):
        return self.family.text_config(self.model.config)

    def remember_parameters(self) -> None:
        self._checksums = parameter_checksums(self.model)

    def assert_unmodified(self) -> None:
        """Raise if any parameter differs from when it was loaded (a mask that was not restored)."""
        if self._checksums is None:
            return
        now = parameter_checksums(self.model)
        changed = [name for name, value in now.items() if self._checksums.get(name) != value]
        if changed:
            raise MaskError(
                f"{self.spec.name} was left modified: {len(changed)} parameter(s) differ from the loaded weights "
                f"({', '.join(changed[:5])}{', …' if len(changed) > 5 else ''})"
            )


def parameter_checksums(model: nn.Module) -> dict[str, int]:
    """Integer sum of each parameter's raw bits, at one read per weight: catches any element left changed
    (a zeroed row, a one-ulp change); not a hash, so it would miss values swapped between positions. Weights
    accelerate offloaded (meta tensors) are left out: they are never written (weight-mode masks refuse them,
    harness.models.masking), and reading them back from disk after every case would cost a model's size in I/O."""
    bit_views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    sums = {}
    for name, parameter in model.named_parameters():
        data = parameter.detach()
        if data.device.type == "meta":
            continue
        bits = data.reshape(-1).view(bit_views[data.element_size()])
        sums[name] = int(bits.sum(dtype=torch.int64))
    return sums


# a registered name → its spec: the registry's, or HarnessSettings.model_spec (which knows local paths)
SpecLookup = Callable[[str], ModelSpec]


def resolve_checkpoint_folder(
    spec: ModelSpec, cache_dir: Path, allow_download: bool = False, specs: SpecLookup = get_model_spec
) -> Path:
    """Local folder holding the checkpoint; `ModelUnavailableError` (cases skip) when it is not on this machine.
    A model assembled on a base model is built on the base `specs` names, once per base checkpoint (its folder
    is keyed by the base's weights digest)."""
    if spec.embedded is not None:
        base = spec.embedded.base_model
        if base is None:
            return ensure_built(spec.embedded, cache_dir)
        base_folder = resolve_checkpoint_folder(specs(base), cache_dir, allow_download, specs)
        return ensure_built(spec.embedded, cache_dir, base_folder, variant=folder_digest(base_folder, cache_dir))
    if spec.gguf is not None:
        return gguf.packaged_checkpoint(spec, cache_dir)
    local = Path(spec.source).expanduser()
    if local.suffix == ".gguf":
        return gguf.file_checkpoint(spec, local, cache_dir)
    if local.is_dir():
        return local
    if spec.source.startswith(("/", ".", "~")):
        raise ModelUnavailableError(
            f"{spec.name}: local checkpoint folder {str(local)!r} does not exist; point the model at an existing "
            f"folder with --can-model-path {spec.name}=/path/to/checkpoint"
        )
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(spec.source, revision=spec.revision, local_files_only=not allow_download))
    except LocalEntryNotFoundError as error:
        raise ModelUnavailableError(
            f"{spec.name}: {spec.source!r} (revision {spec.revision or 'main'}) is not in the local Hugging Face "
            f"cache {constants.HF_HUB_CACHE}. To make it available: run `hf download {spec.source}` on a machine "
            f"with internet and copy the cache here (or set HF_HOME), pass --can-model-path {spec.name}=/path/to/"
            f"folder, or let the harness download it with --can-allow-download"
        ) from error
    return folder


def unavailable_reason(
    spec: ModelSpec, cache_dir: Path, allow_download: bool = False, specs: SpecLookup = get_model_spec
) -> str | None:
    """Why `spec`'s checkpoint cannot be had on this machine (None: it can), found without building, assembling
    or converting anything: collecting cases of a model costs no conversion of it, whether or not the run then
    selects them (`-k smollm2` converts no Gemma)."""
    try:
        if spec.embedded is not None:
            base = spec.embedded.base_model
            return None if base is None else unavailable_reason(specs(base), cache_dir, allow_download, specs)
        if spec.gguf is not None:
            gguf.check_installed(spec.name, spec.gguf)
            return None
        local = Path(spec.source).expanduser()
        if local.suffix == ".gguf":
            gguf.check_file(spec, local)
            return None
        resolve_checkpoint_folder(spec, cache_dir, allow_download, specs)  # a local folder or a hub cache lookup
    except ModelUnavailableError as error:
        return str(error)
    return None


def missing_checkpoint_files(folder: Path) -> list[str]:
    """What a loadable checkpoint lacks: config.json, or weights (a single file, or every shard of an index)."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return missing + [shard for shard in shards if not (folder / shard).is_file()]
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors (or pytorch_model.bin, or a sharded index)")
    return missing


def checkpoint_id(
    spec: ModelSpec, folder: Path, cache_dir: Path | None = None, specs: SpecLookup = get_model_spec
) -> str:
    """Where the weights came from, for results and cache keys: embedded version (followed by its base model's id
    for one assembled on a registered model, whose checkpoint is looked up in `cache_dir`), GGUF file + sha256,
    hub id + commit, or local."""
    if spec.embedded is not None:
        embedded = f"embedded:{spec.embedded.name}@v{spec.embedded.version}"
        if spec.embedded.base_model is None:
            return embedded
        if cache_dir is None:
            raise ValueError(f"{spec.name} is assembled on {spec.embedded.base_model}: its id needs the cache_dir")
        base = specs(spec.embedded.base_model)  # built already: resolving it again is a lookup
        base_folder = resolve_checkpoint_folder(base, cache_dir, specs=specs)
        return f"{embedded} on {checkpoint_id(base, base_folder, cache_dir, specs)}"
    record = gguf.conversion_record(folder)
    if record is not None:
        return f"gguf:{record['file']}@sha256:{record['sha256'][:16]}"
    hub_folder = "models--" + spec.source.replace("/", "--")
    if folder.parent.name == "snapshots" and folder.parent.parent.name == hub_folder:  # <hub>/snapshots/<commit>
        return f"hf:{spec.source}@{folder.name}"
    return "local"  # identified by its weights digest alone: moving the folder changes nothing


def load_model(
    spec: ModelSpec,
    *,
    cache_dir: Path,
    device: str = "auto",
    dtype: str | None = None,
    allow_download: bool = False,
    device_map: DeviceMap | None = None,
    max_memory: tuple[tuple[str, str], ...] = (),
    specs: SpecLookup = get_model_spec,
) -> LoadedModel:
    """Load `spec` with its registered classes; the processor pads on the left for batched generation.
    `device_map` (harness.core.placement) spreads the layers over devices, CPU and disk through accelerate, within
    `max_memory`, instead of placing the whole model on `device`. `specs` names a base model's spec (for a
    model assembled on one)."""
    import transformers
    from safetensors import SafetensorError

    folder = resolve_checkpoint_folder(spec, cache_dir, allow_download, specs)
    missing = missing_checkpoint_files(folder)
    if missing:
        raise ModelUnavailableError(
            f"{spec.name}: the checkpoint in {folder} is incomplete (missing {', '.join(missing)}); finish the "
            f"download (`hf download {spec.source}`) or copy the missing files"
        )
    torch_device = resolve_device(device) if device_map is None else map_input_device(device_map)
    torch_dtype = resolve_dtype(dtype or spec.dtype, torch_device)
    model_cls = getattr(transformers, spec.model_class)
    processor_cls = getattr(transformers, spec.processor_class)
    spread, offload_folder = {}, None
    if device_map is not None:
        (cache_dir / "offload").mkdir(parents=True, exist_ok=True)
        offload_folder = Path(tempfile.mkdtemp(prefix=offload_prefix(spec.name), dir=cache_dir / "offload"))
        spread = {
            "device_map": device_map,
            "max_memory": max_memory_argument(max_memory),
            "offload_folder": str(offload_folder),
        }
    # a present-but-broken checkpoint raises here: an error, never a skip, so regression runs cannot hide it
    try:
        model = model_cls.from_pretrained(
            folder, dtype=torch_dtype, local_files_only=True, trust_remote_code=False, **spread
        )
    except BaseException as error:
        if offload_folder is not None:
            shutil.rmtree(offload_folder, ignore_errors=True)
        if isinstance(error, SafetensorError):  # what a truncated or overwritten .safetensors file raises
            raise CorruptCheckpointError(corrupt_weights_message(spec, folder, error)) from error
        raise
    processor = processor_cls.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False, **dict(spec.processor_kwargs)
    )
    if offload_folder is None:
        model.to(torch_device)
    else:
        weakref.finalize(model, shutil.rmtree, offload_folder, ignore_errors=True)  # removed with the model
        torch_device = execution_device(model.get_input_embeddings())
    model.eval().requires_grad_(False)
    loaded = LoadedModel(
        spec=spec,
        model=model,
        processor=processor,
        family=get_family(spec.family),
        device=torch_device,
        dtype=torch_dtype,
        path=folder,
        weights_digest=folder_digest(folder, cache_dir),
        checkpoint_id=checkpoint_id(spec, folder, cache_dir, specs),
        placement=getattr(model, "hf_device_map", None) if offload_folder is not None else None,
        offload_folder=offload_folder,
    )
    loaded.tokenizer.padding_side = "left"
    loaded.remember_parameters()
    return loaded


def load_model_config(
    spec: ModelSpec, *, cache_dir: Path, allow_download: bool = False, specs: SpecLookup = get_model_spec
):
    """The model's config alone (no weights): enough to size sites when collecting cases."""
    from transformers import AutoConfig

    folder = resolve_checkpoint_folder(spec, cache_dir, allow_download, specs)
    if not (folder / "config.json").is_file():
        raise ModelUnavailableError(f"{spec.name}: no config.json in {folder}; the checkpoint is incomplete")
    return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def offload_prefix(name: str) -> str:
    """The `mkdtemp` prefix of a model's offload folder: its name with every character outside [A-Za-z0-9._-]
    (`/` included) replaced by `_`, a leading '.' too, at most 64 characters, so that no model name ("../evil",
    "org/model") places the folder outside `<cache>/offload` or hides it there."""
    safe = _UNSAFE_IN_FILE_NAME.sub("_", name)[:64]
    return ("_" + safe[1:] if safe.startswith(".") else safe) + "-"


def unreadable_weight_files(folder: Path) -> list[str]:
    """'name (what safetensors says)' for each `.safetensors` file of `folder` whose header or length is wrong
    (reading a header maps the file and parses a few kilobytes: cheap even for large shards)."""
    from safetensors import SafetensorError, safe_open

    broken = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as error:
            broken.append(f"{path.name} ({error})")
    return broken


def corrupt_weights_message(spec: ModelSpec, folder: Path, error: Exception) -> str:
    """Which weight file of `folder` is unreadable, the loader's own error, and how to get a good copy: a folder
    the harness built is deleted and built again, a hub snapshot downloaded again, any other folder copied
    again."""
    broken = unreadable_weight_files(folder)
    found = f" ({', '.join(broken)})" if broken else ""
    if (folder / COMPLETE_MARKER).is_file():  # built by the harness: an embedded model, a GGUF conversion
        remedy = f"delete the folder {folder}: the harness builds it again on the next run"
    elif folder.parent.name == "snapshots":
        remedy = f"download it again (`hf download {spec.source} --force-download`)"
    else:
        remedy = f"copy it again from its source, or point --can-model-path {spec.name}=… at a good copy"
    return (
        f"{spec.name}: the checkpoint in {folder} has a corrupt or truncated weight file{found}: "
        f"{type(error).__name__}: {error}; {remedy}"
    )
