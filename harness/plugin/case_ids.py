"""Collapse case ids, formatted and parsed in this one module.

A case's id is its curve's parts joined by '-', `model-site[-method]-category`, and for a grid case `-k<k>`
after them: `tiny-llava-lm.down_proj-circle-k4`. `pytest -k` selects cases by it; the xdist scheduler (which
groups cases by model or curve) and the run outcome (which matches a case that never ran to its curve) see only
node ids, so they parse it back.

Parsing recovers the curve (the id without `-k<k>`), k, and — given the registered model names — the model: the
longest registered name that the id starts with, followed by '-'. Site, method and category are not split apart
again: nothing needs them one by one, and a '-' inside a name would make that split ambiguous. pytest shows the
non-ASCII characters of an id escaped (`café` → `caf\\xe9`; raw where the ini option
`disable_test_id_escaping_and_forfeit_all_rights_to_community_support` is set): a parsed curve is the id as
pytest shows it, and a model is recognised in either form.

Names with '-', '+', '.', '_' or any unicode character round-trip. Three kinds of case cannot, and are refused
when the cases are collected (CaseIdError, which the plugin turns into a usage error naming the case):

- a search case whose category is `k<digits>` or ends in `-k<digits>`: its id would read as a grid case's;
- a model whose id would start with a longer registered name and a '-' (models `a` and `a-b`, a site `b`):
  the id would read as that other model's;
- two cases of one test with the same id (a name listed twice, or parts that join alike: model `a-b` with
  site `c`, model `a` with site `b-c`): pytest would number them apart, and the numbered ids parse as neither.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

SEPARATOR = "-"
_K_SUFFIX = re.compile(r"-k(?P<k>[0-9]+)\Z")  # ASCII digits only: `\d` would read `-k١` as k = 1
# `path::function[id]`, possibly followed by xdist's `@group` suffix; the id may hold any character
_NODE_ID = re.compile(r"\A(?P<test>.*?::[^\[]*)\[(?P<id>.*)\](?:@[^\]]*)?\Z", re.DOTALL)


class CaseIdError(ValueError):
    """A case whose id would not parse back to its own model, curve and k."""


@dataclass(frozen=True)
class ParsedCase:
    """A node id read as a collapse case's: the test it belongs to, its curve as pytest shows it, and its k
    (None: a search case, or a test of some other kind)."""

    test: str
    curve: str
    k: int | None

    @property
    def curve_node_id(self) -> str:
        """`path::function[curve]`: what names the curve among the run's node ids (a search case's own id)."""
        return f"{self.test}[{self.curve}]"


def format_case_id(
    model: str, site: str, method: str | None, category: str, k: int | None = None, *, models: Collection[str]
) -> str:
    """The id of the case of (model, site, method, category) at k (None: a search case); `method` None leaves
    it out (a case not expanded over ranking methods). `models` are the registered model names the id is parsed
    against: an id that would not parse back to this model, curve and k is a CaseIdError saying why."""
    curve = SEPARATOR.join([model, site, *([method] if method is not None else []), category])
    case_id = curve if k is None else f"{curve}{SEPARATOR}k{k}"
    if k is None and _K_SUFFIX.search(case_id):
        raise CaseIdError(
            f"category {category!r} ends like a k: the search case {case_id!r} would read as a grid case at "
            f"k = {_K_SUFFIX.search(case_id)['k']}; rename it so that it does not end in '-k<digits>'"
        )
    if model not in models:
        raise CaseIdError(f"model {model!r} is not registered: its cases' ids could not be parsed back to it")
    for form in dict.fromkeys([curve, shown_by_pytest(curve)]):  # raw, and escaped as pytest shows it
        read = model_of(form, models)
        if read != model:
            raise CaseIdError(
                f"the id {case_id!r} would read as model {read!r}, not {model!r}: the registered name {read!r} "
                f"begins it; rename one of the two models or the site {site!r}"
            )
    return case_id


def parse_node_id(nodeid: str) -> ParsedCase | None:
    """The test, curve and k of a node id with a parameter id (xdist's `@group` suffix ignored); None for a
    node id without one."""
    match = _NODE_ID.match(nodeid)
    if match is None:
        return None
    suffix = _K_SUFFIX.search(match["id"])
    if suffix is None:
        return ParsedCase(match["test"], match["id"], None)
    return ParsedCase(match["test"], match["id"][: suffix.start()], int(suffix["k"]))


def curve_of(nodeid: str) -> tuple[str, int | None]:
    """(the curve node id, k) of a grid case; (the node id without xdist's suffix, None) of a search case;
    (the node id, None) of a test without a parameter id. Cases of one curve in one test share the first."""
    parsed = parse_node_id(nodeid)
    return (nodeid, None) if parsed is None else (parsed.curve_node_id, parsed.k)


def model_of(curve: str, models: Collection[str]) -> str | None:
    """The registered model a curve (or case id) starts with, followed by '-', in its own or its pytest-shown
    form; the longest such name, so that `llava-1.5-7b-…` is not read as a model `llava`. None if none does."""
    forms = [(form, name) for name in models for form in {name, shown_by_pytest(name)}]
    for form, name in sorted(forms, key=lambda pair: len(pair[0]), reverse=True):
        if curve.startswith(form + SEPARATOR):
            return name
    return None


def shown_by_pytest(text: str) -> str:
    """`text` as pytest shows it in an id: non-ASCII and non-printable characters backslash-escaped, as pytest's
    own (private) `_pytest.compat.ascii_escaped` does."""
    return text.encode("unicode_escape").decode("ascii")
