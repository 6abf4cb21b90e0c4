"""Where a model's layers live when it is larger than one device: accelerate's device map and memory budget,
parsed and checked before any model loads.

Free of torch: the settings validate these on every run, and the plugin configures them on every pytest run.
"""

from __future__ import annotations

import json
import re

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's own names
_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", re.IGNORECASE)
_DEVICE = re.compile(r"\d+|cpu|disk|mps|(cuda|xpu|npu|mlu)(:\d+)?")
_BUDGET_DEVICE = re.compile(r"\d+|cpu|mps|(cuda|xpu|npu|mlu):\d+")

DeviceMap = str | dict[str, int | str]


def parse_device_map(value: str) -> DeviceMap:
    """A strategy name (auto, balanced, balanced_low_0, sequential) or a JSON object mapping module names to a GPU
    index, "cpu", "disk" or a device such as "cuda:1"; ValueError naming what is wrong otherwise."""
    if value in DEVICE_MAP_STRATEGIES:
        return value
    if not value.lstrip().startswith("{"):
        raise ValueError(
            f"device map {value!r}: expected one of {', '.join(DEVICE_MAP_STRATEGIES)}, or a JSON object such as "
            '{"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"}'
        )
    try:
        mapping = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"device map {value!r} is not valid JSON: {error}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"device map {value!r}: a JSON map must be a non-empty object of module name → device")
    for module, device in mapping.items():
        valid = isinstance(device, int) and not isinstance(device, bool) and device >= 0
        if not valid and not (isinstance(device, str) and _DEVICE.fullmatch(device)):
            raise ValueError(
                f"device map: module {module!r} is placed on {device!r}; valid places are a GPU index (0, 1, …), "
                '"cpu", "disk", or a device such as "cuda:1"'
            )
    return mapping


def parse_max_memory(value: str) -> tuple[tuple[str, str], ...]:
    """`DEVICE=SIZE,…` (e.g. `0=70GiB,cpu=200GiB`): the most each device may hold; the rest goes to disk."""
    budget = []
    for item in (part.strip() for part in value.split(",") if part.strip()):
        device, equals, size = (piece.strip() for piece in item.partition("="))
        if not equals or not _BUDGET_DEVICE.fullmatch(device) or not _SIZE.fullmatch(size):
            raise ValueError(
                f"max memory {item!r}: expected DEVICE=SIZE, DEVICE a GPU index (0, 1, …), cpu or mps, SIZE such "
                "as 20GiB, 512MB or a number of bytes (e.g. 0=70GiB,cpu=200GiB)"
            )
        budget.append((device, size))
    if not budget:
        raise ValueError(f"max memory {value!r}: expected at least one DEVICE=SIZE (e.g. 0=70GiB,cpu=200GiB)")
    devices = [device for device, _ in budget]
    if len(devices) != len(set(devices)):
        raise ValueError(f"max memory {value!r} names a device twice")
    return tuple(budget)


def max_memory_argument(budget: tuple[tuple[str, str], ...]) -> dict[int | str, str] | None:
    """The budget as accelerate takes it: GPUs by index (`0`, `cuda:0` → 0), sizes as given; None for none."""
    if not budget:
        return None
    return {_budget_key(device): size for device, size in budget}


def _budget_key(device: str) -> int | str:
    index = device.removeprefix("cuda:")
    return int(index) if index.isdigit() else device
