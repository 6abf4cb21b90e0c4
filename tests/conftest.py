"""Shared fixtures: the tiny LLaVA and tiny CLIP, built offline into a temporary cache and loaded back through
the same registry / `from_pretrained` path a real checkpoint takes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from harness.experiment import HarnessSession, ModelExperiment
from harness.settings import HarnessSettings

# The tiny models gain nothing from several threads; on a loaded 2-core machine two threads make a tiny matmul
# thousands of times slower (measured: 23 ms vs 8 µs).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One harness cache (built models, images, rankings) for the whole test session."""
    return tmp_path_factory.mktemp("can-cache")


@pytest.fixture(scope="session")
def settings(cache_dir) -> HarnessSettings:
    return HarnessSettings(cache_dir=cache_dir, max_new_tokens=12, batch_size=4)


@pytest.fixture(scope="session")
def session(settings) -> HarnessSession:
    return HarnessSession(settings)


@pytest.fixture(scope="session")
def experiment(session) -> ModelExperiment:
    return session.experiment("tiny-llava")


@pytest.fixture(scope="session")
def loaded(experiment):
    """The tiny LLaVA as a LoadedModel (eval mode, frozen parameters, CPU, float32)."""
    return experiment.loaded


@pytest.fixture(scope="session")
def images(session):
    """The built-in image set (3 shape categories × 4 images)."""
    return session.images


@pytest.fixture
def unmodified(loaded):
    """Fails the test if it leaves any parameter of the shared tiny model changed."""
    yield loaded
    loaded.assert_unmodified()
