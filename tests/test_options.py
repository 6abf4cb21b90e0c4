"""Options declared once: every `--can-*` option's default is its dataclass field's, its choices are what the
dataclass accepts, and an option left out leaves the field's default. Installing the harness costs other pytest
runs nothing: importing and configuring the plugin loads no torch, transformers or open_clip; the names user
code needs import from `harness` itself."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.core.errors import UnknownNameError
from harness.core.recorded import tags
from harness.plugin.options import OPTIONS, Option, given_fields, settings_values
from harness.runner.baseline import Tolerances
from harness.runner.settings import HarnessSettings

HEAVY = ("torch", "transformers", "open_clip")
FIELD_OPTIONS = [option for option in OPTIONS if option.sets is not None]


def test_every_flag_is_declared_once():
    flags = [option.flag for option in OPTIONS]
    assert len(flags) == len(set(flags))


@pytest.mark.parametrize("option", FIELD_OPTIONS, ids=lambda option: option.flag)
def test_a_field_option_sets_a_real_field_and_shows_its_default(option: Option):
    owner, name = option.sets
    assert name in {field.name for field in dataclasses.fields(owner)}
    default = option.field_default
    if option.shown_default is None and option.action is None:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert option.help_text().endswith(f"(default: {shown})")


@pytest.mark.parametrize("option", [o for o in FIELD_OPTIONS if o.choices], ids=lambda option: option.flag)
def test_an_options_choices_are_what_its_dataclass_accepts(option: Option):
    owner, name = option.sets
    for choice in option.choices:
        owner(**{name: choice})
    with pytest.raises((ValueError, UnknownNameError), match="not-a-choice"):
        owner(**{name: "not-a-choice"})


def test_options_left_out_keep_the_dataclass_defaults():
    assert given_fields({}, HarnessSettings) == {}
    assert given_fields({"can_batch_size": 3, "can_k_max": None}, HarnessSettings) == {"batch_size": 3}


def test_option_values_reach_the_settings_by_record_name():
    """What HarnessSettings.from_options takes: nested fields by their record names, `--can-aggregate` as
    `aggregation`; options left out, and options of the baselines or of the plugin itself, are not there."""
    values = {"can_aggregate": "max", "can_alpha": 0.5, "can_stage1_ppl_ratio": 3.0, "can_k_max": None}
    values |= {"can_baseline_k_rtol": 0.2, "can_models": ("tiny-llava",)}
    assert settings_values(values) == {"aggregation": "max", "alpha": 0.5, "stage1_ppl_ratio": 3.0}


@pytest.mark.parametrize(
    "option", [o for o in FIELD_OPTIONS if o.sets[0] is not Tolerances], ids=lambda option: option.flag
)
def test_every_settings_option_sets_its_own_field_through_its_record_name(option: Option):
    [name] = settings_values({option.dest: "given"})
    owner, field, _ = tags(HarnessSettings)[name]
    assert (owner, field.name) == option.sets


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_importing_the_plugin_loads_no_torch(tmp_path):
    result = run_python(
        f"""
        import sys
        import harness.plugin, harness.plugin.options
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_an_unrelated_pytest_run_loads_no_torch(tmp_path):
    """A project with one plain test, in the environment the harness is installed in (its pytest11 entry point
    loads the plugin): configuring, collecting, running and summarising import none of the heavy libraries."""
    (tmp_path / "test_plain.py").write_text(
        textwrap.dedent(
            f"""
            import sys

            def test_plain():
                assert True

            def test_nothing_heavy_was_imported():
                assert [m for m in {HEAVY!r} if m in sys.modules] == []
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "can-collapse" not in result.stdout  # the harness's summary stays out of a run without its cases
    plugins = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "--can-k-max=4", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert plugins.returncode == 0, plugins.stdout + plugins.stderr  # the plugin was loaded: its option parses


def test_the_root_conftest_registers_the_plugin_where_entry_points_are_not_loaded(tmp_path):
    """A bare checkout gets the plugin from the root conftest's `pytest_plugins = ["harness.plugin"]`: with
    entry-point plugins off, a run in the repository knows the harness's options, a run elsewhere does not."""
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n")
    command = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "--can-k-max=4"]
    command += ["--can-report-dir", str(tmp_path / "reports")]
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    root = Path(__file__).resolve().parent.parent
    in_checkout = subprocess.run(
        [*command, "conftest.py"], capture_output=True, text=True, timeout=300, cwd=root, env=env
    )
    assert in_checkout.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, in_checkout.stdout + in_checkout.stderr
    elsewhere = subprocess.run(
        [*command, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert elsewhere.returncode == pytest.ExitCode.USAGE_ERROR, elsewhere.stdout + elsewhere.stderr
    assert "unrecognized arguments: --can-k-max=4" in elsewhere.stderr


def test_the_first_torchvision_import_is_repaired_after_a_torch_free_harness_import(tmp_path):
    """transformers imports torchvision; the repair runs then, not when the harness is imported."""
    result = run_python(
        """
        import sys
        import harness
        assert "torch" not in sys.modules
        from transformers.image_utils import load_image  # imports torchvision where it is installed
        print("ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_the_readme_documents_every_option():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `--can-"))
    assert [option.flag for option in OPTIONS if option.flag not in table] == []


def test_the_public_names_import_from_the_package_and_the_package_alone_loads_no_torch(tmp_path):
    result = run_python(
        f"""
        import sys
        import harness
        assert not [m for m in {HEAVY!r} if m in sys.modules]
        for name in harness.__all__:
            getattr(harness, name)
        print(sorted(harness.__all__) == sorted(dir(harness)))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
