"""Device and dtype choice, including the one-GPU-per-xdist-worker rule."""

from __future__ import annotations

import os
import re

import torch

from harness.errors import UnknownNameError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def xdist_worker_index(worker_id: str | None = None) -> int | None:
    """Index N of the pytest-xdist worker `gwN` this process is, or None outside xdist."""
    worker_id = worker_id if worker_id is not None else os.environ.get("PYTEST_XDIST_WORKER")
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    return int(match.group(1)) if match else None


def resolve_device(setting: str = "auto", worker_id: str | None = None) -> torch.device:
    """`auto`: worker gwN takes GPU N mod count, a serial run takes GPU 0, and CPU when there is no GPU."""
    if setting != "auto":
        return torch.device(setting)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = xdist_worker_index(worker_id) or 0
    return torch.device("cuda", index % torch.cuda.device_count())


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on GPU (fp16 overflows on massive activations), float32 on CPU."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if setting not in DTYPES:
        raise UnknownNameError("dtype", setting, ["auto", *DTYPES])
    return DTYPES[setting]
