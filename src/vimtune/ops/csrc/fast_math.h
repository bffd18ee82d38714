// Branch-free elementwise math shared by the CPU kernels (selective_scan_cpu.cpp, mixer_cpu.cpp,
// prompt_update_cpu.cpp).
//
// float: exp(x) = 2^(x log2 e), with 2^y = 2^k 2^f, k = round(y), f = y - k in [-1/2, 1/2]; 2^f is a
// degree-6 polynomial (relative error 1.6e-8 before rounding, below 1e-7 in float) and 2^k is added to
// its exponent bits. y is first clamped to [-126, 126] (NaN to +-126 by its sign bit), so the result is
// a normal float for every input (inf and NaN included). softplus(x) = max(x, 0) + log1p(e^{-|x|}) with
// log1p summed as an atanh series (truncation below 2e-9). None of them branches on a float, so loops
// over lanes that call them vectorise (`#pragma omp simd` / `#pragma GCC ivdep`). float64 calls libm.
//
// Everything lives in an anonymous namespace: each kernel is its own shared library, and internal
// linkage keeps one library's copies from being interposed by another's.

#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// The unsigned integer type of F's bits: uint32_t for float, the integer vector of a GCC float vector.
template <typename F>
using Bits32 = std::conditional_t<std::is_same_v<F, float>, uint32_t, decltype(F{} < F{})>;

// 2^f for f in [-1/2, 1/2]: the degree-6 polynomial described above; F is float or a GCC vector of floats.
template <typename F>
inline F exp2_fraction(F f) {
  F p = 1.5344865e-4f * f + 1.3399924e-3f;
  p = p * f + 9.6184928e-3f;
  p = p * f + 5.5503286e-2f;
  p = p * f + 2.4022646e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  return p;
}

// 2^y for float y, as described above; F is float or a GCC vector of floats (the same arithmetic per lane).
template <typename F>
inline F exp2_lanes(F y) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  // y clamped to [-126, 126] on its bits: the magnitude's bits are capped at those of 126 (an unsigned
  // integer minimum, one instruction per vector) and the sign is kept; NaN and inf become +-126. A float
  // compare here became, after gcc folded 2^(+-126) into the out-of-range branches, four compares and
  // two blends per vector on AVX2.
  using U = Bits32<F>;
  constexpr uint32_t kSign = 0x80000000u, kMagnitude126 = 0x42fc0000u;  // the bits of 126.0f
  const U bits = std::bit_cast<U>(y);
  const U magnitude = bits & ~kSign;
  y = std::bit_cast<F>((magnitude < kMagnitude126 ? magnitude : kMagnitude126) | (bits & kSign));
  const F shifted = y + kShift;
  const F f = y - (shifted - kShift);
  const F p = exp2_fraction(f);
  // The low bits of `shifted` hold k; shifting them into the exponent field scales p by 2^k.
  return std::bit_cast<F>(std::bit_cast<Bits32<F>>(p) + (std::bit_cast<Bits32<F>>(shifted) << 23));
}

// 16 float lanes as one GCC vector: one register with AVX-512 (two halves on AVX2). Declared on every CPU, so
// that kernels may name it in `if constexpr (kVectorExp ...)` branches, which are compiled only with AVX-512.
using Floats16 = float __attribute__((vector_size(16 * sizeof(float))));

#if defined(__AVX512F__) && defined(__AVX512DQ__)
constexpr bool kVectorExp = true;

// exp2_lanes for a whole AVX-512 register, in fewer instructions than the lane-wise code compiles to: the clamp
// is one vrangeps (sign(y) min(|y|, 126), in place of a mask, an integer minimum and a blend), f = y - round(y)
// is one vreduceps (in place of the shift's add and two subtractions; exact, rounding to nearest even as the
// shift does), k = y - f is exact, and 2^k is applied by vscalefps (p 2^k, in place of a shift and an add). k, f
// and the polynomial are exp2_lanes', so the value is the same bits for every float y but signalling NaNs, which
// no arithmetic produces (vrangeps turns a quiet NaN into +-126 by its sign, as the bit clamp does).
inline Floats16 exp2_lanes(Floats16 y) {
  constexpr int kMinAbsSignOfFirst = 0x02;  // vrangeps: the smaller magnitude, with the first operand's sign
  constexpr int kNearestQuiet = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // vreduceps: y - round(y)
  y = Floats16(_mm512_range_ps(__m512(y), _mm512_set1_ps(126.0f), kMinAbsSignOfFirst));
  const Floats16 f = Floats16(_mm512_reduce_ps(__m512(y), kNearestQuiet));
  const Floats16 k = y - f;
  const Floats16 p = exp2_fraction(f);
  return Floats16(_mm512_scalef_ps(__m512(p), __m512(k)));
}
#else
constexpr bool kVectorExp = false;
#endif

