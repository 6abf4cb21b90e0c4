"""pytest-xdist scheduling that sends every case of one model to one worker (the model loads once)."""

from __future__ import annotations

import re

from xdist.scheduler import LoadScopeScheduling

from harness.registry import registered_models

_PARAM_ID = re.compile(r"\[(?P<id>[^\]]+)\]$")


def model_of_case(nodeid: str) -> str | None:
    """The registered model a collapse case's id starts with (`…[tiny-llava-lm.down_proj-circle-k4]`)."""
    match = _PARAM_ID.search(nodeid)
    if match is None:
        return None
    for name in sorted(registered_models(), key=len, reverse=True):  # longest first: 'a-b' before 'a'
        if match.group("id").startswith(name + "-"):
            return name
    return None


class ModelGroupScheduling(LoadScopeScheduling):
    """Work units are models for collapse cases; every other test is its own unit (plain load balancing)."""

    def _split_scope(self, nodeid: str) -> str:
        model = model_of_case(nodeid)
        return f"model:{model}" if model is not None else nodeid
