"""The registry learns its models from the entry-point group `can_harness.models`: the built-in catalogue (the
zoo's, declared by this package) and any other installed package's. The registry imports nothing of the zoo, yet
every built-in name resolves on the first lookup; a missing or broken entry point is an error that says what to do.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import pytest

from harness.models import registry
from harness.models.registry import MODELS_ENTRY_POINTS, ModelCatalogueError, ModelSpec
from harness.zoo.catalogue import builtin_models


@dataclass(frozen=True)
class StandInEntryPoint:
    """What the registry uses of an importlib.metadata.EntryPoint, loading a callable of this test."""

    name: str
    value: str
    provide: Callable[[], object]

    def load(self) -> Callable[[], object]:
        return self.provide


@pytest.fixture
def empty_registry(monkeypatch):
    """A registry that has loaded no entry point yet, thrown away after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def install_entry_points(monkeypatch, *extra: StandInEntryPoint) -> None:
    """Every installed `can_harness.models` entry point, plus `extra` as if another package declared them."""
    installed = metadata.entry_points

    def entry_points(**selection):
        return [*installed(**selection), *extra]

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)


def test_the_package_declares_the_builtin_catalogue():
    """The installed distribution's entry point names the zoo's catalogue (re-install after editing it)."""
    own = metadata.distribution(registry.DISTRIBUTION).entry_points.select(group=MODELS_ENTRY_POINTS)
    assert [(entry.name, entry.value) for entry in own] == [("builtin", "harness.zoo.catalogue:builtin_models")]
    assert {spec.name for spec in builtin_models()} <= set(registry.registered_models())


def test_a_fresh_interpreter_finds_every_builtin_without_importing_the_zoo_itself():
    """Importing the registry loads no zoo module; the first lookup of a built-in name then works."""
    code = """
        import sys
        from harness.models import registry
        print(sorted(name for name in sys.modules if name.startswith("harness.zoo")))
        print(registry.get_model_spec("tiny-llava").embedded.name, len(registry.registered_models()))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", f"tiny-llava {len(builtin_models())}"]


def test_without_the_packages_entry_point_a_lookup_says_how_to_install(empty_registry, monkeypatch):
    """A checkout used without `pip install`: a clear error on every lookup, not a registry without built-ins."""

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(registry.metadata, "distribution", not_installed)
    for _ in range(2):  # the failed load is not remembered as done
        with pytest.raises(ModelCatalogueError, match=r"'can_harness\.models'.*'can-harness'.*pip install -e \."):
            registry.get_model_spec("tiny-llava")


def test_another_packages_entry_point_adds_its_models(empty_registry, monkeypatch):
    mine = ModelSpec(name="my-llava", source="me/my-llava")
    install_entry_points(monkeypatch, StandInEntryPoint("mine", "my_package.models:specs", lambda: [mine]))
    assert registry.get_model_spec("my-llava") == mine
    assert registry.get_model_spec("tiny-llava").embedded.name == "tiny-llava"


def test_an_entry_point_that_redefines_a_builtin_is_named(empty_registry, monkeypatch):
    other = ModelSpec(name="tiny-llava", source="me/other")
    install_entry_points(monkeypatch, StandInEntryPoint("mine", "my_package.models:specs", lambda: [other]))
    with pytest.raises(ModelCatalogueError) as error:
        registry.registered_models()
    message = str(error.value)
    assert "mine = 'my_package.models:specs'" in message and "'tiny-llava'" in message
    assert "builtin = 'harness.zoo.catalogue:builtin_models'" in message


@pytest.mark.parametrize(
    ("provide", "said"),
    [(lambda: ["my-llava"], "returned 'my-llava', not a ModelSpec"), (lambda: None, "failed to give its models")],
)
def test_an_entry_point_that_gives_no_model_specs_is_named(empty_registry, monkeypatch, provide, said):
    install_entry_points(monkeypatch, StandInEntryPoint("mine", "my_package.models:specs", provide))
    with pytest.raises(ModelCatalogueError, match=f"mine = 'my_package.models:specs'.*{said}"):
        registry.get_model_spec("tiny-llava")
