"""What a setting changes, declared once on its dataclass field, and the records derived from those declarations.

Every field of a settings dataclass (HarnessSettings, RankingOptions, StageThresholds, ModelSpec) carries one
`affects(...)` tag in its metadata:

- RANKING: it changes a neuron ranking, and so everything measured with it (it keys the ranking cache);
- MEASUREMENT: it changes what is measured on a ranking (a stage threshold, the k search, the CLIP model);
- PROVENANCE: no number depends on it beyond float rounding (where files live, batch sizes, which data folder:
  the data themselves are identified by their content hashes), so it is recorded, never compared.

The ranking cache key, the record stamped on every point and report, and what a regression baseline compares are
all computed by `recorded(...)` from these tags, so a field added to a dataclass is covered everywhere the day it
is declared; a field without a tag is an error, not a silent omission.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

RANKING, MEASUREMENT, PROVENANCE = "ranking", "measurement", "provenance"
SCOPES = (RANKING, MEASUREMENT, PROVENANCE)
RESULTS = (RANKING, MEASUREMENT)  # every scope a result depends on
_TAG = "can_affects"
_MISSING = object()


@dataclass(frozen=True)
class Affects:
    """The tag of one field. `kinds`: the probes that read it (harness.runner.probe; None: every probe).
    `per_method`: read only by the ranking methods that name it among the options they read
    (harness.science.ranking_methods). `nested`: the value is a tagged dataclass,
    recorded field by field. `resolved`: its value is only known once a model is loaded (a dtype chosen by the
    device): the record takes it from the caller, which must give it. `recorded_as`: the property (and record
    name) that holds its effective value, e.g. a default that depends on another field. `per_session`: a
    measurement setting that the unmasked baseline is measured with too (the CLIP model), fixed for a session
    like every ranking setting."""

    scope: str | None
    kinds: tuple[str, ...] | None = None
    per_method: bool = False
    nested: bool = False
    resolved: bool = False
    recorded_as: str | None = None
    per_session: bool = False

    def applies(self, name: str, kind: str | None, reads: Collection[str] | None) -> bool:
        """Whether field `name` is read by an experiment of `kind` whose ranking method reads the per-method
        options `reads` (None: any)."""
        return (self.kinds is None or kind is None or kind in self.kinds) and (
            not self.per_method or reads is None or name in reads
        )


def affects(
    scope: str,
    *,
    kinds: tuple[str, ...] | None = None,
    per_method: bool = False,
    resolved: bool = False,
    recorded_as: str | None = None,
    per_session: bool = False,
) -> Mapping[str, Affects]:
    """Field metadata: `field(default=..., metadata=affects(RANKING))`."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    tag = Affects(scope, kinds, per_method, resolved=resolved, recorded_as=recorded_as, per_session=per_session)
    return MappingProxyType({_TAG: tag})


def nested() -> Mapping[str, Affects]:
    """Field metadata of a field whose value is itself a dataclass of tagged fields (recorded by its tags)."""
    return MappingProxyType({_TAG: Affects(None, nested=True)})


def tag_of(owner: type, field: dataclasses.Field) -> Affects:
    tag = field.metadata.get(_TAG)
    if tag is None:
        raise TypeError(
            f"{owner.__name__}.{field.name} has no `affects` tag: declare whether it changes rankings "
            f"(affects({RANKING!r})), measurements (affects({MEASUREMENT!r})) or only provenance "
            f"(affects({PROVENANCE!r})), in harness.core.recorded's terms"
        )
    return tag


def tags(owner: type) -> dict[str, tuple[type, dataclasses.Field, Affects]]:
    """Every tagged leaf field of `owner` (nested dataclasses flattened), by record name, with its owner class."""
    found: dict[str, tuple[type, dataclasses.Field, Affects]] = {}
    for field in dataclasses.fields(owner):
        tag = tag_of(owner, field)
        if tag.nested:
            inner = _nested_type(owner, field)
            entries = tags(inner).items()
        else:
            entries = [(tag.recorded_as or field.name, (owner, field, tag))]
        for name, entry in entries:
            if name in found:
                raise TypeError(f"{owner.__name__}: two fields are recorded as {name!r}")
            found[name] = entry
    return found


def _nested_type(owner: type, field: dataclasses.Field) -> type:
    """The dataclass a nested field holds, from its default (every nested settings field has one)."""
    if field.default_factory is not dataclasses.MISSING:
        return type(field.default_factory())
    if dataclasses.is_dataclass(field.default):
        return type(field.default)
    raise TypeError(f"{owner.__name__}.{field.name} is nested but has no dataclass default to read its type from")


def recorded(
    settings: object,
    scopes: Collection[str],
    *,
    kind: str | None = None,
    reads: Collection[str] | None = None,
    resolved: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The fields of `settings` (a tagged dataclass) in `scopes` that an experiment of `kind` reads, its ranking
    method reading the per-method options `reads`, as JSON-ready values by record name. `resolved` gives the
    effective value of every field tagged
    `resolved` (an error if one in scope is missing, or if it names no such field)."""
    given = dict(resolved or {})
    record: dict[str, object] = {}

    def walk(value: object) -> None:
        for field in dataclasses.fields(value):
            tag = tag_of(type(value), field)
            if tag.nested:
                walk(getattr(value, field.name))
                continue
            name = tag.recorded_as or field.name
            effective = given.pop(name, _MISSING) if tag.resolved else _MISSING
            if tag.scope not in scopes or not tag.applies(field.name, kind, reads):
                continue
            if tag.resolved and effective is _MISSING:
                raise ValueError(f"{type(value).__name__}.{field.name} is resolved at run time: give its value")
            if name in record:
                raise TypeError(f"{type(value).__name__}: two fields are recorded as {name!r}")
            record[name] = plain(effective if tag.resolved else getattr(value, name))

    walk(settings)
    if given:
        raise ValueError(f"resolved values for fields that are not resolved at run time: {', '.join(given)}")
    return record


def plain(value: object) -> object:
    """A JSON value that compares equal after a round trip through a JSON file (tuples become lists, paths and
    other objects their string)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)


def digest_of(value: object) -> str:
    """A short sha256 of a JSON value: how a large record (every image's hash) is compared in one field."""
    return hashlib.sha256(json.dumps(plain(value), sort_keys=True).encode()).hexdigest()[:16]
