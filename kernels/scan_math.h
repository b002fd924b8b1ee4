// Vectorisable float32 math for the CPU kernels (used by selective_scan.cpp), header-only.
#pragma once

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace retailsim {
namespace simd {

// Vectorisable float math. libm's expf/log1pf are opaque calls that stop GCC from vectorising the loops
// over N unless -ffast-math is on, which would also break NaN/Inf propagation; these inline versions are
// branch-free (selects only) and accurate to a few ulp.

inline float bits_to_float(uint32_t bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline uint32_t float_to_bits(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}

// e^x: x = k ln2 + r with |r| <= ln2/2 (Cody–Waite split of ln2), e^r by a degree-6 minimax polynomial,
// 2^k applied as two halves so that results down to the denormals and up to overflow come out right.
inline float exp_f32(float x) {
    const bool is_nan = x != x;
    float clamped = x < -104.0f ? -104.0f : x;  // e^-104 rounds to 0, e^89 overflows to inf
    clamped = clamped > 89.0f ? 89.0f : clamped;
    clamped = is_nan ? 0.0f : clamped;
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
    const float k = (clamped * 1.44269504088896341f + shifter) - shifter;
    const float r = (clamped - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t k_int = static_cast<int32_t>(k);
    const int32_t k_half = k_int / 2;
    const float scale_a = bits_to_float(static_cast<uint32_t>(k_half + 127) << 23);
    const float scale_b = bits_to_float(static_cast<uint32_t>(k_int - k_half + 127) << 23);
    const float result = p * scale_a * scale_b;
    return is_nan ? x : result;
}

// ln x for finite x >= 1 (the only use: ln(1 + e^x) in softplus). x = m 2^e with m in [sqrt(1/2), sqrt(2)).
inline float log_f32_ge1(float x) {
    const uint32_t bits = float_to_bits(x);
    float exponent = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xffu) - 127);
    float m = bits_to_float((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
    // Arithmetic inside a ?: arm would be conditional (and, with trapping math, not if-converted): compute
    // both values first, then select.
    const bool high = m > 1.41421356f;
    const float m_half = m * 0.5f, exponent_up = exponent + 1.0f;
    m = high ? m_half : m;
    exponent = high ? exponent_up : exponent;
    const float f = m - 1.0f;
    const float f2 = f * f;
    float p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    float tail = p * f * f2 + exponent * -2.12194440e-4f - 0.5f * f2;
    return (f + tail) + exponent * 0.693359375f;
}

// softplus with torch's threshold (x > 20 returns x). ln(1+e) is computed as ln(w)·e/(w-1), w = 1+e, which
// keeps full relative accuracy when e is tiny.
inline float softplus_f32(float x) {
    const float e = exp_f32(x < 20.0f ? x : 20.0f);
    const float w = 1.0f + e;
    const float w_minus_1 = w - 1.0f;
    // Both arms are computed before the select so that the loops calling this vectorise.
    const float ratio = e / (w_minus_1 == 0.0f ? 1.0f : w_minus_1);
    const float log_w_scaled = log_f32_ge1(w) * ratio;
    const float log1p_e = w_minus_1 == 0.0f ? e : log_w_scaled;
    return x > 20.0f ? x : log1p_e;
}

// d softplus / dx = sigmoid(x), 1 above the threshold (as torch's softplus backward).
inline float softplus_grad_f32(float x) {
    const float s = 1.0f / (1.0f + exp_f32(-x));
    return x > 20.0f ? 1.0f : s;
}

inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// The kernels are templates on the element type: float32 (the product, vectorised math above) and float64
// (libm, for gradchecks of the hand-written backward).
inline float exp_of(float x) { return exp_f32(x); }
inline float softplus_of(float x) { return softplus_f32(x); }
inline float softplus_grad_of(float x) { return softplus_grad_f32(x); }
inline float sigmoid_of(float x) { return sigmoid_f32(x); }
inline double exp_of(double x) { return std::exp(x); }
inline double softplus_of(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
inline double softplus_grad_of(double x) { return x > 20.0 ? 1.0 : 1.0 / (1.0 + std::exp(-x)); }
inline double sigmoid_of(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Horizontal sum of n floats, n a multiple of the vector width: one register of partial sums, then the
// register's lanes. Plain C++ leaves this to GCC, which without -ffast-math keeps the exact left-to-right
// order and spills to the stack; the fixed order here is as deterministic and 3-4x cheaper.
inline float horizontal_sum(const float* v, int64_t n) {
#if defined(__AVX512F__)
    // Lane swaps in the masked forms: the plain intrinsics trip -Wmaybe-uninitialized in GCC 12's headers.
    __m512 wide = _mm512_loadu_ps(v);
    for (int64_t k = 16; k < n; k += 16) wide = _mm512_add_ps(wide, _mm512_loadu_ps(v + k));
    wide = _mm512_add_ps(wide, _mm512_mask_shuffle_f32x4(wide, 0xffff, wide, wide, 0x4e));  // 256-bit halves
    wide = _mm512_add_ps(wide, _mm512_mask_shuffle_f32x4(wide, 0xffff, wide, wide, 0xb1));  // 128-bit lanes
    wide = _mm512_add_ps(wide, _mm512_mask_permute_ps(wide, 0xffff, wide, 0x4e));           // pairs
    wide = _mm512_add_ps(wide, _mm512_mask_permute_ps(wide, 0xffff, wide, 0xb1));           // neighbours
    return _mm512_cvtss_f32(wide);
#elif defined(__AVX__)
    __m256 acc = _mm256_loadu_ps(v);
    for (int64_t k = 8; k < n; k += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(v + k));
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(half, _mm_shuffle_ps(half, half, 1)));
#elif defined(__SSE2__)
    __m128 acc = _mm_loadu_ps(v);
    for (int64_t k = 4; k < n; k += 4) acc = _mm_add_ps(acc, _mm_loadu_ps(v + k));
    acc = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));
    return _mm_cvtss_f32(_mm_add_ss(acc, _mm_shuffle_ps(acc, acc, 1)));
#else
    float total = 0.0f;
    for (int64_t k = 0; k < n; ++k) total += v[k];
    return total;
#endif
}

#if defined(__AVX512F__)
constexpr int64_t kSimdWidth = 16;
#elif defined(__AVX__)
constexpr int64_t kSimdWidth = 8;
#elif defined(__SSE2__)
constexpr int64_t kSimdWidth = 4;
#else
constexpr int64_t kSimdWidth = 1;
#endif

}  // namespace simd
}  // namespace retailsim
