"""Names that options choose among, for concepts whose code needs torch (masks, dtypes): kept here, free of it,
so that settings and the pytest plugin's options can be validated and declared without loading torch."""

from __future__ import annotations

MASK_MODES = ("auto", "weight", "hook")  # harness.models.masking: auto = weight edit where the weight allows it
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # harness.models.devices maps them to torch dtypes
