"""Integer requantization as TensorFlow Lite (and CMSIS-NN) does it.

An int8 layer accumulates in int32 and maps the accumulator back to int8 with
a real multiplier M = input_scale * weight_scale / output_scale, carried as a
Q31 fixed-point multiplier and a power-of-two shift (`quantize_multiplier`).
`requantize` applies it exactly as TFLite's MultiplyByQuantizedMultiplier:
a saturating rounding doubling high multiply (gemmlowp), then a rounding
right shift (round half away from zero). These are the int8 reference's
building blocks; emitted kernels must match them bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(multiplier, shift) with real == multiplier * 2**(shift - 31), multiplier
    in [2**30, 2**31) (TFLite's QuantizeMultiplier; 0 gives (0, 0))."""
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"quantize_multiplier: expected a finite non-negative real; got {real!r}")
    if real == 0:
        return 0, 0
    fraction, shift = math.frexp(real)            # real = fraction * 2**shift, fraction in [0.5, 1)
    multiplier = round_half_away(fraction * 2**31)
    if multiplier == 2**31:                       # rounding carried into the next power of two
        multiplier //= 2
        shift += 1
    if shift < -31:                               # too small to represent: TFLite flushes to zero
        return 0, 0
    return multiplier, shift


def round_half_away(value: float) -> int:
    """TFLite's TfLiteRound (std::round): halves go away from zero."""
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values (as int64 arrays)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    product = a * b
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    total = product + nudge
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))   # C's division: truncate toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_power_of_two(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent, rounded half away from zero."""
    x, exponent = np.asarray(x, dtype=np.int64), np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier(acc, multiplier, shift), elementwise
    (multiplier and shift broadcast, e.g. per output channel). acc must fit
    int32 after the left shift, as TFLite requires."""
    shift = np.asarray(shift, dtype=np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    shifted = np.asarray(acc, dtype=np.int64) << left
    if np.any((shifted < INT32_MIN) | (shifted > INT32_MAX)):
        raise ValueError("requantize: the accumulator overflows int32 after the left shift")
    return rounding_divide_by_power_of_two(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


# TFLite's int8 ADD: both inputs less their zero points, shifted left this many bits, then
# each scaled by its scale over twice the larger input scale (a multiplier below one)
ADD_LEFT_SHIFT = 20


def add_multipliers(input1_scale: float, input2_scale: float, output_scale: float) -> tuple[int, ...]:
    """(m1, shift1, m2, shift2, m_out, shift_out) of TFLite's int8 ADD (its
    Prepare: QuantizeMultiplierSmallerThanOneExp of s1 / 2max, s2 / 2max and
    2max / (2**20 * output_scale), computed in double)."""
    twice_max = 2 * max(input1_scale, input2_scale)
    return (*quantize_multiplier(input1_scale / twice_max), *quantize_multiplier(input2_scale / twice_max),
            *quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * output_scale)))
