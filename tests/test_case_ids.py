"""Case ids, formatted and parsed by one module: every id the parametrisation gives a case parses back, from the
node id pytest shows (non-ASCII escaped, xdist's `@group` suffix or not), to its model, curve and k; the ids that
could not are refused when they are formatted."""

from __future__ import annotations

import re

import pytest
from _pytest.compat import ascii_escaped  # how pytest shows an id: the oracle the parser must agree with
from hypothesis import assume, given
from hypothesis import strategies as st

from harness.plugin.case_ids import CaseIdError, curve_of, format_case_id, model_of, parse_node_id, shown_by_pytest

TEST = "cases/test_collapse.py::test_collapse"
# names built mostly from the characters ids are made of, with any other character (unicode, brackets, '@', ':',
# whitespace, backslashes) mixed in
NAME_CHARACTERS = st.one_of(
    st.sampled_from("-+._k0123456789abcz"), st.characters(codec="utf-8", exclude_categories=("Cs",))
)
NAMES = st.text(NAME_CHARACTERS, min_size=1, max_size=12)
KS = st.one_of(st.none(), st.integers(min_value=0, max_value=100_000))
GROUPS = st.one_of(st.none(), st.text(st.characters(codec="ascii", exclude_characters="]"), max_size=8))


def node_id(case_id: str, *, escaped: bool, group: str | None) -> str:
    """The node id pytest gives the case (escaped unless the ini option disabling that is set), with xdist's
    `@group` suffix where one is given."""
    shown = ascii_escaped(case_id) if escaped else case_id
    return f"{TEST}[{shown}]" + ("" if group is None else f"@{group}")


@given(
    model=NAMES,
    site=NAMES,
    method=st.one_of(st.none(), NAMES),
    category=NAMES,
    k=KS,
    others=st.lists(NAMES, max_size=3),
    shorter=st.booleans(),
    escaped=st.booleans(),
    group=GROUPS,
)
def test_every_id_that_formats_parses_back_to_its_model_curve_and_k(
    model, site, method, category, k, others, shorter, escaped, group
):
    """Other registered names, random ones and (`shorter`) the model's own name up to its last '-' (`llava`
    beside `llava-1.5-7b`), leave the id's model as it was given."""
    models = {model, *others, *([model.rsplit("-", 1)[0]] if shorter else [])}
    try:
        case_id = format_case_id(model, site, method, category, k, models=models)
    except CaseIdError:
        assume(False)  # refused: the property is about the ids that are given out
    curve = "-".join([model, site, *([method] if method is not None else []), category])
    parsed = parse_node_id(node_id(case_id, escaped=escaped, group=group))
    shown_curve = ascii_escaped(curve) if escaped else curve
    assert (parsed.test, parsed.curve, parsed.k) == (TEST, shown_curve, k)
    assert model_of(parsed.curve, models) == model
    assert curve_of(node_id(case_id, escaped=escaped, group=group)) == (f"{TEST}[{shown_curve}]", k)


@given(model=NAMES, site=NAMES, method=st.one_of(st.none(), NAMES), category=NAMES, k=KS)
def test_alone_in_the_registry_a_model_is_refused_only_for_a_search_category_that_ends_like_a_k(
    model, site, method, category, k
):
    """Names with '-', '+', '.', '_' and any unicode character round-trip; with no other model registered the
    one thing refused is a search case whose category reads as `-k<digits>`."""
    ends_like_a_k = re.search(r"(\A|-)k[0-9]+\Z", category) is not None
    if k is None and ends_like_a_k:
        with pytest.raises(CaseIdError, match="would read as a grid case"):
            format_case_id(model, site, method, category, k, models={model})
    else:
        format_case_id(model, site, method, category, k, models={model})


def test_the_id_is_the_parts_joined_by_dashes_with_k_last():
    models = {"tiny-llava"}
    assert format_case_id("tiny-llava", "lm.down_proj", None, "circle", 4, models=models) == (
        "tiny-llava-lm.down_proj-circle-k4"
    )
    assert format_case_id("tiny-llava", "lm.down_proj+lm.gate_proj", "pcicn", "circle", models=models) == (
        "tiny-llava-lm.down_proj+lm.gate_proj-pcicn-circle"
    )


@pytest.mark.parametrize(
    ("category", "k", "refused"),
    [
        ("k3", None, True),
        ("blue-k9", None, True),
        ("blue-k9", 16, False),  # a grid id's k is its last `-k<digits>`
        ("k", None, False),
        ("bk9", None, False),
        ("blue-k\u0661", None, False),  # an Arabic-Indic digit is no k
    ],
)
def test_a_search_category_that_ends_like_a_k_is_refused_naming_it(category, k, refused):
    if refused:
        with pytest.raises(CaseIdError, match=re.escape(f"category {category!r} ends like a k")):
            format_case_id("m", "s", None, category, k, models={"m"})
    else:
        parsed = parse_node_id(f"{TEST}[{format_case_id('m', 's', None, category, k, models={'m'})}]")
        assert (parsed.curve, parsed.k) == (f"m-s-{category}", k)


def test_a_model_whose_id_starts_with_a_longer_registered_name_is_refused():
    """`a` with site `b` reads as model `a-b`: refused, naming both models; any other site of `a` is fine."""
    with pytest.raises(CaseIdError, match="would read as model 'a-b', not 'a'"):
        format_case_id("a", "b", None, "circle", 1, models={"a", "a-b"})
    assert model_of(format_case_id("a", "c", None, "circle", 1, models={"a", "a-b"}), {"a", "a-b"}) == "a"


def test_an_unregistered_model_is_refused():
    with pytest.raises(CaseIdError, match="model 'x' is not registered"):
        format_case_id("x", "s", None, "c", models={"y"})


def test_a_unicode_model_is_recognised_as_pytest_shows_it_and_raw():
    models = {"modèle-ü"}
    case_id = format_case_id("modèle-ü", "lm.down_proj", None, "café", 2, models=models)
    for escaped in (True, False):
        parsed = parse_node_id(node_id(case_id, escaped=escaped, group=None))
        assert model_of(parsed.curve, models) == "modèle-ü"
    assert shown_by_pytest("modèle-ü") == ascii_escaped("modèle-ü")


@pytest.mark.parametrize("nodeid", ["tests/test_x.py::test_y", "tests/test_x.py::test_y@group", f"{TEST}[a]-b"])
def test_a_node_id_without_a_parameter_id_is_not_a_case(nodeid):
    assert parse_node_id(nodeid) is None
    assert curve_of(nodeid) == (nodeid, None)
