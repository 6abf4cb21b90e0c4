"""Fault-and-tamper suite, files the harness writes: each test replays a defect found by probing and shows the
fixed behaviour — every file the harness writes is usable by others, never lost, never silently replaced.

The defects:
1. every `model.safetensors` the harness wrote was mode 0600 whatever the umask (safetensors ≥ 0.8 writes through
   a 0600 temporary file it renames, safetensors/safetensors#782), so another user of a shared cache could not
   load it; now a built folder follows the umask, whatever its builder did;
2. a build killed by SIGKILL left its hidden staging folder `.{target}-XXXX` beside the target forever; now the
   next build of that target removes it (and nothing of another target);
3. the `.complete` marker was trusted: a truncated checkpoint gave a raw safetensors error naming no file; now
   the marker records every file's size, a mismatch is named in a warning and the folder rebuilt, and an
   unreadable weight file is a CorruptCheckpointError naming the folder, the file and what to do — an error,
   never a skip;
4. a model name with `/` or `..` placed its offload folder outside `<cache>/offload`;
5. a checkpoint shipping its own code could run it (after a prompt under `pytest -s`);
6. plots of curves whose categories have no ASCII letters (`猫`, `狗`) overwrote each other;
7. two runs could write one report folder at once, and plots and `incomplete/` of earlier runs stayed beside a
   new complete report.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors import SafetensorError

from harness.core.errors import CorruptCheckpointError, HarnessError, ModelUnavailableError
from harness.core.store import build_once
from harness.models import registry
from harness.models.loading import load_model, load_model_config, offload_prefix, resolve_checkpoint_folder
from harness.models.registry import ModelSpec
from harness.reporting.plots import plot_file_name
from harness.zoo import build_tiny_llama
from tests.test_run_reports import CASES
from tests.test_run_reports import GRID as REPORT_GRID

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


def on_cpu(spec: ModelSpec, cache_dir: Path, **options):
    return load_model(spec, cache_dir=cache_dir, device="cpu", dtype="float32", **options)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# -- 1. a built folder is readable by everyone the umask lets in --------------------------------------------------
@pytest.fixture
def shared_folder():
    """A fresh folder that every user can reach (pytest's tmp_path is 0700 to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="can-shared-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def as_nobody():
    """`as_nobody(*command)`: run a command as user and group nobody (65534) with no supplementary groups,
    through util-linux `setpriv`; only root can switch users."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        pytest.skip("reading a file as another user needs the tests to run as root (to switch to nobody)")
    if setpriv is None:
        pytest.skip("util-linux's setpriv is missing: the tests cannot run a command as another user")
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    return lambda *command: subprocess.run(
        [*prefix, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60
    )


def save_and_lock_down(staging: Path) -> None:
    """A builder as careless as any: `save_pretrained` (safetensors' 0600 file) plus a 0700 folder with a 0600
    file of its own."""
    build_tiny_llama(staging)
    private = staging / "private"
    private.mkdir(mode=0o700)
    (private / "notes.txt").write_text("written 0600\n")
    os.chmod(private / "notes.txt", 0o600)


def test_a_built_checkpoint_is_readable_by_another_user(shared_folder, as_nobody, umask_022):
    """The defect: `model.safetensors` was 0600 and another user's load failed with "permission denied". Now,
    under umask 022, user nobody reads every file of the built folder and lists every folder."""
    if as_nobody("test", "-x", str(shared_folder)).returncode != 0:
        pytest.skip(f"user nobody cannot reach the temporary folder {shared_folder} (set TMPDIR to a shared one)")
    built = build_once(shared_folder / "zoo" / "tiny-llama-v1", save_and_lock_down)
    files = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file())
    assert {"model.safetensors", "config.json", "private/notes.txt", ".complete"} <= set(files)
    result = as_nobody("find", str(built), "-type", "f", "-exec", "cat", "{}", "+")  # every folder, every file
    assert result.returncode == 0, result.stderr
    assert "Permission denied" not in result.stderr


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o007, 0o660, 0o770)])
def test_a_built_folder_follows_the_umask_whatever_its_builder_did(tmp_path, mask, file_mode, folder_mode):
    """Every file and folder of a build gets 0666 / 0777 minus the umask: a group-shared cache (umask 007)
    gives the group what it gives the owner, and the world nothing."""
    previous = os.umask(mask)
    try:
        built = build_once(tmp_path / "zoo" / "asset", save_and_lock_down)
    finally:
        os.umask(previous)
    modes = {p.relative_to(built).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [built, *built.rglob("*")]}
    assert modes["model.safetensors"] == file_mode
    assert {name: mode for name, mode in modes.items() if (built / name).is_file() and mode != file_mode} == {}
    assert {name: mode for name, mode in modes.items() if (built / name).is_dir() and mode != folder_mode} == {}


# -- 2. a build killed outright leaves nothing behind after the next build ----------------------------------------
KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from harness.core.store import build_once

def build(staging):
    (staging / "model.safetensors").write_bytes(os.urandom(1 << 20))
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or `kill -9` would, mid-build

build_once(Path(sys.argv[1]), build)
"""


def test_a_staging_folder_left_by_a_killed_build_is_removed_by_the_next_build(tmp_path):
    """SIGKILL during a build leaves `.{target}-XXXX` (with a megabyte in it) beside the target; the next build
    of that target removes it — and leaves alone the staging folder of the longer target `{target}-on-…` (whose
    build may be running: its lock file is there), of `{target}0`, and anything else."""
    zoo = tmp_path / "zoo"
    target = zoo / "tiny-v1"
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(target)], cwd=ROOT, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in zoo.iterdir() if p.name.startswith(".tiny-v1-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").stat().st_size == 1 << 20
    (zoo / ".tiny-v1-scratch.tmp").write_text("a scratch file of a killed build")
    others = [zoo / ".tiny-v1-on-0123456789ab-k3j4h5g6", zoo / ".tiny-v10-a1b2c3d4", zoo / ".tiny-v2-a1b2c3d4"]
    (zoo / "tiny-v1-on-0123456789ab.lock").touch()
    for other in others:
        other.mkdir()
        (other / "weights.bin").write_bytes(b"another target's")

    built = build_once(target, lambda staging: (staging / "weights.bin").write_bytes(b"w"))

    assert (built / "weights.bin").read_bytes() == b"w"
    assert not [p.name for p in zoo.iterdir() if p.name.startswith(".tiny-v1-") and p not in others]
    assert all((other / "weights.bin").read_bytes() == b"another target's" for other in others)


# -- 3. the marker records every file's size; an unreadable weight file is named ----------------------------------
@pytest.fixture
def built_llama(tmp_path) -> Path:
    """tiny-llama built into a cache of its own, as every embedded model and GGUF conversion is."""
    return resolve_checkpoint_folder(registry.get_model_spec("tiny-llama"), tmp_path)


def test_the_marker_records_every_file_with_its_size(built_llama):
    marker = json.loads((built_llama / ".complete").read_text())
    on_disk = {
        p.relative_to(built_llama).as_posix(): p.stat().st_size
        for p in built_llama.rglob("*")
        if p.is_file() and p.name != ".complete"
    }
    assert marker["files"] == on_disk and "model.safetensors" in on_disk


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_built_checkpoint_is_named_and_rebuilt(built_llama, tmp_path, damage):
    """The defect: a truncated model.safetensors under a `.complete` marker was loaded, and safetensors said
    "incomplete metadata, file not fully covered" naming no file. Now "is it built?" finds it (one stat per file),
    a warning names the file, and the folder is rebuilt under the lock: the model loads, with its weights."""
    weights = built_llama / "model.safetensors"
    original = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(original[: len(original) // 2])
        expected = rf"model\.safetensors is {len(original) // 2} bytes, {len(original)} were built"
    else:
        weights.unlink()
        expected = r"model\.safetensors is missing"
    with pytest.warns(UserWarning, match=rf"cached folder {re.escape(str(built_llama))} is damaged: {expected}"):
        loaded = on_cpu(registry.get_model_spec("tiny-llama"), tmp_path)
    assert loaded.path == built_llama and weights.read_bytes() == original


def test_an_old_marker_counts_as_built_unverified(tmp_path):
    """A folder built by an earlier version (plain-text marker) is used as it is: no rebuild (a GGUF conversion
    would cost minutes on every machine, and a read-only shared cache could not rebuild at all), no warning."""
    builds = []

    def build(staging: Path) -> None:
        builds.append(staging)
        (staging / "w.bin").write_bytes(b"ww")

    target = build_once(tmp_path / "asset", build)
    (target / ".complete").write_text("asset\n")
    (target / "w.bin").write_bytes(b"w")  # damage an old marker cannot tell
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_once(target, build) == target
    assert len(builds) == 1 and (target / "w.bin").read_bytes() == b"w"


def test_a_truncated_checkpoint_with_an_old_marker_fails_naming_folder_file_and_remedy(built_llama, tmp_path):
    """What the marker cannot catch (an old marker; damage that keeps the size) the load names: a
    CorruptCheckpointError (not ModelUnavailableError: the cases error, never skip) naming the folder and the
    file, saying to delete the folder, chained from safetensors' error."""
    (built_llama / ".complete").write_text(f"{built_llama.name}\n")
    weights = built_llama / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(CorruptCheckpointError) as error:
        on_cpu(registry.get_model_spec("tiny-llama"), tmp_path)
    message = str(error.value)
    assert (
        f"the checkpoint in {built_llama} has a corrupt or truncated weight file (model.safetensors (" in message
    )
    assert f"delete the folder {built_llama}: the harness builds it again" in message
    assert isinstance(error.value.__cause__, SafetensorError)
    assert isinstance(error.value, HarnessError) and not isinstance(error.value, ModelUnavailableError)


def test_an_overwritten_weight_file_of_the_same_size_is_named(built_llama, tmp_path):
    """Garbage of the right size passes the size check and is named at load time."""
    weights = built_llama / "model.safetensors"
    weights.write_bytes(random.Random(0).randbytes(weights.stat().st_size))
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors \(Error while deserializing header"):
        on_cpu(registry.get_model_spec("tiny-llama"), tmp_path)


def test_a_damaged_folder_in_a_read_only_cache_is_a_clear_error(tmp_path, run_read_only):
    """A damaged folder in a cache this user cannot write: a CacheError saying what is damaged and what to do."""
    target = build_once(tmp_path / "zoo" / "asset", lambda staging: (staging / "w.bin").write_bytes(b"ww"))
    (target / "w.bin").write_bytes(b"w")
    code = (
        "from pathlib import Path\nfrom harness.core.errors import CacheError\n"
        "from harness.core.store import build_once\n"
        f"try:\n    build_once(Path({str(target)!r}), lambda staging: None)\n"
        "except CacheError as error:\n    print('CACHE ERROR:', error)\n"
    )
    result = run_read_only(["-W", "ignore", "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "CACHE ERROR: asset is damaged (w.bin is 1 bytes, 2 were built)" in result.stdout
    assert "--can-cache-dir" in result.stdout


def test_a_truncated_checkpoint_makes_its_cases_error_not_skip(pytester, cache_dir, loaded):
    """Through the plugin: a truncated weight file of a present checkpoint errors both cases of its cell, with
    the clear error, and skips none."""
    broken = Path(shutil.copytree(loaded.path, pytester.path / "broken", ignore=shutil.ignore_patterns(".*")))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    pytester.makepyfile(test_collapse=CASES.read_text())
    result = pytester.runpytest(
        *REPORT_GRID, "--can-cache-dir", str(cache_dir), "--can-report-dir", str(pytester.path / "reports"),
        "--can-categories", "circle", "--can-k-max", "1", "--can-model-path", f"tiny-llava={broken}",
    )  # fmt: skip
    result.assert_outcomes(errors=2)
    assert re.search(
        r"CorruptCheckpointError: tiny-llava: the checkpoint in .*broken has a corrupt", result.stdout.str()
    )


# -- 4. an offload folder stays inside <cache>/offload ------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "prefix"),
    [("../evil", "_._evil-"), ("org/model", "org_model-"), (".hidden", "_hidden-"), ("a b\x00c", "a_b_c-")],
)
def test_an_offload_prefix_is_a_plain_file_name(name, prefix):
    assert offload_prefix(name) == prefix
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*-", offload_prefix(name))


@pytest.mark.parametrize("name", ["../evil", "org/model"])
def test_a_model_name_cannot_move_its_offload_folder(tmp_path, name):
    """The defect: `mkdtemp(prefix="../evil-", dir=<cache>/offload)` made the folder in <cache>. Now a model
    loaded through a device map under such a name gets its offload folder inside <cache>/offload."""
    cache = tmp_path / "cache"
    spec = replace(registry.get_model_spec("tiny-llama"), name=name)
    loaded = load_model(spec, cache_dir=cache, device="cpu", dtype="float32", device_map={"": "cpu"})
    assert loaded.offload_folder is not None and loaded.offload_folder.parent == cache / "offload"
    assert {p.name for p in cache.iterdir()} <= {"digests", "offload", "zoo"}  # no `evil-…` beside them
    assert not list(tmp_path.glob("*evil*")) and not (cache / "offload" / "org").exists()


# -- 5. a checkpoint's own code never runs ------------------------------------------------------------------------
@pytest.fixture
def custom_code_checkpoint(tmp_path) -> tuple[Path, Path]:
    """(a checkpoint folder whose config asks for its own Python code, the file that code writes when run)."""
    folder, ran = tmp_path / "custom", tmp_path / "custom-code-ran"
    folder.mkdir()
    config = {
        "model_type": "can-custom",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling.Model"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "configuration_custom.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        from transformers import PretrainedConfig

        Path({str(ran)!r}).write_text("ran")

        class CustomConfig(PretrainedConfig):
            model_type = "can-custom"
        """)
    )
    return folder, ran


@pytest.mark.parametrize("load", [on_cpu, load_model_config], ids=["load_model", "load_model_config"])
def test_a_checkpoints_own_code_never_runs_and_nothing_prompts(
    custom_code_checkpoint, tmp_path, monkeypatch, load
):
    """The defect: transformers asked "Do you wish to run the custom code? [y/N]" (visible under `pytest -s`) and
    ran the checkpoint's code on "y". Now it is refused without a question: transformers' error, and the code
    never ran."""
    folder, ran = custom_code_checkpoint
    questions = []

    def answer_yes(prompt: str = "") -> str:
        questions.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer_yes)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load(ModelSpec(name="custom", source=str(folder), **registry.CAUSAL_LM), cache_dir=tmp_path)
    assert questions == [] and not ran.exists()


def from_pretrained_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return [call for call in calls if isinstance(call.func, ast.Attribute) and call.func.attr == "from_pretrained"]


def test_every_from_pretrained_refuses_remote_code():
    """Every `from_pretrained` of the loading path, the zoo, the training scripts and the CLIP scorer passes
    trust_remote_code=False (the GGUF converter is checked where it is maintained)."""
    files = [ROOT / "harness/models/loading.py", ROOT / "harness/models/clip_score.py"]
    files += sorted((ROOT / "harness/zoo").glob("*.py")) + sorted((ROOT / "training").glob("*.py"))
    seen, missing = 0, []
    for path in files:
        for call in from_pretrained_calls(path):
            seen += 1
            keywords = {k.arg: k.value for k in call.keywords}
            value = keywords.get("trust_remote_code")
            if not (isinstance(value, ast.Constant) and value.value is False):
                missing.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert seen >= 7 and missing == []


# -- 6. one plot file per curve -----------------------------------------------------------------------------------
def plot_name(category: str, model: str = "synth-llava") -> str:
    return plot_file_name({"model": model, "site": "lm.down_proj", "category": category})


def test_plot_files_of_categories_without_ascii_letters_are_distinct():
    """The defect: `猫` and `狗` both became `synth-llava__lm.down_proj___.png`. Letters of any script are kept."""
    assert plot_name("猫") == "synth-llava__lm.down_proj__猫.png"
    assert plot_name("狗") == "synth-llava__lm.down_proj__狗.png"
    assert plot_name("circle") == "synth-llava__lm.down_proj__circle.png"  # unchanged where nothing is replaced


@pytest.mark.parametrize(
    "categories",
    [("a/b", "a_b", "a b", "a\\b"), ("..", "_", "__"), ("a\x00b", "a\nb", "a_b"), ("x" * 300, "x" * 301)],
    ids=["separators", "dots", "control", "long"],
)
def test_plot_files_never_share_a_name_nor_leave_the_plot_folder(tmp_path, categories):
    """Anything replaced (separators, spaces, control characters, '..') or cut (a name over 200 bytes) adds a
    hash of the exact label; the name stays one plain file name inside `plots/`."""
    names = [plot_name(category) for category in categories]
    assert len(set(names)) == len(names), names
    plots = tmp_path / "plots"
    for name in names:
        assert len(name.encode()) <= 255 and not name.startswith(".") and "/" not in name and ".." not in name
        assert (plots / name).resolve().parent == plots.resolve()
    assert plot_name(".x", model=".hidden").startswith("_hidden")


# -- 7. one run per report folder; a complete report replaces the last one whole ----------------------------------
READY_THEN_WAIT = """
import os, time
from pathlib import Path

def pytest_runtest_call(item):
    Path(os.environ["CAN_TEST_READY"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while not Path(os.environ["CAN_TEST_GO"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_a_report_folder_in_use_is_refused_and_a_killed_run_frees_it(pytester, cache_dir, tmp_path):
    """A second run with the same --can-report-dir while the first is in its cases: a usage error (exit 4)
    naming the folder and the first run's pid, before any case — serial (after collection) and under xdist
    (at configure time). The first run is then killed with SIGKILL: the OS frees the folder, and the next run
    writes its report there."""
    pytester.makepyfile(test_collapse=CASES.read_text())
    pytester.makeconftest(READY_THEN_WAIT)
    reports, ready, go = pytester.path / "reports", tmp_path / "ready", tmp_path / "go"
    args = [*REPORT_GRID, "--can-cache-dir", str(cache_dir), "--can-report-dir", str(reports)]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    env = {**os.environ, "CAN_TEST_READY": str(ready), "CAN_TEST_GO": str(go)}
    first = subprocess.Popen(command, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(ready, first)
        for extra in ([], ["-n", "1"]):
            second = subprocess.run(
                [*command, *extra], cwd=pytester.path, env=env, capture_output=True, text=True, timeout=300
            )
            assert second.returncode == pytest.ExitCode.USAGE_ERROR, second.stdout[-2000:] + second.stderr[-2000:]
            assert f"the report folder {reports} is in use by another run (pid {first.pid} on" in second.stderr
            assert "passed" not in second.stdout
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    go.write_text("go")
    third = subprocess.run(command, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stdout[-3000:]
    assert json.loads((reports / "collapse.json").read_text())["meta"]["complete"] is True


SEARCH_CASES = """
import os
import pytest

@pytest.mark.collapse_search(models=["tiny-llava"], sites=["lm.down_proj"])
def test_search(collapse_analysis, can_category):
    if can_category in os.environ.get("CAN_TEST_RAISE_FOR", "").split(","):
        raise RuntimeError(f"a fault while checking {can_category}")
"""
SEARCH_ARGS = (
    "-p", "no:cacheprovider", "--can-models", "tiny-llava", "--can-max-images", "4", "--can-sites", "lm.down_proj",
    "--can-k-max", "4", "--can-max-new-tokens", "8", "--can-control-seeds", "1", "--can-device", "cpu",
    "--can-dtype", "float32",
)  # fmt: skip


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("experiment")  # pytester's in-process runs must find transformers' classes imported
def test_a_complete_report_clears_stale_plots_and_incomplete_and_an_incomplete_one_deletes_nothing(
    pytester, cache_dir, monkeypatch
):
    """Run 1 (circle, square) is complete; run 2 raises in a case: its report goes to incomplete/ and every file
    of run 1's report stays byte for byte; run 3 (circle only) is complete: square's plot and incomplete/ are
    gone; run 4 (a grid, no searched curve) leaves no plot and no thresholds.csv of earlier runs."""
    pytester.makepyfile(test_search=SEARCH_CASES, test_collapse=CASES.read_text())
    reports = pytester.path / "reports"

    def run(*args: str, raising: str = ""):
        monkeypatch.setenv("CAN_TEST_RAISE_FOR", raising)
        common = ("--can-cache-dir", str(cache_dir), "--can-report-dir", str(reports))
        return pytester.runpytest(*SEARCH_ARGS, *common, *args)

    def plots() -> list[str]:
        return sorted(p.name for p in (reports / "plots").iterdir())

    both = ["tiny-llava__lm.down_proj__circle.png", "tiny-llava__lm.down_proj__square.png"]
    assert run("test_search.py", "--can-categories", "circle,square").ret == 0
    assert plots() == both
    complete = folder_bytes(reports)

    assert run("test_search.py", "--can-categories", "circle,square", raising="square").ret == 1
    assert json.loads((reports / "incomplete" / "collapse.json").read_text())["meta"]["complete"] is False
    assert {k: v for k, v in folder_bytes(reports).items() if not k.startswith("incomplete/")} == complete

    assert run("test_search.py", "--can-categories", "circle").ret == 0
    assert plots() == both[:1] and not (reports / "incomplete").exists()
    analyses = json.loads((reports / "collapse.json").read_text())["analyses"]
    assert [row["category"] for row in analyses] == ["circle"]

    grid = run("test_collapse.py", "--can-categories", "circle", "--can-k-max", "1", "--can-models", "tiny-llava")
    assert grid.ret == 0
    assert plots() == [] and not (reports / "thresholds.csv").exists() and (reports / "collapse.csv").exists()


def test_a_run_without_collapse_cases_takes_no_report_folder(pytester, tmp_path):
    """A run of ordinary tests (the harness's own suite, with the default folder) writes no report and takes no
    folder: two such runs at once never refuse each other."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    reports = tmp_path / "reports"
    result = pytester.runpytest("-p", "no:cacheprovider", "--can-report-dir", str(reports))
    result.assert_outcomes(passed=1)
    assert not reports.exists()
