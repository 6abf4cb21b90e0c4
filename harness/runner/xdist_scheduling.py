"""pytest-xdist scheduling for collapse cases: every case of one model (or of one curve) goes to one worker."""

from __future__ import annotations

import re

from xdist.scheduler import LoadScopeScheduling

from harness.models.registry import registered_models

# `…::test_collapse[tiny-llava-lm.down_proj-circle-k4]`, possibly followed by xdist's `@group` suffix
_CASE_ID = re.compile(r"\[(?P<id>[^\[\]]+)\](?:@[^\[\]]*)?$")
_K_SUFFIX = re.compile(r"-k\d+$")


def model_of_case(nodeid: str) -> str | None:
    """The registered model a collapse case's id starts with; None for any other test."""
    match = _CASE_ID.search(nodeid)
    if match is None:
        return None
    for name in sorted(registered_models(), key=len, reverse=True):  # longest first: 'a-b' before 'a'
        if match.group("id").startswith(name + "-"):
            return name
    return None


def curve_of_case(nodeid: str) -> str | None:
    """`model-site-category` of a collapse case (its id without `-k<k>`); None for any other test."""
    if model_of_case(nodeid) is None:
        return None
    return _K_SUFFIX.sub("", _CASE_ID.search(nodeid).group("id"))


class CollapseCaseScheduling(LoadScopeScheduling):
    """Work units are models (`by="model"`: each model loads on one worker) or curves (`by="curve"`: a model
    loads on every worker that gets one of its curves); every other test is its own unit (plain load balancing).
    """

    def __init__(self, config, log=None, *, by: str = "model"):
        super().__init__(config, log)
        self._group_of = model_of_case if by == "model" else curve_of_case

    def _split_scope(self, nodeid: str) -> str:
        group = self._group_of(nodeid)
        return f"collapse:{group}" if group is not None else nodeid
