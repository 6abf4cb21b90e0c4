"""Shared fixtures: the tiny LLaVA and tiny CLIP, built offline into a temporary cache and loaded back through
the same registry / `from_pretrained` path a real checkpoint takes, on CPU in float32, with an empty Hugging Face
cache."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# An empty Hugging Face cache for the whole test session (pytester subprocesses and xdist workers inherit it), so
# no test depends on what this machine happens to have cached. huggingface_hub reads these variables once, on
# import: they must be set before anything imports it.
if "huggingface_hub" in sys.modules:
    raise RuntimeError("huggingface_hub was imported before tests/conftest.py could point it at an empty cache")
_HF_HOME = tempfile.TemporaryDirectory(prefix="can-tests-hf-")  # removed when the session's interpreter exits
EMPTY_HF_HOME = os.path.realpath(_HF_HOME.name)
EMPTY_HF_HUB_CACHE = os.path.join(EMPTY_HF_HOME, "hub")
os.environ["HF_HOME"] = EMPTY_HF_HOME
os.environ["HF_HUB_CACHE"] = EMPTY_HF_HUB_CACHE
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants as hf_constants  # noqa: E402

from harness.runner.experiment import Experiment  # noqa: E402
from harness.runner.session import HarnessSession  # noqa: E402
from harness.runner.settings import HarnessSettings  # noqa: E402

if hf_constants.HF_HUB_CACHE != EMPTY_HF_HUB_CACHE:
    raise RuntimeError(f"the tests' HF cache is {hf_constants.HF_HUB_CACHE}, not the empty {EMPTY_HF_HUB_CACHE}")

# The tiny models gain nothing from several threads; on a loaded 2-core machine two threads make a tiny matmul
# thousands of times slower (measured: 23 ms vs 8 µs).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def pytest_unconfigure(config):
    _HF_HOME.cleanup()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One harness cache (built models, images, rankings) for the whole test session."""
    return tmp_path_factory.mktemp("can-cache")


@pytest.fixture(scope="session")
def settings(cache_dir) -> HarnessSettings:
    """CPU and float32 whatever the machine has: results and cached rankings do not depend on a GPU."""
    return HarnessSettings(
        cache_dir=cache_dir, max_images=4, max_new_tokens=12, batch_size=4, device="cpu", dtype="float32"
    )


@pytest.fixture(scope="session")
def session(settings) -> HarnessSession:
    return HarnessSession(settings)


@pytest.fixture(scope="session")
def synth_session(cache_dir) -> HarnessSession:
    """The committed trained models on the default image set (8 held-out renderings per category), captions
    long enough for the world's 11-word sentences."""
    settings = HarnessSettings(
        cache_dir=cache_dir, max_new_tokens=16, batch_size=16, device="cpu", dtype="float32"
    )
    return HarnessSession(settings)


@pytest.fixture(scope="session")
def experiment(session) -> Experiment:
    return session.experiment("tiny-llava")


@pytest.fixture(scope="session")
def loaded(experiment):
    """The tiny LLaVA as a LoadedModel (eval mode, frozen parameters, CPU, float32)."""
    return experiment.loaded


@pytest.fixture(scope="session")
def images(session):
    """The default image set (the synthetic world's 4 shape categories), 4 images per category."""
    return session.images


@pytest.fixture
def hashed_files(monkeypatch) -> list[Path]:
    """The files whose bytes the weight digest read to hash them, in order (a remembered digest reads none)."""
    from harness.models import weight_digest

    read: list[Path] = []
    original = weight_digest.stream_sha256

    def counting(path: Path, task=None) -> str:
        read.append(path)
        return original(path, task)

    monkeypatch.setattr(weight_digest, "stream_sha256", counting)
    return read


@pytest.fixture
def unmodified(loaded):
    """Fails the test if it leaves any parameter of the shared tiny model changed."""
    yield loaded
    loaded.assert_unmodified()


@pytest.fixture
def run_read_only():
    """`run_read_only(args, folder, cwd)`: run `python *args` in a fresh interpreter that cannot write under
    `folder`,
    for real: the write bits are removed, and when the tests run as root (whom permission bits do not stop) the
    interpreter runs without capabilities (util-linux `setpriv`)."""
    import shutil
    import stat
    import subprocess

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip(
                "the tests run as root and util-linux's setpriv is missing: nothing can take write access "
                "away from root here; install util-linux or run the tests as an ordinary user"
            )
        prefix = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"]
    changed: list[tuple[Path, int]] = []

    def run(args: list[str], folder: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        for path in [folder, *folder.rglob("*")]:
            mode = path.stat().st_mode
            changed.append((path, mode))
            os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return subprocess.run(
            [*prefix, sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd
        )

    yield run
    for path, mode in reversed(changed):
        os.chmod(path, mode)
