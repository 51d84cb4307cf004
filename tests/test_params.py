"""The one integer check, the one number check and the one KEY=VALUE parser (fedhive.strategies.params)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

from fedhive.strategies.params import (integer, non_negative_int, number, optional, parse_pairs, parse_value,
                                       positive_int)


# --------------------------------------------------------------------------- integer
@pytest.mark.parametrize("value, expected", [
    (0, 0), (7, 7), (10**30, 10**30), (20.0, 20), (-0.0, 0), (np.int64(5), 5), (np.uint8(3), 3), (np.int32(0), 0),
    (np.float64(4.0), 4), (np.float32(2.0), 2), (Fraction(6, 3), 2),
])
def test_integer_accepts_ints_numpy_ints_and_integral_floats(value, expected):
    out = integer("steps", value, low=0)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", [
    True, False, np.bool_(True), "3", "x", None, [3], 2.5, np.float64(0.5), Fraction(1, 2), math.nan, math.inf,
    -math.inf, np.float64("nan"), 1j, object(),
])
def test_integer_refuses_bools_strings_fractions_and_non_finite_values(value):
    with pytest.raises(ValueError, match=re.escape(f"steps must be an integer >= 0, got {value!r}")):
        integer("steps", value, low=0)


@pytest.mark.parametrize("value, low, high, words", [
    (-1, 0, None, "seed must be an integer >= 0, got -1"),
    (np.int64(-3), 0, None, "seed must be an integer >= 0, got "),
    (0, 1, None, "seed must be an integer >= 1, got 0"),
    (11, 1, 10, "seed must be an integer >= 1 and <= 10, got 11"),
    (5, None, 3, "seed must be an integer <= 3, got 5"),
    (-1.0, 0, None, "seed must be an integer >= 0, got -1.0"),
])
def test_integer_range_errors_name_the_setting_the_value_and_the_range(value, low, high, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        integer("seed", value, low=low, high=high)


def test_integer_without_bounds_takes_any_integer():
    assert integer("offset", -(10**20)) == -(10**20)
    with pytest.raises(ValueError, match=re.escape("offset must be an integer, got 'a'")):
        integer("offset", "a")


def test_positive_and_non_negative_int_are_the_two_common_ranges():
    assert positive_int("q_min", 20.0) == 20 and type(positive_int("q_min", 20.0)) is int
    assert positive_int("q_min", np.int64(1)) == 1
    assert non_negative_int("seed", 0) == 0
    with pytest.raises(ValueError, match=re.escape("q_min must be an integer >= 1, got 0")):
        positive_int("q_min", 0)
    with pytest.raises(ValueError, match=re.escape("q_min must be an integer >= 1, got True")):
        positive_int("q_min", True)
    with pytest.raises(ValueError, match=re.escape("seed must be an integer >= 0, got -1")):
        non_negative_int("seed", -1)
    assert optional(positive_int, "max_concurrency", None) is None
    assert optional(integer, "max_staleness", 3.0, low=0) == 3


# --------------------------------------------------------------------------- number
@pytest.mark.parametrize("value", [0, 0.0, 1, 0.5, np.float32(0.25), np.float64(1.0), np.int64(1), Fraction(1, 4)])
def test_number_accepts_real_numbers_and_gives_a_float(value):
    out = number("alpha", value, low=0, high=1)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [
    True, False, np.bool_(False), "0.5", None, math.nan, math.inf, -math.inf, np.float64("inf"), 10**400, 1j, [0.5],
])
def test_number_refuses_bools_strings_and_non_finite_values(value):
    with pytest.raises(ValueError, match=re.escape(f"alpha must be a finite number >= 0 and <= 1, got {value!r}")):
        number("alpha", value, low=0, high=1)


@pytest.mark.parametrize("kw, value, words", [
    ({"low": 0.0, "low_open": True}, 0.0, "lr must be a finite number > 0.0, got 0.0"),
    ({"low": 0.0, "low_open": True}, -1, "lr must be a finite number > 0.0, got -1"),
    ({"low": 0, "high": 1, "high_open": True}, 1, "lr must be a finite number >= 0 and < 1, got 1"),
    ({"low": 1}, 0.5, "lr must be a finite number >= 1, got 0.5"),
    ({"high": 5}, 6.5, "lr must be a finite number <= 5, got 6.5"),
    ({}, math.nan, "lr must be a finite number, got nan"),
])
def test_number_range_errors_name_the_setting_the_value_and_the_range(kw, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        number("lr", value, **kw)


def test_number_range_ends_are_included_unless_open():
    assert number("x", 0, low=0) == 0.0 and number("x", 1, high=1) == 1.0
    assert number("x", 1e-300, low=0, low_open=True) == 1e-300
    assert number("x", -1e300) == -1e300


# --------------------------------------------------------------------------- parse_value / parse_pairs
@pytest.mark.parametrize("text, expected", [
    ("3", 3), ("-2", -2), ("0.5", 0.5), ("1e3", 1000.0), ("true", True), ("false", False), ("null", None),
    ('"3"', "3"), ("x", "x"), ("  spaced  ", "spaced"), ("", ""), ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}),
    ("True", "True"), ("05", "05"), ("a=b", "a=b"),
])
def test_parse_value_types_as_json_else_keeps_the_text(text, expected):
    out = parse_value(text)
    assert out == expected and type(out) is type(expected)


def test_parse_value_reads_json_nan_and_infinity_as_floats_for_the_checks_to_refuse():
    assert math.isnan(parse_value("NaN")) and parse_value("Infinity") == math.inf
    with pytest.raises(ValueError, match="must be a finite number"):
        number("lr", parse_value("NaN"))


def test_parse_pairs():
    assert parse_pairs(["a=1", " b = x ", "c=true", "d=", "e=k=v", "a=2"], "p") == {
        "a": 2, "b": "x", "c": True, "d": "", "e": "k=v"}
    assert parse_pairs(None, "p") == {} and parse_pairs([], "p") == {}
    assert parse_pairs(iter(["max-time=60"]), "p") == {"max-time": 60}  # keys are kept as written


@pytest.mark.parametrize("item", ["a", "", "=3", " = 3", "  "])
def test_parse_pairs_refuses_items_without_a_key(item):
    with pytest.raises(ValueError, match=re.escape(f"bad strategy parameter {item!r}: write KEY=VALUE, "
                                                   "e.g. buffer_size=10")):
        parse_pairs(["ok=1", item], "strategy parameter", example="buffer_size=10")
    with pytest.raises(ValueError, match=re.escape(f"bad mix entry {item!r}: write CLASS=COUNT")):
        parse_pairs([item], "mix entry", form="CLASS=COUNT")


def test_parsed_values_go_through_the_checks():
    pairs = parse_pairs(["steps=20", "steps_f=20.0", "flag=true", "frac=2.5", "neg=-1", "word=ten"], "p")
    assert integer("steps", pairs["steps"], low=1) == 20 and integer("steps_f", pairs["steps_f"], low=1) == 20
    for key in ("flag", "frac", "neg", "word"):
        with pytest.raises(ValueError, match=re.escape(f"{key} must be an integer >= 0, got {pairs[key]!r}")):
            integer(key, pairs[key], low=0)


def test_params_imports_only_the_standard_library():
    import ast
    import sys

    import fedhive.strategies.params as P

    tree = ast.parse(open(P.__file__).read())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots
