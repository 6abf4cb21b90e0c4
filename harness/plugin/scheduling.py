"""pytest-xdist scheduling for collapse cases: every case of one model (or of one curve) goes to one worker."""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from harness.models.registry import registered_models
from harness.plugin.case_ids import model_of, parse_node_id


def model_of_case(nodeid: str) -> str | None:
    """The registered model a collapse case's id starts with; None for any other test."""
    parsed = parse_node_id(nodeid)
    return None if parsed is None else model_of(parsed.curve, registered_models())


def curve_of_case(nodeid: str) -> str | None:
    """`model-site[-method]-category` of a collapse case (its id without `-k<k>`); None for any other test."""
    parsed = parse_node_id(nodeid)
    if parsed is None or model_of(parsed.curve, registered_models()) is None:
        return None
    return parsed.curve


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
