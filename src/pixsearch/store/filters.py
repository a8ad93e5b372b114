"""Metadata filters as a small expression tree, compiled to SQL with every value as a bound parameter.

Front ends (the OData-style parser in search/, the Python API) build these nodes; only fields the index declares
filterable may appear, which is checked here, at the last step before SQL.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Union

from psycopg import sql

from pixsearch.store.schema import Field, IndexSpec, SchemaError

COMPARISONS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG)


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Prefix:
    """A string field starts with `prefix` (OData startswith): folder and path prefixes."""

    field: str
    prefix: str


@dataclass(frozen=True)
class AnyEq:
    """A collection field holds an element satisfying `element op value` (OData `tags/any(t: t eq 'dog')`)."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class GeoDistance:
    """The great-circle distance in kilometres from a point to a location compared with a value (OData
    `geo.distance(location, geography'POINT(lon lat)') le 5`). A location is a pair of float fields
    `<location>_lat` and `<location>_lon` (a photo's is `gps`)."""

    location: str
    lon: float
    lat: float
    op: str
    km: float


@dataclass(frozen=True)
class And:
    items: tuple["Filter", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Filter", ...]


@dataclass(frozen=True)
class Not:
    item: "Filter"


Filter = Union[Compare, In, Prefix, AnyEq, GeoDistance, And, Or, Not]


class FilterError(ValueError):
    pass


_PY_TYPES = {
    "string": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (datetime,),
}


def _check_value(f: Field, value: Any, element: bool = False) -> None:
    base = f.type[:-2] if element else f.type
    if value is None:
        return
    expected = _PY_TYPES.get(base)
    if expected is None:
        raise FilterError(f"field {f.name!r} ({f.type}) cannot be compared with a single value")
    if isinstance(value, bool) and base in ("int", "float"):
        raise FilterError(f"field {f.name!r} is {base}, got a boolean")
    if not isinstance(value, expected):
        raise FilterError(f"field {f.name!r} is {base}, got {type(value).__name__} {value!r}")


class _Compiler:
    def __init__(self, spec: IndexSpec):
        self.spec = spec
        self.params: dict[str, Any] = {}

    def param(self, value: Any) -> sql.Composable:
        name = f"f{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def filterable(self, name: str) -> Field:
        try:
            f = self.spec.field(name)
        except SchemaError as exc:
            raise FilterError(str(exc)) from None
        if not f.filterable:
            raise FilterError(f"field {name!r} is not filterable in index {self.spec.name!r}")
        return f

    def geo_distance(self, node: GeoDistance) -> sql.Composable:
        lat_field, lon_field = (self.filterable(f"{node.location}_{part}") for part in ("lat", "lon"))
        if lat_field.type != "float" or lon_field.type != "float":
            raise FilterError(f"{node.location!r} is not a location: {lat_field.name} and {lon_field.name} must be "
                              "floats")
        if node.op not in COMPARISONS or node.op in ("eq", "ne"):
            raise FilterError("geo.distance is compared with lt, le, gt or ge")
        if not (-90 <= node.lat <= 90 and -180 <= node.lon <= 180):
            raise FilterError(f"POINT({node.lon} {node.lat}) is not a place: longitude first (-180..180), then "
                              "latitude")
        if isinstance(node.km, bool) or not isinstance(node.km, (int, float)) or node.km < 0:
            raise FilterError("geo.distance is compared with a distance in kilometres (a number >= 0)")
        lat, lon = sql.Identifier(lat_field.name), sql.Identifier(lon_field.name)
        p_lat, p_lon, km = self.param(float(node.lat)), self.param(float(node.lon)), self.param(float(node.km))
        # haversine; least() keeps rounding from pushing asin's argument past 1 for antipodal points (and since it
        # ignores NULLs, a photo without a location is excluded explicitly)
        distance = sql.SQL(
            "(2 * {r} * asin(least(1, sqrt(power(sin(radians({lat} - {p_lat}) / 2), 2) + cos(radians({p_lat})) * "
            "cos(radians({lat})) * power(sin(radians({lon} - {p_lon}) / 2), 2)))))"
        ).format(r=sql.Literal(EARTH_RADIUS_KM), lat=lat, lon=lon, p_lat=p_lat, p_lon=p_lon)
        return sql.SQL("({lat} IS NOT NULL AND {lon} IS NOT NULL AND {distance} {op} {km})").format(
            lat=lat, lon=lon, distance=distance, op=sql.SQL(COMPARISONS[node.op]), km=km)

    def compile(self, node: Filter) -> sql.Composable:
        if isinstance(node, Compare):
            f = self.filterable(node.field)
            if node.op not in COMPARISONS:
                raise FilterError(f"unknown comparison {node.op!r}; use one of {', '.join(COMPARISONS)}")
            if f.type.endswith("[]"):
                raise FilterError(f"field {f.name!r} is a collection: use any(), e.g. {f.name}/any(t: t eq 'x')")
            _check_value(f, node.value)
            column = sql.Identifier(f.name)
            if node.value is None:
                if node.op not in ("eq", "ne"):
                    raise FilterError("null can only be compared with eq or ne")
                return sql.SQL("{} IS {}NULL").format(column, sql.SQL("" if node.op == "eq" else "NOT "))
            if node.op in ("gt", "ge", "lt", "le") and f.type == "bool":
                raise FilterError(f"field {f.name!r} is boolean: use eq or ne")
            return sql.SQL("{} {} {}").format(column, sql.SQL(COMPARISONS[node.op]), self.param(node.value))
        if isinstance(node, In):
            f = self.filterable(node.field)
            for value in node.values:
                _check_value(f, value)
            return sql.SQL("{} = ANY({})").format(sql.Identifier(f.name), self.param(list(node.values)))
        if isinstance(node, Prefix):
            f = self.filterable(node.field)
            if f.type != "string":
                raise FilterError(f"startswith needs a string field; {f.name!r} is {f.type}")
            if not isinstance(node.prefix, str) or not node.prefix:
                raise FilterError("startswith needs a non-empty prefix")
            return sql.SQL("starts_with({}, {})").format(sql.Identifier(f.name), self.param(node.prefix))
        if isinstance(node, AnyEq):
            f = self.filterable(node.field)
            if not f.type.endswith("[]"):
                raise FilterError(f"field {f.name!r} is not a collection; compare it directly")
            _check_value(f, node.value, element=True)
            if node.op == "eq":  # array containment can use a GIN index
                return sql.SQL("{} @> ARRAY[{}]").format(sql.Identifier(f.name), self.param(node.value))
            if node.op not in COMPARISONS:
                raise FilterError(f"unknown comparison {node.op!r}")
            # `value op ANY(col)` reads "some element e satisfies e op value" with the operator mirrored.
            mirrored = {"eq": "=", "ne": "<>", "gt": "<", "ge": "<=", "lt": ">", "le": ">="}[node.op]
            return sql.SQL("{} {} ANY({})").format(self.param(node.value), sql.SQL(mirrored), sql.Identifier(f.name))
        if isinstance(node, GeoDistance):
            return self.geo_distance(node)
        if isinstance(node, (And, Or)):
            if not node.items:
                raise FilterError("empty and/or")
            joiner = sql.SQL(" AND " if isinstance(node, And) else " OR ")
            return sql.SQL("({})").format(joiner.join(self.compile(item) for item in node.items))
        if isinstance(node, Not):
            return sql.SQL("(NOT COALESCE({}, false))").format(self.compile(node.item))
        raise FilterError(f"not a filter: {node!r}")


def compile_filter(spec: IndexSpec, node: Filter | None) -> tuple[sql.Composable | None, dict[str, Any]]:
    """SQL condition (or None) and its parameters (named f0, f1, ...)."""
    if node is None:
        return None, {}
    compiler = _Compiler(spec)
    return compiler.compile(node), compiler.params


def check_filter(spec: IndexSpec, node: Filter | None) -> None:
    """Raise FilterError unless `node` only uses fields `spec` declares filterable, with values of their types
    (what compile_filter checks, without the SQL), so a request is refused before any query runs."""
    compile_filter(spec, node)
