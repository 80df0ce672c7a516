"""Requantization against an independent model of TFLite's integer arithmetic.

The model below is written from what the operations mean, with Python's exact
integers and fractions, not from gemmlowp's bit tricks:
- the doubling high multiply is a*b / 2**31 rounded half toward +infinity
  (that is what gemmlowp's sign-dependent nudge with C truncation works out to),
  saturating the one overflowing case;
- the rounding right shift is x / 2**e rounded half away from zero.
"""

import ctypes
import math
import subprocess
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from convgen import ir, quant
from convgen.codegen.c import helper_definition

INT32 = st.integers(quant.INT32_MIN, quant.INT32_MAX)


def model_high_mul(a: int, b: int) -> int:
    if a == b == quant.INT32_MIN:
        return quant.INT32_MAX
    return math.floor(Fraction(a * b, 2**31) + Fraction(1, 2))


def model_shift_right(x: int, e: int) -> int:
    magnitude = math.floor(Fraction(abs(x), 2**e) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude


def model_requantize(x: int, multiplier: int, shift: int) -> int:
    return model_shift_right(model_high_mul(x * 2 ** max(shift, 0), multiplier), max(-shift, 0))


EDGES = [
    # exact halves of the high multiply (multiplier 2**30 halves x), both signs
    (1, 2**30, 0), (-1, 2**30, 0), (3, 2**30, 0), (-3, 2**30, 0), (quant.INT32_MAX, 2**30, 0),
    (quant.INT32_MIN, 2**30, 0),
    # exact halves of the rounding shift, both signs, several exponents
    (2**31 - 2**30, 2**31 - 1, -1), (-(2**30), 2**31 - 1, -1), (6, 2**30, -1), (-6, 2**30, -1),
    (10, 2**30, -2), (-10, 2**30, -2), (2**20 + 2**19, 2**30, -20), (-(2**20 + 2**19), 2**30, -20),
    # extremes of value, multiplier and shift
    (quant.INT32_MIN, quant.INT32_MAX, 0), (quant.INT32_MAX, quant.INT32_MAX, 0), (0, 2**30, -31),
    (quant.INT32_MAX, 2**30, -31), (quant.INT32_MIN, 2**30, -31), (1, quant.INT32_MAX, 30), (-1, quant.INT32_MAX, 30),
    # the one saturating product
    (quant.INT32_MIN, quant.INT32_MIN, 0),
]


def _random_triples(count: int, seed: int):
    rng = np.random.default_rng(seed)
    multipliers = rng.integers(2**30, 2**31, count)          # what quantize_multiplier yields
    shifts = rng.integers(-31, 8, count)
    limits = 2**31 >> np.maximum(shifts, 0)                   # the accumulator must fit after the left shift
    values = (rng.uniform(-1, 1, count) * limits).astype(np.int64)
    values[: count // 4] = rng.integers(-2**16, 2**16, count // 4)   # typical conv accumulators
    return values, multipliers, shifts


def test_thousands_of_random_triples_agree_with_the_model():
    values, multipliers, shifts = _random_triples(20000, 2026)
    got = quant.requantize(values, multipliers, shifts)
    expected = [model_requantize(int(v), int(m), int(s)) for v, m, s in zip(values, multipliers, shifts)]
    assert got.tolist() == expected


def test_the_emitted_c_requantization_agrees_with_the_model(tmp_path):
    """The C helper every int8 kernel calls (codegen/c.py writes it in its own,
    cheaper form), built with the host's compiler, on random triples and the
    edge cases; and the int8 clamp beside it."""
    source = tmp_path / "requantize.c"
    source.write_text("#include <stdint.h>\n#include <stddef.h>\n" + helper_definition(("requantize", ir.INT32))
                      + "\n" + helper_definition(("saturate8", ir.INT32)) + """
void run(const int32_t *acc, const int32_t *m, const int32_t *s, int32_t *out, int32_t *saturated, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        out[i] = convgen_requantize(acc[i], m[i], s[i]);
        saturated[i] = convgen_saturate_i8(acc[i]);
    }
}
""")
    library = tmp_path / "requantize.so"
    subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", str(source),
                    "-o", str(library)], check=True)
    values, multipliers, shifts = _random_triples(20000, 7)
    edges = np.array(EDGES, dtype=np.int64)
    values, multipliers, shifts = (np.concatenate([column, edges[:, k]]).astype(np.int32)
                                   for k, column in enumerate((values, multipliers, shifts)))
    out, saturated = np.full(len(values), 12345, np.int32), np.full(len(values), 12345, np.int32)
    pointer = ctypes.POINTER(ctypes.c_int32)
    ctypes.CDLL(str(library)).run(*(a.ctypes.data_as(pointer) for a in (values, multipliers, shifts, out, saturated)),
                                  ctypes.c_size_t(len(values)))
    expected = [model_requantize(int(v), int(m), int(s)) for v, m, s in zip(values, multipliers, shifts)]
    assert out.tolist() == expected
    assert saturated.tolist() == np.clip(values, -128, 127).tolist()


@pytest.mark.parametrize("x, multiplier, shift", EDGES)
def test_rounding_edge_cases_agree_with_the_model(x, multiplier, shift):
    assert int(quant.requantize(np.array([x]), multiplier, shift)[0]) == model_requantize(x, multiplier, shift)


def test_the_one_saturating_product():
    assert int(quant.saturating_rounding_doubling_high_mul(quant.INT32_MIN, quant.INT32_MIN)) == quant.INT32_MAX


@settings(max_examples=2000, deadline=None)
@given(a=INT32, b=INT32, e=st.integers(0, 31))
def test_building_blocks_agree_with_the_model(a, b, e):
    assert int(quant.saturating_rounding_doubling_high_mul(a, b)) == model_high_mul(a, b)
    assert int(quant.rounding_divide_by_power_of_two(a, e)) == model_shift_right(a, e)


@settings(max_examples=1000, deadline=None)
@given(real=st.floats(1e-9, 1e3, allow_nan=False))
def test_quantized_multiplier_represents_the_real_one(real):
    multiplier, shift = quant.quantize_multiplier(real)
    assert 2**30 <= multiplier < 2**31
    assert abs(Fraction(multiplier) * Fraction(2) ** (shift - 31) - Fraction(real)) <= Fraction(real) * 2**-30


def test_quantize_multiplier_refuses_what_it_cannot_carry():
    assert quant.quantize_multiplier(0.0) == (0, 0)
    assert quant.quantize_multiplier(2.0**-40) == (0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        quant.quantize_multiplier(-0.5)
