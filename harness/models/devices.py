"""Device and dtype choice, including the one-GPU-per-xdist-worker rule."""

from __future__ import annotations

import os
import re

import torch

from harness.core.choices import DTYPE_NAMES
from harness.core.errors import UnknownNameError
from harness.core.placement import DeviceMap

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def xdist_worker_index(worker_id: str | None = None) -> int | None:
    """Index N of the pytest-xdist worker `gwN` this process is, or None outside xdist."""
    worker_id = worker_id if worker_id is not None else os.environ.get("PYTEST_XDIST_WORKER")
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    return int(match.group(1)) if match else None


def check_available(setting: str) -> None:
    """Raise ValueError when `setting` names a device this machine does not have (before any model loads)."""
    if setting == "auto":
        return
    device = torch.device(setting)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(
                f"device {setting!r}: this machine has no usable CUDA GPU (torch {torch.__version__}, {build}); "
                "use cpu, or auto (a GPU when there is one)"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {setting!r}: this machine has {count} GPU(s), cuda:0 … cuda:{count - 1}; use one of them"
            )
    elif device.type != "cpu":
        backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
        if backend is None or not backend.is_available():
            raise ValueError(f"device {setting!r}: no {device.type} device on this machine; use cpu or auto")


def resolve_device(setting: str = "auto", worker_id: str | None = None) -> torch.device:
    """`auto`: worker gwN takes GPU N mod count, a serial run takes GPU 0, and CPU when there is no GPU."""
    if setting != "auto":
        check_available(setting)
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


def mapped_accelerators(device_map: DeviceMap) -> list[str]:
    """The devices other than cpu and disk that a JSON device map names, in its order ("cuda:N" for a GPU
    index); none for a strategy, which places by what the machine has."""
    if isinstance(device_map, str):
        return []
    places = [place for place in device_map.values() if place not in ("cpu", "disk")]
    return [f"cuda:{place}" if isinstance(place, int) else place for place in places]


def check_map_available(device_map: DeviceMap) -> None:
    """`check_available` for every device a JSON device map names (cpu and disk are always there)."""
    for device in mapped_accelerators(device_map):
        check_available(device)


def map_input_device(device_map: DeviceMap) -> torch.device:
    """Where a device-mapped model computes first, known before it loads (it decides the auto dtype): the
    first accelerator of the map (GPU 0 for a strategy, when there is one), else the CPU."""
    if isinstance(device_map, str):
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    accelerators = mapped_accelerators(device_map)
    return torch.device(accelerators[0] if accelerators else "cpu")


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: its weights' device, or, for weights accelerate offloaded (meta tensors loaded
    by its hook at each forward), the device the hook loads them onto."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return next(module.parameters()).device
