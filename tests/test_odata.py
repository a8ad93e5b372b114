"""The OData $filter parser: text -> filter tree (pure Python, no database)."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from pixsearch.search.odata import MAX_DEPTH, MAX_LENGTH, FilterSyntaxError, parse_filter
from pixsearch.store.filters import AnyEq, And, Compare, FilterError, In, Not, Or, compile_filter
from pixsearch.models.offline import OFFLINE_PHOTO_FIELDS
from pixsearch.store.schema import PHOTO_FIELDS, IndexSpec, VectorField

UTC = timezone.utc


def C(field, op, value):
    return Compare(field, op, value)


# -- valid filters ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "ge", "lt", "le"])
def test_each_comparison_operator(op):
    assert parse_filter(f"width {op} 640") == C("width", op, 640)


@pytest.mark.parametrize(
    "text, value",
    [
        ("name eq 'dog'", "dog"),
        ("name eq ''", ""),
        ("name eq 'O''Brien'", "O'Brien"),
        ("name eq ''''", "'"),
        ("name eq 'Zürich – 東京 🐕'", "Zürich – 東京 🐕"),
        ("name eq 'a  b\tc'", "a  b\tc"),
        ("width eq 42", 42),
        ("width eq -42", -42),
        ("width eq 0", 0),
        ("gps_lat eq 1.5", 1.5),
        ("gps_lat eq -33.865", -33.865),
        ("gps_lat eq 2e3", 2000.0),
        ("gps_lat eq 1.25E-2", 0.0125),
        ("flag eq true", True),
        ("flag eq false", False),
        ("camera eq null", None),
        ("taken_at ge 2021-07-01T00:00:00Z", datetime(2021, 7, 1, tzinfo=UTC)),
        ("taken_at ge 2021-07-01T10:30Z", datetime(2021, 7, 1, 10, 30, tzinfo=UTC)),
        (
            "taken_at ge 2021-07-01T10:30:15.25+02:00",
            datetime(2021, 7, 1, 10, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2))),
        ),
        (
            "taken_at ge 2021-07-01T10:30:00-05:30",
            datetime(2021, 7, 1, 10, 30, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        ),
        ("taken_at ge 2021-07-01", datetime(2021, 7, 1, tzinfo=UTC)),
    ],
)
def test_literals(text, value):
    node = parse_filter(text)
    assert isinstance(node, Compare)
    assert node.value == value and type(node.value) is type(value)
    if isinstance(value, datetime):
        assert node.value.utcoffset() == value.utcoffset()


def test_integers_stay_ints_and_decimals_become_floats():
    assert type(parse_filter("width eq 3").value) is int
    assert type(parse_filter("width eq 3.0").value) is float


@pytest.mark.parametrize(
    "text, expected",
    [
        ("640 lt width", C("width", "gt", 640)),
        ("640 le width", C("width", "ge", 640)),
        ("640 gt width", C("width", "lt", 640)),
        ("640 ge width", C("width", "le", 640)),
        ("'jpeg' eq format", C("format", "eq", "jpeg")),
        ("'jpeg' ne format", C("format", "ne", "jpeg")),
        ("null eq camera", C("camera", "eq", None)),
        ("2021-07-01 le taken_at", C("taken_at", "ge", datetime(2021, 7, 1, tzinfo=UTC))),
    ],
)
def test_literal_first_comparisons_are_mirrored(text, expected):
    assert parse_filter(text) == expected


A, B, D = C("a", "eq", 1), C("b", "eq", 2), C("d", "eq", 3)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a eq 1 and b eq 2 and d eq 3", And((A, B, D))),
        ("a eq 1 or b eq 2 or d eq 3", Or((A, B, D))),
        ("a eq 1 or b eq 2 and d eq 3", Or((A, And((B, D))))),
        ("a eq 1 and b eq 2 or d eq 3", Or((And((A, B)), D))),
        ("(a eq 1 or b eq 2) and d eq 3", And((Or((A, B)), D))),
        ("a eq 1 and (b eq 2 or d eq 3)", And((A, Or((B, D))))),
        ("((a eq 1))", A),
        ("not (a eq 1) or b eq 2", Or((Not(A), B))),
        ("not (a eq 1 and b eq 2)", Not(And((A, B)))),
        ("not (a eq 1) and b eq 2", And((Not(A), B))),
        ("not not (a eq 1)", Not(Not(A))),
        ("not(a eq 1)", Not(A)),
        ("  a eq 1\n\tand\r\nb eq 2  ", And((A, B))),
        ("is_public", C("is_public", "eq", True)),
        ("not is_public and a eq 1", And((Not(C("is_public", "eq", True)), A))),
    ],
)
def test_precedence_and_parentheses(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("search.in(folder, 'a,b,c')", In("folder", ("a", "b", "c"))),
        ("search.in(folder, 'a, b  c')", In("folder", ("a", "b", "c"))),  # default delimiters: space and comma
        ("search.in(folder, 'single')", In("folder", ("single",))),
        ("search.in(folder, 'New York|San Jose, CA', '|')", In("folder", ("New York", "San Jose, CA"))),
        ("search.in(folder, 'a;b|c', ';|')", In("folder", ("a", "b", "c"))),
        ("search.in(folder, 'O''Brien,x')", In("folder", ("O'Brien", "x"))),
        ("search.in( folder , '1,2' )", In("folder", ("1", "2"))),  # values are strings
        ("not search.in(folder, 'a')", Not(In("folder", ("a",)))),
    ],
)
def test_search_in(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tags/any(t: t eq 'dog')", AnyEq("tags", "eq", "dog")),
        ("tags/any(t: 'dog' eq t)", AnyEq("tags", "eq", "dog")),
        ("tags/any(t: t eq 'dog' or t eq 'cat')", Or((AnyEq("tags", "eq", "dog"), AnyEq("tags", "eq", "cat")))),
        ("tags/any(t: search.in(t, 'dog,cat'))", Or((AnyEq("tags", "eq", "dog"), AnyEq("tags", "eq", "cat")))),
        ("tags/any(t: search.in(t, 'dog'))", AnyEq("tags", "eq", "dog")),
        ("class_ids/any(c: c gt 5)", AnyEq("class_ids", "gt", 5)),
        ("class_ids/any(c: 5 gt c)", AnyEq("class_ids", "lt", 5)),
        ("tags/any(t: not (t ne 'dog'))", AnyEq("tags", "eq", "dog")),
        ("tags/all(t: t ne 'x')", Not(AnyEq("tags", "eq", "x"))),
        ("tags/all(t: not (t eq 'x'))", Not(AnyEq("tags", "eq", "x"))),
        ("tags/all(t: t ne 'x' and t ne 'y')", Not(Or((AnyEq("tags", "eq", "x"), AnyEq("tags", "eq", "y"))))),
        ("tags/all(t: not search.in(t, 'x|y', '|'))", Not(Or((AnyEq("tags", "eq", "x"), AnyEq("tags", "eq", "y"))))),
        ("tags/all(t: not (t eq 'x' or t eq 'y'))", Not(Or((AnyEq("tags", "eq", "x"), AnyEq("tags", "eq", "y"))))),
        ("class_ids/all(c: c gt 5)", Not(AnyEq("class_ids", "le", 5))),
        (
            "class_probs/all(p: p ge 0.5 and p lt 1.0)",
            Not(Or((AnyEq("class_probs", "lt", 0.5), AnyEq("class_probs", "ge", 1.0)))),
        ),
        ("not tags/any(t: t eq 'x')", Not(AnyEq("tags", "eq", "x"))),
        (
            "width gt 100 and tags/any(tag: tag eq 'dog') and folder eq 'a'",
            And((C("width", "gt", 100), AnyEq("tags", "eq", "dog"), C("folder", "eq", "a"))),
        ),
        ("tags/any(width: width eq 'x')", AnyEq("tags", "eq", "x")),  # the range variable shadows a field name
    ],
)
def test_lambdas(text, expected):
    assert parse_filter(text) == expected


# -- invalid filters: every error names the problem and where it is ------------------------------------------------


@pytest.mark.parametrize(
    "text, position, words",
    [
        ("", 0, "empty filter"),
        ("   \n ", 0, "empty filter"),
        ("name eq 'abc", 8, "unterminated string"),
        ("name eq 'it''s", 8, "unterminated string"),
        ("width == 5", 6, "use 'eq'"),
        ("width = 5", 6, "use 'eq'"),
        ("width != 5", 6, "use 'ne'"),
        ("width <> 5", 6, "use 'ne'"),
        ("width >= 5", 6, "use 'ge'"),
        ("width < 5", 6, "use 'lt'"),
        ("a eq 1 && b eq 2", 7, "use 'and'"),
        ("a eq 1 || b eq 2", 7, "use 'or'"),
        ("!(a eq 1)", 0, "use 'not'"),
        ("a eq 1 AND b eq 2", 7, "use 'and' instead of 'AND'"),
        ("a eq 1 Or b eq 2", 7, "use 'or' instead of 'Or'"),
        ("NOT (a eq 1)", 0, "use 'not' instead of 'NOT'"),
        ("a EQ 1", 2, "use 'eq' instead of 'EQ'"),
        ("flag eq TRUE", 8, "use 'true' instead of 'TRUE'"),
        ("a eq 1 b", 7, "expected 'and', 'or' or end of the filter, found 'b'"),
        ("a eq 1 eq 2", 7, "expected 'and', 'or' or end of the filter"),
        ("a eq 1 'x'", 7, "expected 'and', 'or'"),
        ("width gt ", 9, "expected a value after 'gt'"),
        ("width gt and b eq 1", 9, "expected a value after 'gt'"),
        ("width 5", 6, "expected a comparison operator"),
        ("a eq 1 and", 10, "expected a condition after 'and'"),
        ("a eq 1 or or b eq 1", 10, "expected a condition after 'or', found the keyword 'or'"),
        ("(a eq 1", 7, "expected ')' to close the '(' at position 0"),
        ("((a eq 1)", 9, "expected ')' to close the '(' at position 0"),
        ("a eq 1)", 6, "unbalanced ')'"),
        ("()", 1, "expected a condition after '('"),
        ("endswith(name, 'a')", 0, "unknown function 'endswith'"),
        ("startswith(name)", 15, "a quoted prefix"),
        ("search.ismatch('dog')", 0, "unknown function 'search.ismatch'"),
        ("geo.distance(loc, 1) lt 5", 18, "expected geography'POINT(lon lat)'"),
        ("geo.distance(gps, geography'POINT(1)') lt 5", 27, "expected POINT(longitude latitude)"),
        ("geo.distance(gps, geography'POINT(1 2)') eq 5", 41, "compared with lt, le, gt or ge"),
        ("geo.intersects(gps, geography'POLYGON((1 2))')", 0, "unknown function 'geo.intersects'"),
        ("search.IN(folder, 'a')", 0, "did you mean 'search.in'"),
        ("search.in(folder)", 16, "expected ','"),
        ("search.in(folder, 1)", 18, "a quoted list of values"),
        ("search.in(folder, 'a', '')", 23, "delimiter string is empty"),
        ("search.in(folder, ' , ')", 18, "empty list of values"),
        ("search.in(folder, 'a', '|', 'x')", 26, "expected ')' to close search.in"),
        ("folder in ('a', 'b')", 7, "there is no 'in' operator: use search.in(folder"),
        ("tags/any(t: x eq 'dog')", 12, "unknown variable 'x'"),
        ("tags/any(t: width gt 5)", 12, "only the range variable 't' can be used"),
        ("tags/any(t: class_ids/any(c: c eq 1))", 12, "unknown variable 'class_ids'"),
        ("tags/any(t: t/name eq 'x')", 13, "no sub-fields"),
        ("tags/any(t: search.in(x, 'a'))", 22, "unknown variable 'x'"),
        ("tags/any(t: t)", 13, "expected a comparison operator after the range variable 't'"),
        ("tags/any(t: t ne 'dog')", 14, "inside any() use 'eq' or search.in, not 'ne'"),
        ("tags/any(t: t eq 'a' and t eq 'b')", 21, "inside any() conditions can only be joined with 'or'"),
        ("tags/any(t: not search.in(t, 'a'))", 16, "search.in cannot be negated"),
        ("tags/all(t: t eq 'dog')", 14, "inside all() use 'ne'"),
        ("tags/all(t: t ne 'a' or t ne 'b')", 21, "inside all() conditions can only be joined with 'and'"),
        ("tags/all(t: search.in(t, 'a'))", 12, "search.in must be negated"),
        ("tags/any(t: t eq null)", 17, "null cannot be used inside any()"),
        ("tags/any()", 5, "not supported yet"),
        ("tags/all()", 5, "all() needs a lambda"),
        ("tags/any(t t eq 'a')", 11, "expected ':'"),
        ("tags/any(t: t eq 'a'", 20, "expected ')' to close tags/any("),
        ("tags/any t: t eq 'a'", 9, "expected '(' after 'tags/any'"),
        ("address/city eq 'Oslo'", 8, "sub-field paths"),
        ("a.b eq 1", 0, "not a field name"),
        ("not width gt 5", 10, "write not (width gt"),
        ("true", 0, "a constant true is not a condition"),
        ("1 eq 1", 5, "expected a field name after 'eq'"),
        ("width gt null", 9, "null can only be compared with eq or ne"),
        ("width eq 12abc", 9, "malformed number"),
        ("width eq 1.", 9, "malformed number"),
        ("width eq 99999999999999999999", 9, "out of range"),
        ("gps_lat eq 1e999", 11, "out of range"),
        ("taken_at gt 2021-07-01T10:00:00", 12, "needs a time zone"),
        ("taken_at gt 2021-02-30", 12, "invalid date/time"),
        ("taken_at gt 2021-07-01T25:00:00Z", 12, "invalid date/time"),
        ("taken_at gt 2021-07-01T10", 22, "malformed time"),
        ("name eq \"dog\"", 8, "single quotes"),
        ("name eq 'a' ; drop table x", 12, "unexpected character ';'"),
    ],
)
def test_syntax_errors(text, position, words):
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    err = info.value
    assert err.position == position, str(err)
    assert words in err.message, str(err)
    assert f"at position {position}" in str(err)


def test_error_is_a_filter_error_with_a_caret_line():
    with pytest.raises(FilterError) as info:  # also a ValueError
        parse_filter("width gt ")
    assert isinstance(info.value, ValueError)
    lines = str(info.value).splitlines()
    assert lines[0] == "expected a value after 'gt', found the end of the filter at position 9:"
    assert lines[1] == '  "width gt "'
    assert lines[2].index("^") == lines[1].index('"') + 1 + 9


def test_caret_in_long_filters_points_at_the_problem():
    text = " and ".join(f"f{i} eq {i}" for i in range(40)) + " and x == 1"
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    _, shown, caret = str(info.value).splitlines()
    assert shown[caret.index("^") : caret.index("^") + 2] == "=="


def test_too_deep_nesting():
    text = "(" * (MAX_DEPTH + 1) + "a eq 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    assert info.value.position == MAX_DEPTH and "nests too deeply" in info.value.message
    with pytest.raises(FilterSyntaxError, match="nests too deeply"):
        parse_filter("not " * 1000 + "a eq 1")
    # exactly at the limit is fine
    node = parse_filter("(" * MAX_DEPTH + "a eq 1" + ")" * MAX_DEPTH)
    assert node == C("a", "eq", 1)


def test_too_long():
    text = "a eq '" + "x" * MAX_LENGTH + "'"
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    assert info.value.position == MAX_LENGTH and "too long" in info.value.message


def test_long_flat_filters_do_not_recurse():
    text = " or ".join(f"a eq {i}" for i in range(800))
    assert len(text) < MAX_LENGTH
    assert len(parse_filter(text).items) == 800


def test_mangled_filters_fail_only_with_syntax_errors():
    """Random edits of valid filters either parse or raise FilterSyntaxError with a position inside the text."""
    seeds = [
        "width gt 5 and (folder eq 'a' or not tags/any(t: t eq 'x'))",
        "tags/all(t: not search.in(t, 'a|b', '|'))",
        "taken_at ge 2021-07-01T00:00:00.5+02:00 or 5 lt width",
        "not (is_public) and camera eq null",
    ]
    pieces = list("()'/:,.-+ \x00\"=<>!&|;TZ09a_é") + ["eq", " and ", " or ", "not ", "any(", "all(", "search.in("]
    rng = random.Random(1234)
    for _ in range(3000):
        chars = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars) + 1)
            if rng.random() < 0.5:
                del chars[at : at + rng.randint(1, 3)]
            else:
                chars.insert(at, rng.choice(pieces))
        text = "".join(chars)
        try:
            parse_filter(text)
        except FilterSyntaxError as exc:
            assert 0 <= exc.position <= len(text)


def test_not_a_string():
    with pytest.raises(TypeError):
        parse_filter(None)  # type: ignore[arg-type]


# -- injection attempts: syntax errors, or plain string literals -----------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("name eq 'x'' or 1=1 --'", "x' or 1=1 --"),
        ("name eq '; DROP TABLE t; --'", "; DROP TABLE t; --"),
        ("name eq 'a\\'", "a\\"),  # no backslash escapes: the backslash is a character
        ("name eq 'a\\'' or 1=1'", "a\\' or 1=1"),
        ("name eq '/* x */'", "/* x */"),
        ("name eq '$1$'", "$1$"),
        ("name eq '%(f0)s'", "%(f0)s"),
    ],
)
def test_injection_as_plain_strings(text, value):
    assert parse_filter(text) == C("name", "eq", value)


@pytest.mark.parametrize(
    "text, position",
    [
        ("name eq 'x'; DROP TABLE t; --'", 11),
        ("name eq x' or '1'='1", 8),
        ('"id"; drop', 0),
        ("id; drop table t", 2),
        ("name eq 'x' -- comment", 12),
        ("name eq 'x' /* comment */", 12),
        ("name eq 'x' # comment", 12),
        ("name eq \\'x\\'", 8),
        ("name eq 'a\x00b'", 10),
        ("name\x00 eq 'a'", 4),
        ("name eq 'a' or 1 eq 1", 20),
        ("name eq 'a' union select 1", 12),
        ("na-me eq 'a'", 2),
        ("näme eq 'a'", 1),
        ("name eq 'a'\u037e drop", 11),  # Greek question mark, looks like ';'
    ],
)
def test_injection_rejected(text, position):
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    assert info.value.position == position, str(info.value)


# -- round trip through compile_filter: values only ever travel as parameters ----------------------------------------


SPEC = IndexSpec("photos", "px_photos", vector_fields=(VectorField("clip", 512),),
                 fields=PHOTO_FIELDS + OFFLINE_PHOTO_FIELDS)


def compiled(text):
    sql_obj, params = compile_filter(SPEC, parse_filter(text))
    return sql_obj.as_string(None), params


@pytest.mark.parametrize(
    "text, params",
    [
        ("folder eq 'x'' or 1=1 --'", {"f0": "x' or 1=1 --"}),
        ("width ge 640 and format ne 'png'", {"f0": 640, "f1": "png"}),
        ("1024 gt height or gps_lat lt -33.5", {"f0": 1024, "f1": -33.5}),
        ("taken_at ge 2021-07-01T00:00:00Z", {"f0": datetime(2021, 7, 1, tzinfo=UTC)}),
        ("search.in(folder, 'a,b''; drop table px_photos; --', ',')", {"f0": ["a", "b'; drop table px_photos; --"]}),
        ("tags/any(t: t eq 'dog' or t eq 'cat')", {"f0": "dog", "f1": "cat"}),
        ("tags/all(t: t ne 'x')", {"f0": "x"}),
        ("not (camera eq 'Canon' and folder eq '\\\\share')", {"f0": "Canon", "f1": "\\\\share"}),
    ],
)
def test_compiles_with_values_as_parameters(text, params):
    sql_text, actual = compiled(text)
    assert actual == params
    for value in actual.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                assert item not in sql_text


def test_compiled_sql_shape():
    sql_text, params = compiled("width gt 100 and (tags/any(t: t eq 'dog') or camera eq null)")
    assert sql_text == '("width" > %(f0)s AND ("tags" @> ARRAY[%(f1)s] OR "camera" IS NULL))'
    assert params == {"f0": 100, "f1": "dog"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("nope eq 1", "no field 'nope'"),
        ("filename eq 'a'", "not filterable"),
        ("width eq 'wide'", "is int"),
        ("search.in(width, '1,2')", "is int"),  # search.in yields strings: it is for string fields, as in Azure
        ("tags eq 'dog'", "use any()"),
    ],
)
def test_type_and_field_errors_come_from_compile(text, words):
    node = parse_filter(text)  # syntactically fine
    with pytest.raises(FilterError, match=words):
        compile_filter(SPEC, node)


def test_startswith_is_a_prefix_filter():
    from pixsearch.store import Prefix

    assert parse_filter("startswith(folder, '/photos/2021')") == Prefix("folder", "/photos/2021")
    assert parse_filter("not startswith(path, 'x''y')") == Not(Prefix("path", "x'y"))

