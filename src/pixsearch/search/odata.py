"""Azure AI Search-style OData `$filter` text -> the filter tree of pixsearch.store.filters.

A hand-written tokenizer and recursive-descent parser. It only builds the tree: field names and value types are
checked against the index when store.filters.compile_filter turns the tree into parameterised SQL, so no text from
the filter ever reaches SQL except as a bound parameter.

Grammar (the subset of Azure AI Search's $filter that pixsearch serves; keywords are lowercase, as in OData):

    filter      := or_expr EOF
    or_expr     := and_expr ('or' and_expr)*
    and_expr    := unary ('and' unary)*
    unary       := 'not' unary | primary              -- 'not' binds tighter than comparisons: not (a eq 1)
    primary     := '(' or_expr ')'
                 | field op literal | literal op field   -- literal first: the operator is mirrored
                 | field '/any(' var ':' or_expr ')' | field '/all(' var ':' or_expr ')'
                 | 'search.in(' field ',' string [',' string] ')'
                 | 'startswith(' field ',' string ')'
                 | 'geo.distance(' location ',' 'geography' string ')' op number   -- km; 'POINT(lon lat)'
                 | field                                 -- a boolean field: field eq true
    op          := 'eq' | 'ne' | 'gt' | 'ge' | 'lt' | 'le'
    literal     := 'text' (quote doubled: 'O''Brien') | 12 | -3 | 1.5 | 2e-3 | true | false | null
                 | 2021-07-01T10:00:00Z | 2021-07-01T10:00:00.5+02:00 | 2021-07-01 (midnight UTC)
    field / var := [A-Za-z_][A-Za-z0-9_]*                -- flat names; 'a/b' sub-fields do not exist here

search.in(field, 'a,b c') splits the list at any character of the optional third argument (default ' ,', space and
comma, as in Azure), drops empty pieces, and yields string values: like Azure, it is meant for string fields.

Inside a lambda only its range variable may be used, compared with literals or given to search.in, combined with
and/or/not. `not` is pushed down to the comparisons first (De Morgan), then Azure's rules apply:
  any(...): 'eq', range comparisons or search.in, joined with 'or'   -> AnyEq, or Or of AnyEq
  all(...): 'ne', range comparisons or not search.in, joined with 'and' -> Not(any(negated conditions))
  (all(t: t gt 5) is read as "no element is le 5", which assumes collections hold no null elements).
`field/any()` (collection not empty) is not supported yet.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pixsearch.limits import MAX_FILTER_CHARS, MAX_FILTER_DEPTH
from pixsearch.store.filters import (
    COMPARISONS,
    AnyEq,
    And,
    Compare,
    Filter,
    FilterError,
    GeoDistance,
    In,
    Not,
    Or,
    Prefix,
)

MAX_LENGTH = MAX_FILTER_CHARS
MAX_DEPTH = MAX_FILTER_DEPTH
DEFAULT_DELIMITERS = " ,"

MIRRORED = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
NEGATED = {"eq": "ne", "ne": "eq", "gt": "le", "ge": "lt", "lt": "ge", "le": "gt"}
VALUE_KEYWORDS = {"true": True, "false": False, "null": None}
KEYWORDS = set(COMPARISONS) | set(VALUE_KEYWORDS) | {"and", "or", "not"}
# Azure AI Search functions pixsearch does not serve (named so the error can say so).
AZURE_FUNCTIONS = {"search.ismatch", "search.ismatchscoring", "search.score", "geo.intersects"}
_POINT = re.compile(r"POINT\s*\(\s*(-?[0-9]+(?:\.[0-9]+)?)\s+(-?[0-9]+(?:\.[0-9]+)?)\s*\)", re.IGNORECASE)
INT64 = (-(2**63), 2**63 - 1)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATETIME = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<frac>[0-9]+))?)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
# Symbols from other languages, with what to write instead.
_SYMBOL_HINTS = {
    "==": "use 'eq' instead of '=='",
    "!=": "use 'ne' instead of '!='",
    "<>": "use 'ne' instead of '<>'",
    "<=": "use 'le' instead of '<='",
    ">=": "use 'ge' instead of '>='",
    "&&": "use 'and' instead of '&&'",
    "||": "use 'or' instead of '||'",
    "--": "'--' is not part of the filter language (there are no comments)",
    "=": "use 'eq' instead of '='",
    "<": "use 'lt' instead of '<'",
    ">": "use 'gt' instead of '>'",
    "&": "use 'and' instead of '&'",
    "|": "use 'or' instead of '|'",
    "!": "use 'not' instead of '!'",
    '"': "strings are written in single quotes, e.g. 'text' (a quote inside one is doubled: 'O''Brien')",
}
_PUNCTUATION = {"(": "lparen", ")": "rparen", ",": "comma", ":": "colon", "/": "slash"}


class FilterSyntaxError(FilterError):
    """A filter that does not parse; `.position` is the 0-based offset of the problem in `.text`."""

    def __init__(self, message: str, position: int, text: str):
        self.message = message
        self.position = position
        self.text = text
        super().__init__(f"{message} at position {position}:\n{_excerpt(text, position)}")


def _excerpt(text: str, position: int, width: int = 60) -> str:
    start = max(0, position - width)
    end = min(len(text), position + width)
    shown = "".join(c if c.isprintable() else " " for c in text[start:end])
    prefix = "..." if start > 0 else ""
    suffix = "..." if end < len(text) else ""
    return f'  "{prefix}{shown}{suffix}"\n   {" " * (len(prefix) + position - start)}^'


@dataclass(frozen=True)
class _Token:
    kind: str  # ident string number datetime lparen rparen comma colon slash eof
    value: Any
    pos: int
    raw: str

    def is_word(self, word: str) -> bool:
        return self.kind == "ident" and self.value == word

    def describe(self) -> str:
        return "the end of the filter" if self.kind == "eof" else repr(self.raw)


# Conditions inside a lambda, on its range variable, before they become AnyEq nodes.
@dataclass(frozen=True)
class _LCmp:
    op: str
    value: Any
    pos: int


@dataclass(frozen=True)
class _LIn:
    values: tuple[str, ...]
    pos: int
    negated: bool = False


@dataclass(frozen=True)
class _LGroup:
    kind: str  # "and" | "or"
    items: tuple[Any, ...]
    pos: int  # of the first connective
    flipped: bool = False  # an and/or turned into the other by a 'not'


@dataclass(frozen=True)
class _LNot:
    item: Any
    pos: int


@dataclass(frozen=True)
class _Lambda:
    field: str
    kind: str  # "any" | "all"
    var: str


class _Lexer:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int) -> FilterSyntaxError:
        return FilterSyntaxError(message, pos, self.text)

    def next(self) -> _Token:
        text = self.text
        n = len(text)
        while self.pos < n and text[self.pos].isspace():
            self.pos += 1
        start = self.pos
        if start >= n:
            return _Token("eof", None, n, "")
        c = text[start]
        if c in _PUNCTUATION:
            self.pos += 1
            return _Token(_PUNCTUATION[c], c, start, c)
        if c == "'":
            return self._string(start)
        if c.isascii() and (c.isalpha() or c == "_"):
            m = _IDENT.match(text, start)
            self.pos = m.end()
            return _Token("ident", m.group(), start, m.group())
        if _ascii_digit(c) or (c == "-" and _ascii_digit(text[start + 1 : start + 2])):
            return self._number_or_datetime(start)
        for symbol, hint in _SYMBOL_HINTS.items():
            if text.startswith(symbol, start):
                raise self.error(hint, start)
        if c == "-":
            raise self.error("a '-' must be followed by digits (negative number)", start)
        raise self.error(f"unexpected character {c!r}", start)

    def _string(self, start: int) -> _Token:
        text = self.text
        parts = []
        i = start + 1
        while True:
            j = text.find("'", i)
            if j < 0:
                raise self.error(
                    "unterminated string: add the closing quote (a quote inside a string is written '')", start
                )
            parts.append(text[i:j])
            if text.startswith("''", j):
                parts.append("'")
                i = j + 2
                continue
            self.pos = j + 1
            return _Token("string", "".join(parts), start, text[start : j + 1])

    def _number_or_datetime(self, start: int) -> _Token:
        text = self.text
        m = _DATETIME.match(text, start)
        if m:
            token = _Token("datetime", self._datetime(m, start), start, m.group())
            end = m.end()
        else:
            m = _NUMBER.match(text, start)
            raw = m.group()
            end = m.end()
            if m.group(1) or m.group(2):
                value: Any = float(raw)
                if value in (float("inf"), float("-inf")):
                    raise self.error(f"number {raw} is out of range", start)
            else:
                value = int(raw)
                if not INT64[0] <= value <= INT64[1]:
                    raise self.error(f"integer {raw} is out of range (64-bit)", start)
            token = _Token("number", value, start, raw)
        following = text[end : end + 1]
        if following and (following.isalnum() or following in "_.'-:"):
            if token.kind == "datetime" and m.group("h") is None and following == "T":
                raise self.error("malformed time: write THH:MM or THH:MM:SS after the date", end)
            raise self.error(
                f"malformed {'date/time' if token.kind == 'datetime' else 'number'} {text[start:end + 1]!r}"
                " (dates are YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ; operators need spaces around them)",
                start,
            )
        self.pos = end
        return token

    def _datetime(self, m: re.Match, start: int) -> datetime:
        if m.group("h") is not None and m.group("tz") is None:
            raise self.error(
                f"date/time {m.group()!r} needs a time zone: add 'Z' (UTC) or an offset such as '+02:00'", start
            )
        tz = timezone.utc
        try:
            if m.group("tz") and m.group("tz") != "Z":
                sign = -1 if m.group("tz")[0] == "-" else 1
                hours, minutes = int(m.group("tz")[1:3]), int(m.group("tz")[4:6])
                if hours > 23 or minutes > 59:
                    raise ValueError("offset")
                tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
            frac = (m.group("frac") or "")[:6].ljust(6, "0")
            return datetime(
                int(m.group("y")), int(m.group("mo")), int(m.group("d")),
                int(m.group("h") or 0), int(m.group("mi") or 0), int(m.group("s") or 0), int(frac), tzinfo=tz,
            )  # fmt: skip
        except ValueError:
            raise self.error(f"invalid date/time {m.group()!r}", start) from None


def _ascii_digit(c: str) -> bool:
    """0-9 only: str.isdigit() also accepts '²' and other Unicode digits, which no number literal may hold."""
    return len(c) == 1 and "0" <= c <= "9"


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.lexer = _Lexer(text)
        self.token = self.lexer.next()
        self.previous: _Token | None = None
        self.depth = 0

    # -- tokens ---------------------------------------------------------------------------------------------------

    def error(self, message: str, pos: int | None = None) -> FilterSyntaxError:
        return FilterSyntaxError(message, self.token.pos if pos is None else pos, self.text)

    def advance(self) -> _Token:
        token = self.token
        self.previous = token
        self.token = self.lexer.next()
        return token

    def peek_kind(self) -> str:
        """Kind of the token after the current one (without consuming anything)."""
        saved = self.lexer.pos
        try:
            return self.lexer.next().kind
        except FilterSyntaxError:
            return "error"
        finally:
            self.lexer.pos = saved

    def expect(self, kind: str, what: str) -> _Token:
        if self.token.kind != kind:
            raise self.error(f"expected {what}, found {self.token.describe()}")
        return self.advance()

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"filter nests too deeply (more than {MAX_DEPTH} levels of parentheses/not/any)", pos)

    def leave(self) -> None:
        self.depth -= 1

    # -- grammar --------------------------------------------------------------------------------------------------

    def parse(self) -> Filter:
        node = self.or_expr(None)
        if self.token.kind != "eof":
            raise self.error(self.after_condition_message("end of the filter"))
        return node

    def or_expr(self, lam: _Lambda | None) -> Any:
        items = [self.and_expr(lam)]
        first = self.token.pos
        while self.token.is_word("or"):
            self.advance()
            items.append(self.and_expr(lam))
        if len(items) == 1:
            return items[0]
        return _LGroup("or", tuple(items), first) if lam else Or(tuple(items))

    def and_expr(self, lam: _Lambda | None) -> Any:
        items = [self.unary(lam)]
        first = self.token.pos
        while self.token.is_word("and"):
            self.advance()
            items.append(self.unary(lam))
        if len(items) == 1:
            return items[0]
        return _LGroup("and", tuple(items), first) if lam else And(tuple(items))

    def unary(self, lam: _Lambda | None, negated: bool = False) -> Any:
        if not self.token.is_word("not"):
            return self.primary(lam, negated)
        token = self.advance()
        self.enter(token.pos)
        item = self.unary(lam, negated=True)
        self.leave()
        return _LNot(item, token.pos) if lam else Not(item)

    def primary(self, lam: _Lambda | None, negated: bool) -> Any:
        token = self.token
        if token.kind == "lparen":
            self.advance()
            self.enter(token.pos)
            node = self.or_expr(lam)
            if self.token.kind != "rparen":
                raise self.error(self.after_condition_message(f"')' to close the '(' at position {token.pos}"))
            self.advance()
            self.leave()
            return node
        if token.kind == "ident":
            word = token.value
            if word in ("and", "or") or word in COMPARISONS:
                raise self.error(f"expected a condition {self.after_previous()}, found the keyword '{word}'")
            if word.lower() in KEYWORDS and word not in KEYWORDS:
                raise self.error(self.lowercase_hint(token))
            if word in VALUE_KEYWORDS:
                return self.literal_first(lam, negated)
            if self.peek_kind() == "lparen":
                return self.function_call(lam)
            if "." in word:
                raise self.error(f"{word!r} is not a field name (field names have no '.')")
            if self.peek_kind() == "slash":
                return self.collection_filter(lam)
            return self.field_first(lam, negated)
        if token.kind in ("string", "number", "datetime"):
            return self.literal_first(lam, negated)
        if token.kind == "eof":
            raise self.error(f"expected a condition {self.after_previous()}".rstrip())
        raise self.error(f"expected a condition {self.after_previous()}, found {token.describe()}")

    @staticmethod
    def lowercase_hint(token: _Token) -> str:
        return f"use '{token.value.lower()}' instead of '{token.value}' (OData keywords are lowercase)"

    def after_previous(self) -> str:
        prev = self.previous
        if prev is None:
            return "at the start of the filter"
        if prev.kind == "lparen":
            return "after '('"
        return f"after '{prev.raw}'"

    def after_condition_message(self, expected: str) -> str:
        token = self.token
        if token.kind == "ident" and token.value.lower() in ("and", "or") and token.value not in ("and", "or"):
            return self.lowercase_hint(token)
        if token.kind == "rparen":
            return "unbalanced ')': there is no '(' for it to close"
        if token.kind == "eof":
            return f"expected {expected}, found the end of the filter"
        return f"expected 'and', 'or' or {expected}, found {token.describe()}"

    # -- comparisons ----------------------------------------------------------------------------------------------

    def comparison_operator(self, after: _Token) -> _Token:
        token = self.token
        if token.kind == "ident" and token.value in COMPARISONS:
            return self.advance()
        if token.kind == "ident" and token.value.lower() in COMPARISONS:
            raise self.error(self.lowercase_hint(token))
        if token.is_word("in"):
            raise self.error(f"there is no 'in' operator: use search.in({after.raw}, 'a,b,c')")
        raise self.error(
            f"expected a comparison operator (eq, ne, gt, ge, lt, le) after {after.raw!r}, found {token.describe()}"
        )

    def literal(self, op: _Token) -> tuple[Any, _Token]:
        token = self.token
        if token.kind in ("string", "number", "datetime"):
            return token.value, self.advance()
        if token.kind == "ident":
            if token.value in VALUE_KEYWORDS:
                return VALUE_KEYWORDS[token.value], self.advance()
            if token.value.lower() in VALUE_KEYWORDS:
                raise self.error(self.lowercase_hint(token))
            raise self.error(
                f"expected a value after '{op.value}', found {token.describe()}: write strings in single quotes "
                f"('{token.value}'); comparing two fields is not supported"
            )
        raise self.error(f"expected a value after '{op.value}', found {token.describe()}")

    def check_null(self, op: str, value: Any, pos: int) -> None:
        if value is None and op not in ("eq", "ne"):
            raise self.error(f"null can only be compared with eq or ne, not '{op}'", pos)

    def field_first(self, lam: _Lambda | None, negated: bool) -> Any:
        name = self.advance()
        self.check_variable(lam, name)
        if not (self.token.kind == "ident" and self.token.value.lower() in {*COMPARISONS, "in"}):
            # A bare boolean field, as in Azure: `is_public` means `is_public eq true`.
            if lam is not None:
                raise self.error(
                    f"expected a comparison operator after the range variable {name.raw!r}, "
                    f"e.g. {name.raw} eq 'x'"
                )
            if self.token.kind not in ("eof", "rparen") and not (
                self.token.is_word("and") or self.token.is_word("or")
            ):
                if self.token.kind == "ident" and self.token.value.lower() in ("and", "or"):
                    raise self.error(self.after_condition_message(""))
                raise self.error(
                    f"expected a comparison operator (eq, ne, gt, ge, lt, le) after {name.raw!r}, "
                    f"found {self.token.describe()}"
                )
            return Compare(name.value, "eq", True)
        op = self.comparison_operator(name)
        if negated:
            raise self.not_precedence(op, name)
        value, value_token = self.literal(op)
        self.check_null(op.value, value, value_token.pos)
        return self.make_comparison(lam, name.value, op.value, value, op.pos, value_token.pos)

    def literal_first(self, lam: _Lambda | None, negated: bool) -> Any:
        first = self.token
        value, _ = self.literal(first)
        if not (self.token.kind == "ident" and self.token.value.lower() in COMPARISONS):
            if first.kind == "ident":
                raise self.error(
                    f"a constant {first.raw} is not a condition: compare a field, e.g. field eq {first.raw}", first.pos
                )
            raise self.error(
                f"expected a comparison operator (eq, ne, gt, ge, lt, le) after the value {first.raw!r}, "
                f"found {self.token.describe()}"
            )
        op = self.comparison_operator(first)
        if negated:
            raise self.not_precedence(op, first)
        name = self.token
        if name.kind != "ident" or name.value in KEYWORDS or "." in name.value:
            raise self.error(
                f"expected a field name after '{op.value}' (one side of a comparison is a field, the other a value), "
                f"found {name.describe()}"
            )
        self.advance()
        self.check_variable(lam, name)
        if self.token.kind == "slash":
            raise self.error("sub-field paths ('a/b') are not supported")
        mirrored = MIRRORED[op.value]
        self.check_null(mirrored, value, first.pos)
        return self.make_comparison(lam, name.value, mirrored, value, op.pos, first.pos)

    def make_comparison(
        self, lam: _Lambda | None, field: str, op: str, value: Any, op_pos: int, value_pos: int
    ) -> Any:
        if lam is None:
            return Compare(field, op, value)
        if value is None:
            raise self.error(f"null cannot be used inside {lam.kind}(): elements are compared with values", value_pos)
        return _LCmp(op, value, op_pos)

    def not_precedence(self, op: _Token, left: _Token) -> FilterSyntaxError:
        return self.error(
            f"'not' applies to the next term only and binds tighter than '{op.value}' (as in Azure AI Search): "
            f"write not ({left.raw} {op.value} ...)",
            op.pos,
        )

    def check_variable(self, lam: _Lambda | None, name: _Token) -> None:
        if lam is not None and name.value != lam.var:
            raise self.error(
                f"unknown variable {name.value!r}: inside {lam.field}/{lam.kind}({lam.var}: ...) only the range "
                f"variable {lam.var!r} can be used",
                name.pos,
            )
        if self.token.kind == "slash" and lam is not None:
            raise self.error(f"the range variable {lam.var!r} has no sub-fields ('{lam.var}/...')")

    # -- functions and collections --------------------------------------------------------------------------------

    def function_call(self, lam: _Lambda | None) -> Any:
        name = self.advance()
        if name.value == "startswith" and lam is None:
            return self.startswith_call()
        if name.value == "geo.distance" and lam is None:
            return self.geo_distance_call()
        if name.value != "search.in":
            if name.value.lower() == "search.in":
                hint = "; did you mean 'search.in'?"
            elif name.value in AZURE_FUNCTIONS:
                hint = ": pixsearch does not support it; the functions are search.in, startswith and geo.distance"
            else:
                hint = ("; the functions are search.in(field, 'a,b,c'), startswith(field, 'prefix') and "
                        "geo.distance(location, geography'POINT(lon lat)')")
            raise self.error(f"unknown function {name.value!r}{hint}", name.pos)
        self.expect("lparen", "'(' after search.in")
        target = self.token
        if target.kind != "ident" or target.value in KEYWORDS or "." in target.value:
            raise self.error(f"expected a field name as the first argument of search.in, found {target.describe()}")
        self.advance()
        self.check_variable(lam, target)
        self.expect("comma", "',' and a quoted list of values after the field in search.in")
        values_token = self.expect("string", "a quoted list of values, e.g. 'a,b,c', as search.in's second argument")
        delimiters = DEFAULT_DELIMITERS
        if self.token.kind == "comma":
            self.advance()
            delim_token = self.expect("string", "a quoted string of delimiter characters, e.g. '|'")
            if not delim_token.value:
                raise self.error("search.in's delimiter string is empty", delim_token.pos)
            delimiters = delim_token.value
        if self.token.kind != "rparen":
            raise self.error(
                f"expected ')' to close search.in (it takes 2 or 3 arguments), found {self.token.describe()}"
            )
        self.advance()
        pattern = "[" + "".join(re.escape(c) for c in delimiters) + "]"
        values = tuple(v for v in re.split(pattern, values_token.value) if v)
        if not values:
            raise self.error("search.in has an empty list of values", values_token.pos)
        if lam is not None:
            return _LIn(values, name.pos)
        return In(target.value, values)

    def geo_distance_call(self) -> Filter:
        """Azure's geo.distance(location, geography'POINT(lon lat)') op km, the function first."""
        self.expect("lparen", "'(' after geo.distance")
        target = self.token
        if target.kind != "ident" or target.value in KEYWORDS or "." in target.value:
            raise self.error(f"expected a location field as geo.distance's first argument (a photo's is gps), "
                             f"found {target.describe()}")
        self.advance()
        self.expect("comma", "',' and geography'POINT(lon lat)' after the location in geo.distance")
        keyword = self.token
        if not keyword.is_word("geography"):
            raise self.error(f"expected geography'POINT(lon lat)' as geo.distance's second argument, found "
                             f"{keyword.describe()}")
        self.advance()
        point = self.expect("string", "a quoted point after geography, e.g. geography'POINT(2.2945 48.8584)'")
        match = _POINT.fullmatch(point.value.strip())
        if not match:
            raise self.error("expected POINT(longitude latitude), e.g. geography'POINT(2.2945 48.8584)'", point.pos)
        if self.token.kind != "rparen":
            raise self.error(f"expected ')' to close geo.distance (it takes 2 arguments), found "
                             f"{self.token.describe()}")
        close = self.advance()
        op = self.comparison_operator(close)
        if op.value in ("eq", "ne"):
            raise self.error("geo.distance is compared with lt, le, gt or ge (a distance is never exactly equal)",
                             op.pos)
        distance = self.expect("number", "a distance in kilometres after the comparison")
        return GeoDistance(target.value, float(match.group(1)), float(match.group(2)), op.value,
                           float(distance.value))

    def startswith_call(self) -> Filter:
        """OData's startswith(field, 'prefix'): folder and path prefixes."""
        self.expect("lparen", "'(' after startswith")
        target = self.token
        if target.kind != "ident" or target.value in KEYWORDS or "." in target.value:
            raise self.error(f"expected a field name as the first argument of startswith, found {target.describe()}")
        self.advance()
        self.expect("comma", "',' and a quoted prefix after the field in startswith")
        prefix = self.expect("string", "a quoted prefix, e.g. '/photos/2021', as startswith's second argument")
        if self.token.kind != "rparen":
            raise self.error(f"expected ')' to close startswith (it takes 2 arguments), found {self.token.describe()}")
        self.advance()
        return Prefix(target.value, prefix.value)

    def collection_filter(self, lam: _Lambda | None) -> Filter:
        field = self.advance()
        if lam is not None:
            self.check_variable(lam, field)
        slash = self.advance()
        kind = self.token
        if (kind.is_word("any") or kind.is_word("all")) and self.peek_kind() != "lparen":
            self.advance()
            raise self.error(f"expected '(' after '{field.raw}/{kind.value}', found {self.token.describe()}")
        if not (kind.is_word("any") or kind.is_word("all")):
            raise self.error(
                f"sub-field paths like '{field.raw}/{kind.raw}' are not supported (pixsearch fields are flat); "
                f"after '/' only any(...) or all(...) can follow a collection field",
                kind.pos if kind.kind != "eof" else slash.pos,
            )
        self.advance()
        open_paren = self.advance()
        if self.token.kind == "rparen":
            if kind.value == "any":
                raise self.error(
                    f"{field.raw}/any() without a lambda (collection is not empty) is not supported yet; "
                    f"write {field.raw}/any(x: ...) with a condition",
                    kind.pos,
                )
            raise self.error(f"all() needs a lambda, e.g. {field.raw}/all(x: x ne 'a')", kind.pos)
        var = self.token
        if var.kind != "ident" or var.value in KEYWORDS or "." in var.value:
            raise self.error(
                f"expected a range variable name after '{kind.value}(', e.g. {field.raw}/{kind.value}(x: ...)"
            )
        self.advance()
        self.expect("colon", f"':' after the range variable, e.g. {field.raw}/{kind.value}({var.raw}: {var.raw} ...)")
        self.enter(open_paren.pos)
        inner = _Lambda(field.value, kind.value, var.value)
        body = self.or_expr(inner)
        if self.token.kind != "rparen":
            raise self.error(self.after_condition_message(f"')' to close {field.raw}/{kind.value}("))
        self.advance()
        self.leave()
        return self.lambda_tree(inner, _nnf(body, False))

    def lambda_tree(self, lam: _Lambda, body: Any) -> Filter:
        """any: a disjunction of element conditions -> AnyEq / Or(AnyEq...);
        all: a conjunction -> Not(any(negated conditions))."""
        joiner = "or" if lam.kind == "any" else "and"
        conditions: list[AnyEq] = []
        for leaf in _flatten(body, joiner, self, lam):
            if isinstance(leaf, _LIn):
                if leaf.negated == (lam.kind == "any"):
                    raise self.error(
                        "inside any(), search.in cannot be negated; write not "
                        f"{lam.field}/any({lam.var}: search.in(...)) or {lam.field}/all({lam.var}: not search.in(...))"
                        if lam.kind == "any"
                        else f"inside all(), search.in must be negated: {lam.field}/all({lam.var}: not search.in(...)) "
                        "(Azure AI Search rule); to match any listed value use any()",
                        leaf.pos,
                    )
                conditions.extend(AnyEq(lam.field, "eq", v) for v in leaf.values)
                continue
            if lam.kind == "any" and leaf.op == "ne":
                raise self.error(
                    f"inside any() use 'eq' or search.in, not 'ne' (Azure AI Search rule); for \"no element "
                    f"equals x\" write {lam.field}/all({lam.var}: {lam.var} ne x)",
                    leaf.pos,
                )
            if lam.kind == "all" and leaf.op == "eq":
                raise self.error(
                    f"inside all() use 'ne', 'not ({lam.var} eq ...)' or 'not search.in(...)', not 'eq' "
                    f"(Azure AI Search rule); for \"some element equals x\" write {lam.field}/any({lam.var}: "
                    f"{lam.var} eq x)",
                    leaf.pos,
                )
            op = leaf.op if lam.kind == "any" else NEGATED[leaf.op]
            conditions.append(AnyEq(lam.field, op, leaf.value))
        node: Filter = conditions[0] if len(conditions) == 1 else Or(tuple(conditions))
        return node if lam.kind == "any" else Not(node)


