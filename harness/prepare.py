"""Convert the registered models that ship as GGUF files in PyPI packages into the harness cache, once, so that no
later run pays for it: `python -m harness.prepare [NAME ...]` (default: every such model whose package is
installed; the README's set-up runs it). A model whose package is absent is reported and skipped."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.errors import ModelUnavailableError
from harness.loading import resolve_checkpoint_folder
from harness.registry import get_model_spec, registered_models
from harness.settings import default_cache_dir


def packaged_models() -> list[str]:
    return [name for name in registered_models() if get_model_spec(name).gguf is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.prepare", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"models to convert (default: {', '.join(packaged_models())})")
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
