"""Make `import torchvision` work on a CPU-only torch when the installed torchvision wheel is CUDA-built.

open_clip imports torchvision at module level, and transformers imports it for every model class once it is
installed. The PyPI torchvision wheel for torch 2.13.0 is built against CUDA; on the CPU torch build its native
library cannot load and registering its Python-side operators dies with
``RuntimeError: operator torchvision::nms does not exist``. We load the native library ourselves first; only if
that fails do we declare the two operator schemas torchvision's Python code registers kernels for, so the import
completes (the operators themselves are never called by this project). Where torchvision works natively this
module does nothing.

`install_import_hook` defers all of it (torch included) to the moment something first imports torchvision, so
that importing the harness, e.g. as a pytest plugin of an unrelated project, loads no torch.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_fallback_library: object | None = None  # kept alive: dropping it unregisters the schemas


def ensure_torchvision_importable() -> None:
    """Prepare the torchvision operator namespace before torchvision is first imported."""
    global _fallback_library
    if "torchvision" in sys.modules or _fallback_library is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return  # not installed: nothing to repair
    import torch

    native = Path(spec.origin).with_name("_C.so")
    if not native.exists():
        return
    try:
        torch.ops.load_library(str(native))
        return
    except OSError:
        pass  # CUDA-built library on a CPU torch: declare the schemas instead
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _fallback_library = library


class _RepairOnFirstImport(importlib.abc.MetaPathFinder):
    """Runs the repair just before torchvision is first imported, then steps aside for the regular finders."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _RepairOnFirstImport)]
            ensure_torchvision_importable()
        return None


def install_import_hook() -> None:
    """Repair torchvision when it is first imported (once; nothing if it already was)."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _RepairOnFirstImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RepairOnFirstImport())