// The bfloat16 bits of float v (in the low 16 bits of U), rounded to nearest even as c10::BFloat16(v) rounds,
// NaN as 0x7FC0. U is uint32_t for a float, or a GCC vector of uint32_t lanes for a GCC float vector. Without
// a branch, so that loops storing bfloat16 vectorise (through c10::BFloat16's constructor they stayed scalar).
template <typename U, typename F>
inline U bfloat16_bits(F v) {
  const U bits = std::bit_cast<U>(v);
  const U rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
  return v != v ? U{} + 0x7FC0u : rounded;
}

// A stored activation as a compute value: float and double as they are, bfloat16 as the float whose upper half
// its bits are (exact; a shift, which vectorises).
template <typename V>
inline V lane(V v) { return v; }
inline float lane(c10::BFloat16 v) { return std::bit_cast<float>(uint32_t(v.x) << 16); }

// exp(x) = exp_scaled(x * kExpScale<S>): 2^(x log2 e) in float, libm's e^x in double. A kernel may fold
// kExpScale into a factor once (the mixer's scan does so with A) and call exp_scaled directly.
template <typename S>
constexpr S kExpScale = S(1);
template <>
constexpr float kExpScale<float> = 1.44269504088896341f;

inline float exp_scaled(float x) { return exp2_lanes(x); }
inline double exp_scaled(double x) { return std::exp(x); }

template <typename S>
inline S exp_lanes(S x) {
  return exp_scaled(x * kExpScale<S>);
}

// sigmoid(x) = 1 / (1 + e^-x) for float x or a GCC vector of floats, and exactly 0 below -87.33, where it falls
// below the smallest normal float. Without that select it would stop at about 1.2e-38 (exp2_lanes clamps its
// argument at 126), and silu(x) = x sigmoid(x) would be -3.5 at x = -3e38 (torch: -0) and -inf at -inf (torch:
// NaN). float64 calls libm.
template <typename F>
inline F sigmoid_lanes(F x) {
  const F s = 1.0f / (1.0f + exp2_lanes(-x * kExpScale<float>));
  return x < -87.33f ? F{} : s;
}

inline float sigmoid(float x) { return sigmoid_lanes(x); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// softplus(x) = max(x, 0) + log1p(v), v = exp(-|x|) in (0, 1]; log1p(v) = 2 atanh(q) with
// q = v / (2 + v) <= 1/3, summed as a series in q^2 up to q^14 / 15 (truncation below 2e-9). The slope
// d softplus / dx = sigmoid(x) reuses v. Both are exactly x and 1 above the threshold 20, as in torch.
inline void softplus(float x, float& value, float& slope) {
  const float v = exp_lanes(x < 0.0f ? x : -x);
  const float q = v / (2.0f + v);
  const float s = q * q;
  float p = 1.0f / 15.0f;
  p = p * s + 1.0f / 13.0f;
  p = p * s + 1.0f / 11.0f;
  p = p * s + 1.0f / 9.0f;
  p = p * s + 1.0f / 7.0f;
  p = p * s + 1.0f / 5.0f;
  p = p * s + 1.0f / 3.0f;
  p = p * s + 1.0f;
  const bool above = x > 20.0f;
  value = above ? x : (x > 0.0f ? x : 0.0f) + 2.0f * q * p;
  slope = above ? 1.0f : (x < 0.0f ? v : 1.0f) / (1.0f + v);
}

inline void softplus(double x, double& value, double& slope) {
  const bool above = x > 20.0;
  value = above ? x : std::log1p(std::exp(x));
  slope = above ? 1.0 : 1.0 / (1.0 + std::exp(-x));
}

}  // namespace