def _nnf(node: Any, negate: bool) -> Any:
    """Push 'not' down to the element conditions (De Morgan), so Azure's any/all rules can be checked."""
    if isinstance(node, _LNot):
        return _nnf(node.item, not negate)
    if isinstance(node, _LGroup):
        kind = node.kind if not negate else ("or" if node.kind == "and" else "and")
        return _LGroup(kind, tuple(_nnf(i, negate) for i in node.items), node.pos, node.flipped != negate)
    if isinstance(node, _LCmp):
        return _LCmp(NEGATED[node.op], node.value, node.pos) if negate else node
    if isinstance(node, _LIn):
        return _LIn(node.values, node.pos, node.negated != negate)
    raise AssertionError(node)


def _flatten(node: Any, joiner: str, parser: _Parser, lam: _Lambda) -> list[Any]:
    if not isinstance(node, _LGroup):
        return [node]
    if node.kind != joiner:
        via = f"; a 'not' over '{joiner}' turns it into '{node.kind}'" if node.flipped else ""
        raise parser.error(
            f"inside {lam.kind}() conditions can only be joined with '{joiner}', not '{node.kind}' "
            f"(Azure AI Search rule{via})",
            node.pos,
        )
    return [leaf for item in node.items for leaf in _flatten(item, joiner, parser, lam)]


def parse_filter(text: str) -> Filter:
    """Parse an OData `$filter` expression (Azure AI Search subset) into a filter tree.

    Raises FilterSyntaxError (a FilterError, hence a ValueError) with `.position` set when the text does not parse.
    Field existence and value types are checked later, by store.filters.compile_filter.
    """
    if not isinstance(text, str):
        raise TypeError(f"a filter is a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FilterSyntaxError(f"filter is too long ({len(text)} characters, at most {MAX_LENGTH})", MAX_LENGTH, text)
    nul = text.find("\x00")
    if nul >= 0:
        raise FilterSyntaxError("NUL character in filter", nul, text)
    if not text.strip():
        raise FilterSyntaxError("empty filter", 0, text)
    return _Parser(text).parse()
