"""The library versions every result, cache key and baseline is stamped with, collected in one place."""

from __future__ import annotations


def library_versions() -> dict[str, str]:
    """harness, torch, transformers and open_clip versions (imports them: call it when a result is made)."""
    import open_clip
    import torch
    import transformers

    import harness

    return {
        "harness": harness.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
    }
