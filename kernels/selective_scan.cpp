// CPU selective scan (SPEC 6.2, 8): forward and backward of mamba_ssm's selective_scan_fn on float32 buffers
// (and float64 ones: the same code on libm math, so that the hand-written backward can be gradchecked).
//
//   Δ_t   = softplus(delta_t + delta_bias)  (or delta_t + delta_bias)
//   h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t          h ∈ R^N per (batch b, channel d), h_{-1} = 0
//   y_t   = C_t · h_t + D u_t,   out_t = y_t · silu(z_t)  (when z is given)
//
// Layout: u, delta, z, out (batch, dim, L); A (dim, N); B, C (batch, groups, N, L) with channel d reading
// group d / (dim / groups) (B and C may have different group counts; (batch, N, L) is one group).
// B and C are first transposed to (batch, groups, L, N) so that every step reads N contiguous floats: the
// loops over N are the SIMD dimension (`omp simd` with scan_math.h's inline exp/log1p, and its horizontal
// sums for the dot products over N; no -ffast-math), the time loop is sequential. N = 8, 16, 32, 64 are
// compiled as constants; other N run the same code with N read at run time.
//
// Forward: one task per (b, d) row; the state lives in a per-thread array of N floats. It keeps the state at
// the end of every kChunk-step chunk but the last ("checkpoints", (batch, dim, ceil(L/kChunk) - 1, N)), so the
// backward pass needs O(batch·dim·N·L/kChunk) memory instead of the O(batch·dim·N·L) of stored states.
//
// Backward: chunks are visited last to first; each chunk's states are recomputed from its checkpoint into a
// kChunk×N scratch, then the adjoint g_t = ∂L/∂h_t runs backwards through it:
//   g_t = dy_t C_t + exp(Δ_{t+1} A) ⊙ g_{t+1}                      dy_t = dout_t · silu(z_t) (or dout_t)
//   du_t = D dy_t + Δ_t (g_t · B_t)        dB_t += g_t Δ_t u_t        dC_t += dy_t h_t
//   dΔ_t = u_t (g_t · B_t) + Σ_n g_t A exp(Δ_t A) h_{t-1}          dA += Δ_t g_t ⊙ exp(Δ_t A) ⊙ h_{t-1}
// Determinism: no atomics. dB/dC (sums over the channels of a group) are accumulated per task — a fixed
// block of channels inside one B group and one C group of one batch row, the blocks chosen from the shape
// alone — and the blocks are summed in channel order; dA, dD, ddelta_bias (sums over the batch) are kept
// per (b, d) and summed in batch order. The bits therefore depend on neither the thread count nor the
// scheduling (parallel_for.h: workers pull task indices; each task writes only its own outputs).
#include "parallel_for.h"
#include "registry.h"
#include "scan_math.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

namespace retailsim {
namespace {

using namespace simd;
using pool::default_threads;
using pool::parallel_for;

constexpr int64_t kChunk = 64;  // steps between two checkpoints; also the scratch length of one chunk
constexpr int64_t kTargetBackwardTasks = 64;  // how finely the backward splits channels (shape-only choice)

// ---------------------------------------------------------------------------------------------------------
// Argument checking: every buffer must be a C-contiguous, aligned float32 NumPy array of the expected shape.

struct Problem {
    int64_t batch = 0, dim = 0, length = 0, state = 0;
    int64_t groups_B = 1, groups_C = 1;
    bool b_grouped = false, c_grouped = false;
    int64_t n_chunks() const { return (length + kChunk - 1) / kChunk; }
    int64_t n_checkpoints() const { return std::max<int64_t>(0, n_chunks() - 1); }
    // Channel segments that read one B group and one C group: lcm(groups_B, groups_C) of them (it divides dim).
    int64_t segments() const { return groups_B / std::gcd(groups_B, groups_C) * groups_C; }
    int64_t segment_size() const { return dim / segments(); }
};

std::string shape_text(const py::array& array) {
    std::string text = "(";
    for (py::ssize_t i = 0; i < array.ndim(); ++i) {
        if (i) text += ", ";
        text += std::to_string(array.shape(i));
    }
    return text + (array.ndim() == 1 ? ",)" : ")");
}

// Every buffer has u's dtype, float32 (the product) or float64 (gradchecks).
template <class T>
const char* dtype_name() {
    return std::is_same<T, float>::value ? "float32" : "float64";
}

template <class T>
const T* buffer(const py::handle& object, const char* fn, const char* name) {
    if (!py::isinstance<py::array>(object))
        throw py::type_error(std::string(fn) + ": " + name + " must be a NumPy array, got " +
                             std::string(py::str(py::type::of(object).attr("__name__"))) + ".");
    auto array = py::reinterpret_borrow<py::array>(object);
    if (!array.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(fn) + ": " + name + " must be " + dtype_name<T>() +
                             " (all arrays share u's dtype, float32 or float64), got " +
                             std::string(py::str(array.dtype())) + ".");
    const int flags = array.flags();
    if (!(flags & py::array::c_style) || !(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw py::value_error(std::string(fn) + ": " + name + " must be C-contiguous and aligned.");
    return static_cast<const T*>(array.data());
}

// True for a float64 u, which selects the float64 build of the kernels.
bool is_float64(const py::handle& u) {
    return py::isinstance<py::array>(u) &&
           py::reinterpret_borrow<py::array>(u).dtype().is(py::dtype::of<double>());
}

void expect_shape(const py::handle& object, std::initializer_list<int64_t> shape, const char* fn,
                  const char* name, const char* meaning) {
    auto array = py::reinterpret_borrow<py::array>(object);
    bool same = array.ndim() == static_cast<py::ssize_t>(shape.size());
    int64_t i = 0;
    for (int64_t extent : shape) {
        if (!same) break;
        same = array.shape(i++) == extent;
    }
    if (!same) {
        std::string expected = "(";
        i = 0;
        for (int64_t extent : shape) expected += (i++ ? ", " : "") + std::to_string(extent);
        expected += shape.size() == 1 ? ",)" : ")";
        throw py::value_error(std::string(fn) + ": " + name + " must have shape " + expected + " " + meaning +
                              ", got " + shape_text(array) + ".");
    }
}

template <class T>
const T* optional_buffer(const py::object& object, const char* fn, const char* name) {
    return object.is_none() ? nullptr : buffer<T>(object, fn, name);
}

// Reads batch, dim, L from u; N from A; groups from B and C; checks every input against them.
template <class T>
Problem check_inputs(const char* fn, const py::object& u, const py::object& delta, const py::object& A,
                     const py::object& B, const py::object& C, const py::object& D, const py::object& z,
                     const py::object& delta_bias) {
    buffer<T>(u, fn, "u");
    auto u_array = py::reinterpret_borrow<py::array>(u);
    if (u_array.ndim() != 3)
        throw py::value_error(std::string(fn) + ": u must have shape (batch, dim, L), got " +
                              shape_text(u_array) + ".");
    Problem p;
    p.batch = u_array.shape(0);
    p.dim = u_array.shape(1);
    p.length = u_array.shape(2);
    buffer<T>(delta, fn, "delta");
    expect_shape(delta, {p.batch, p.dim, p.length}, fn, "delta", "(u's shape)");
    buffer<T>(A, fn, "A");
    auto a_array = py::reinterpret_borrow<py::array>(A);
    if (a_array.ndim() != 2 || a_array.shape(0) != p.dim)
        throw py::value_error(std::string(fn) + ": A must have shape (dim, N) = (" + std::to_string(p.dim) +
                              ", N), got " + shape_text(a_array) + ".");
    p.state = a_array.shape(1);
    if (p.state < 1) throw py::value_error(std::string(fn) + ": A must have N >= 1 state columns, got 0.");
    for (const char* name : {"B", "C"}) {
        const py::object& bc = name[0] == 'B' ? B : C;
        buffer<T>(bc, fn, name);
        auto array = py::reinterpret_borrow<py::array>(bc);
        const bool grouped = array.ndim() == 4;
        int64_t groups = grouped ? array.shape(1) : 1;
        const bool ok = (array.ndim() == 3 && array.shape(0) == p.batch && array.shape(1) == p.state &&
                         array.shape(2) == p.length) ||
                        (grouped && array.shape(0) == p.batch && array.shape(2) == p.state &&
                         array.shape(3) == p.length && groups >= 1);
        if (!ok)
            throw py::value_error(std::string(fn) + ": " + name + " must have shape (batch, N, L) = (" +
                                  std::to_string(p.batch) + ", " + std::to_string(p.state) + ", " +
                                  std::to_string(p.length) + ") or (batch, groups, N, L), got " +
                                  shape_text(array) + ".");
        if (p.dim % groups != 0)
            throw py::value_error(std::string(fn) + ": " + name + " has " + std::to_string(groups) +
                                  " groups, which does not divide dim = " + std::to_string(p.dim) + ".");
        (name[0] == 'B' ? p.groups_B : p.groups_C) = groups;
        (name[0] == 'B' ? p.b_grouped : p.c_grouped) = grouped;
    }
    if (optional_buffer<T>(D, fn, "D")) expect_shape(D, {p.dim}, fn, "D", "(dim,)");
    if (optional_buffer<T>(z, fn, "z")) expect_shape(z, {p.batch, p.dim, p.length}, fn, "z", "(u's shape)");
    if (optional_buffer<T>(delta_bias, fn, "delta_bias"))
        expect_shape(delta_bias, {p.dim}, fn, "delta_bias", "(dim,)");
    return p;
}

// Threads for a problem: as asked (0: one per hardware thread), but no more than one per kMinWorkPerThread
// state updates, so that small problems do not pay more to start threads than the scan costs. The split of
// the work into tasks does not depend on this number, so neither do the results.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 17;

int resolve_threads(int num_threads, const Problem& p) {
    if (num_threads < 0) throw py::value_error("num_threads must be >= 0 (0: one per hardware thread).");
    const int64_t work = p.batch * p.dim * p.length * p.state;
    const int asked = num_threads == 0 ? default_threads() : num_threads;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(asked, work / kMinWorkPerThread)));
}

template <class T>
py::array_t<T> new_array(std::vector<py::ssize_t> shape) {
    return py::array_t<T>(shape);
}

// ---------------------------------------------------------------------------------------------------------
// Kernels (run without the GIL on raw pointers).

template <class T>
struct Inputs {
    Problem p;
    const T* u;
    const T* delta;
    const T* A;
    const T* Bt;  // (batch, groups_B, L, N): B transposed
    const T* Ct;  // (batch, groups_C, L, N): C transposed
    const T* D;           // nullable
    const T* z;           // nullable
    const T* delta_bias;  // nullable
    bool softplus;
};

// The validated input buffers of one call; Bt/Ct are filled by the caller once B and C are transposed.
template <class T>
Inputs<T> gather_inputs(const Problem& p, const py::object& u, const py::object& delta, const py::object& A,
                        const py::object& D, const py::object& z, const py::object& delta_bias, bool delta_softplus,
                        const char* fn) {
    return Inputs<T>{p,
                     buffer<T>(u, fn, "u"),
                     buffer<T>(delta, fn, "delta"),
                     buffer<T>(A, fn, "A"),
                     nullptr,
                     nullptr,
                     optional_buffer<T>(D, fn, "D"),
                     optional_buffer<T>(z, fn, "z"),
                     optional_buffer<T>(delta_bias, fn, "delta_bias"),
                     delta_softplus};
}

// (batch, groups, N, L) -> (batch, groups, L, N), in tiles so both sides stay in cache.
template <class T>
void transpose_state_time(const T* src, T* dst, int64_t groups, const Problem& p, int threads) {
    const int64_t N = p.state, L = p.length;
    parallel_for(p.batch * groups, threads, [&](int64_t bg, int) {
        const T* s = src + bg * N * L;
        T* d = dst + bg * N * L;
        constexpr int64_t tile = 32;
        for (int64_t t0 = 0; t0 < L; t0 += tile)
            for (int64_t n0 = 0; n0 < N; n0 += tile)
                for (int64_t n = n0; n < std::min(N, n0 + tile); ++n)
                    for (int64_t t = t0; t < std::min(L, t0 + tile); ++t) d[t * N + n] = s[n * L + t];
    });
}

// N per-state terms to be summed. When N is a compile-time multiple of the SIMD width they live in a local
// array summed by horizontal_sum; otherwise in a scratch buffer summed by an `omp simd` reduction.
template <class T, int64_t kN,
          bool kRegisters = (std::is_same<T, float>::value && kN > 0 && kN % kSimdWidth == 0)>
struct StateVector {
    alignas(64) T values[kN];
    explicit StateVector(T*) {}
    T& operator[](int64_t n) { return values[n]; }
    T sum(int64_t) const { return horizontal_sum(values, kN); }
};

template <class T, int64_t kN>
struct StateVector<T, kN, false> {
    T* values;
    explicit StateVector(T* scratch) : values(scratch) {}
    T& operator[](int64_t n) { return values[n]; }
    T sum(int64_t N) const {
        T total = T(0);
#pragma omp simd reduction(+ : total)
        for (int64_t n = 0; n < N; ++n) total += values[n];
        return total;
    }
};

// Effective Δ and Δ·u for steps [t0, t0 + len) of one row.
template <class T>
inline void chunk_delta(const Inputs<T>& in, int64_t row_offset, int64_t t0, int64_t len, T bias,
                        T* delta_eff, T* delta_u) {
    const T* delta_row = in.delta + row_offset + t0;
    const T* u_row = in.u + row_offset + t0;
    if (in.softplus) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) delta_eff[i] = softplus_of(delta_row[i] + bias);
    } else {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) delta_eff[i] = delta_row[i] + bias;
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) delta_u[i] = delta_eff[i] * u_row[i];
}

template <class T>
struct ForwardScratch {
    std::vector<T> delta_eff, delta_u, y, h, terms;
    explicit ForwardScratch(int64_t N) : delta_eff(kChunk), delta_u(kChunk), y(kChunk), h(N), terms(N) {}
};

template <class T, int64_t kN>
void forward_row(const Inputs<T>& in, int64_t b, int64_t d, ForwardScratch<T>& s, T* out, T* last_state,
                 T* checkpoints) {
    const Problem& p = in.p;
    const int64_t N = kN > 0 ? kN : p.state, L = p.length;  // kN > 0: N known at compile time
    const int64_t row_offset = (b * p.dim + d) * L;
    const T* A_row = in.A + d * N;
    const T* Bt = in.Bt + (b * p.groups_B + d / (p.dim / p.groups_B)) * L * N;
    const T* Ct = in.Ct + (b * p.groups_C + d / (p.dim / p.groups_C)) * L * N;
    const T bias = in.delta_bias ? in.delta_bias[d] : T(0);
    const T D = in.D ? in.D[d] : T(0);
    T* h = s.h.data();
    std::fill(h, h + N, T(0));
    for (int64_t chunk = 0; chunk < p.n_chunks(); ++chunk) {
        const int64_t t0 = chunk * kChunk, len = std::min(kChunk, L - t0);
        chunk_delta(in, row_offset, t0, len, bias, s.delta_eff.data(), s.delta_u.data());
        for (int64_t i = 0; i < len; ++i) {
            const T dt = s.delta_eff[i], du = s.delta_u[i];
            const T* B_t = Bt + (t0 + i) * N;
            const T* C_t = Ct + (t0 + i) * N;
            StateVector<T, kN> terms(s.terms.data());
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) {
                const T h_n = exp_of(dt * A_row[n]) * h[n] + du * B_t[n];
                h[n] = h_n;
                terms[n] = C_t[n] * h_n;
            }
            s.y[i] = terms.sum(N);
        }
        const T* u_row = in.u + row_offset + t0;
        T* out_row = out + row_offset + t0;
        if (in.z) {
            const T* z_row = in.z + row_offset + t0;
#pragma omp simd
            for (int64_t i = 0; i < len; ++i)
                out_row[i] = (s.y[i] + D * u_row[i]) * (z_row[i] * sigmoid_of(z_row[i]));
        } else {
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) out_row[i] = s.y[i] + D * u_row[i];
        }
        if (chunk + 1 < p.n_chunks())
            std::copy(h, h + N, checkpoints + ((b * p.dim + d) * p.n_checkpoints() + chunk) * N);
    }
    std::copy(h, h + N, last_state + (b * p.dim + d) * N);
}

template <class T>
struct BackwardScratch {
    std::vector<T> delta_eff, delta_u, delta_grad_scale, y, dy, decay, states, carry, dA, zeros, terms, terms2;
    explicit BackwardScratch(int64_t N)
        : delta_eff(kChunk), delta_u(kChunk), delta_grad_scale(kChunk), y(kChunk), dy(kChunk),
          decay(kChunk * N), states(kChunk * N), carry(N), dA(N), zeros(N, T(0)), terms(N), terms2(N) {}
};

template <class T>
struct Grads {
    T* du;
    T* ddelta;
    T* dz;            // nullable
    T* dB_partial;    // (batch, segments, blocks, L, N)
    T* dC_partial;    // (batch, segments, blocks, L, N)
    T* dA_partial;    // (batch, dim, N)
    T* dD_partial;    // (batch, dim)
    T* dbias_partial; // (batch, dim)
};

// Adds row (b, d)'s share of dB, dC into dB_t, dC_t ((L, N) partial sums of its block) and writes the rest.
template <class T, int64_t kN>
void backward_row(const Inputs<T>& in, const T* dout, const T* checkpoints, int64_t b, int64_t d,
                  BackwardScratch<T>& s, const Grads<T>& g, T* dB_t, T* dC_t) {
    const Problem& p = in.p;
    const int64_t N = kN > 0 ? kN : p.state, L = p.length;  // kN > 0: N known at compile time
    const int64_t row = b * p.dim + d;
    const int64_t row_offset = row * L;
    const T* A_row = in.A + d * N;
    const T* Bt = in.Bt + (b * p.groups_B + d / (p.dim / p.groups_B)) * L * N;
    const T* Ct = in.Ct + (b * p.groups_C + d / (p.dim / p.groups_C)) * L * N;
    const T bias = in.delta_bias ? in.delta_bias[d] : T(0);
    const T D = in.D ? in.D[d] : T(0);
    T* carry = s.carry.data();  // exp(Δ_{t+1} A) ⊙ g_{t+1}
    T* dA = s.dA.data();
    std::fill(carry, carry + N, T(0));
    std::fill(dA, dA + N, T(0));
    T dD = T(0), dbias = T(0);
    for (int64_t chunk = p.n_chunks() - 1; chunk >= 0; --chunk) {
        const int64_t t0 = chunk * kChunk, len = std::min(kChunk, L - t0);
        const T* u_row = in.u + row_offset + t0;
        const T* dout_row = dout + row_offset + t0;
        chunk_delta(in, row_offset, t0, len, bias, s.delta_eff.data(), s.delta_u.data());
        if (in.softplus) {
            const T* delta_row = in.delta + row_offset + t0;
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) s.delta_grad_scale[i] = softplus_grad_of(delta_row[i] + bias);
        }
        // Recompute this chunk's decays and states from the checkpoint before it.
        const T* h_start =
            chunk == 0 ? s.zeros.data() : checkpoints + (row * p.n_checkpoints() + chunk - 1) * N;
        const T* h_prev = h_start;
        for (int64_t i = 0; i < len; ++i) {
            const T dt = s.delta_eff[i], du = s.delta_u[i];
            const T* B_t = Bt + (t0 + i) * N;
            const T* C_t = Ct + (t0 + i) * N;
            T* decay = s.decay.data() + i * N;
            T* h = s.states.data() + i * N;
            StateVector<T, kN> terms(s.terms.data());
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) {
                const T a = exp_of(dt * A_row[n]);
                const T h_n = a * h_prev[n] + du * B_t[n];
                decay[n] = a;
                h[n] = h_n;
                terms[n] = C_t[n] * h_n;
            }
            s.y[i] = in.z ? terms.sum(N) : T(0);
            h_prev = h;
        }
        // Gradient at y (before the gate) and the gate's own gradient.
        if (in.z) {
            const T* z_row = in.z + row_offset + t0;
            T* dz_row = g.dz + row_offset + t0;
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) {
                const T zi = z_row[i], sig = sigmoid_of(zi);
                const T y_full = s.y[i] + D * u_row[i];
                dz_row[i] = dout_row[i] * y_full * (sig * (T(1) + zi * (T(1) - sig)));
                s.dy[i] = dout_row[i] * (zi * sig);
            }
        } else {
            std::copy(dout_row, dout_row + len, s.dy.data());
        }
        T* du_row = g.du + row_offset + t0;
        T* ddelta_row = g.ddelta + row_offset + t0;
        for (int64_t i = len - 1; i >= 0; --i) {
            const T dt = s.delta_eff[i], du = s.delta_u[i], dy = s.dy[i];
            const T* B_t = Bt + (t0 + i) * N;
            const T* C_t = Ct + (t0 + i) * N;
            const T* decay = s.decay.data() + i * N;
            const T* h = s.states.data() + i * N;
            const T* h_before = i == 0 ? h_start : h - N;
            T* dB_row = dB_t + (t0 + i) * N;
            T* dC_row = dC_t + (t0 + i) * N;
            StateVector<T, kN> g_B(s.terms.data()), decay_terms(s.terms2.data());
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) {
                const T g_n = carry[n] + dy * C_t[n];
                const T x = g_n * decay[n] * h_before[n];
                g_B[n] = g_n * B_t[n];
                decay_terms[n] = x * A_row[n];
                dA[n] += dt * x;
                dB_row[n] += g_n * du;
                dC_row[n] += dy * h[n];
                carry[n] = g_n * decay[n];
            }
            const T g_dot_B = g_B.sum(N), decay_term = decay_terms.sum(N);
            du_row[i] = D * dy + dt * g_dot_B;
            T ddelta = u_row[i] * g_dot_B + decay_term;
            if (in.softplus) ddelta *= s.delta_grad_scale[i];
            ddelta_row[i] = ddelta;
        }
        // Sums over t in a fixed order (forward in t), independent of how the loop above was unrolled.
        for (int64_t i = 0; i < len; ++i) {
            dD += s.dy[i] * u_row[i];
            dbias += ddelta_row[i];
        }
    }
    std::copy(dA, dA + N, g.dA_partial + row * N);
    g.dD_partial[row] = dD;
    g.dbias_partial[row] = dbias;
}

// Calls body(std::integral_constant<int64_t, N>) for the common state sizes, whose loops over N then unroll
// into whole registers, else body(std::integral_constant<int64_t, 0>) (N read at run time). The float64
// build exists for gradchecks and stays generic.
template <class T, class Body>
void dispatch_state_size(int64_t N, const Body& body) {
    if constexpr (std::is_same<T, float>::value) {
        switch (N) {
            case 8: return body(std::integral_constant<int64_t, 8>{});
            case 16: return body(std::integral_constant<int64_t, 16>{});
            case 32: return body(std::integral_constant<int64_t, 32>{});
            case 64: return body(std::integral_constant<int64_t, 64>{});
            default: break;
        }
    }
    body(std::integral_constant<int64_t, 0>{});
}

// How many channel blocks each (b, segment) is split into for the backward: a function of the shape only.
int64_t backward_blocks(const Problem& p) {
    const int64_t outer = p.batch * p.segments();
    const int64_t wanted = (kTargetBackwardTasks + outer - 1) / std::max<int64_t>(1, outer);
    return std::max<int64_t>(1, std::min(p.segment_size(), wanted));
}

// Sums the (L, N) partials of every block of every segment in a group, in channel order, into that group's
// (N, L) gradient; ``groups`` is groups_B or groups_C.
template <class T>
void reduce_state_time(const T* partial, T* out, int64_t groups, const Problem& p, int64_t blocks,
                       int threads) {
    const int64_t N = p.state, L = p.length;
    const int64_t parts = p.segments() / groups * blocks;  // consecutive partials summed into one group
    constexpr int64_t tile = 64;
    const int64_t t_tiles = (L + tile - 1) / tile;
    parallel_for(p.batch * groups * t_tiles, threads, [&](int64_t task, int) {
        const int64_t bg = task / t_tiles, t0 = (task % t_tiles) * tile, len = std::min(tile, L - t0);
        std::vector<T> sum(tile * N, T(0));
        for (int64_t part = 0; part < parts; ++part) {
            const T* src = partial + ((bg * parts + part) * L + t0) * N;
            for (int64_t j = 0; j < len * N; ++j) sum[j] += src[j];
        }
        T* dst = out + bg * N * L;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < len; ++i) dst[n * L + t0 + i] = sum[i * N + n];
    });
}

// ---------------------------------------------------------------------------------------------------------
// Python entry points.

template <class T>
py::tuple forward_impl(const py::object& u, const py::object& delta, const py::object& A,
                             const py::object& B, const py::object& C, const py::object& D,
                             const py::object& z, const py::object& delta_bias, bool delta_softplus,
                             int num_threads, const char* fn) {
        const Problem p = check_inputs<T>(fn, u, delta, A, B, C, D, z, delta_bias);
    const int threads = resolve_threads(num_threads, p);
    auto out = new_array<T>({p.batch, p.dim, p.length});
    auto last_state = new_array<T>({p.batch, p.dim, p.state});
    auto checkpoints = new_array<T>({p.batch, p.dim, p.n_checkpoints(), p.state});
    Inputs<T> in = gather_inputs<T>(p, u, delta, A, D, z, delta_bias, delta_softplus, fn);
    const T* B_data = buffer<T>(B, fn, "B");
    const T* C_data = buffer<T>(C, fn, "C");
    T* out_data = out.mutable_data();
    T* last_data = last_state.mutable_data();
    T* checkpoint_data = checkpoints.mutable_data();
    {
        py::gil_scoped_release release;
        std::vector<T> Bt(static_cast<size_t>(p.batch * p.groups_B * p.length * p.state));
        std::vector<T> Ct(static_cast<size_t>(p.batch * p.groups_C * p.length * p.state));
        transpose_state_time(B_data, Bt.data(), p.groups_B, p, threads);
        transpose_state_time(C_data, Ct.data(), p.groups_C, p, threads);
        in.Bt = Bt.data();
        in.Ct = Ct.data();
        std::vector<ForwardScratch<T>> scratch(static_cast<size_t>(threads), ForwardScratch<T>(p.state));
        dispatch_state_size<T>(p.state, [&](auto n_fixed) {
            parallel_for(p.batch * p.dim, threads, [&](int64_t row, int worker) {
                forward_row<T, decltype(n_fixed)::value>(in, row / p.dim, row % p.dim, scratch[worker], out_data,
                                                     last_data, checkpoint_data);
            });
        });
    }
    return py::make_tuple(out, last_state, checkpoints);
}

template <class T>
py::tuple backward_impl(const py::object& dout, const py::object& u, const py::object& delta,
                             const py::object& A, const py::object& B, const py::object& C,
                             const py::object& checkpoints, const py::object& D, const py::object& z,
                             const py::object& delta_bias, bool delta_softplus, int num_threads,
                             const char* fn) {
        const Problem p = check_inputs<T>(fn, u, delta, A, B, C, D, z, delta_bias);
    const int threads = resolve_threads(num_threads, p);
    const T* dout_data = buffer<T>(dout, fn, "dout");
    expect_shape(dout, {p.batch, p.dim, p.length}, fn, "dout", "(u's shape)");
    const T* checkpoint_data = buffer<T>(checkpoints, fn, "checkpoints");
    expect_shape(checkpoints, {p.batch, p.dim, p.n_checkpoints(), p.state}, fn, "checkpoints",
                 "(as returned by selective_scan_fwd for these inputs)");
    auto du = new_array<T>({p.batch, p.dim, p.length});
    auto ddelta = new_array<T>({p.batch, p.dim, p.length});
    auto dA = new_array<T>({p.dim, p.state});
    std::vector<py::ssize_t> b_shape = {p.batch, p.state, p.length}, c_shape = b_shape;
    if (p.b_grouped) b_shape = {p.batch, p.groups_B, p.state, p.length};
    if (p.c_grouped) c_shape = {p.batch, p.groups_C, p.state, p.length};
    auto dB = new_array<T>(b_shape);
    auto dC = new_array<T>(c_shape);
    auto dD = new_array<T>({p.dim});
    auto dbias = new_array<T>({p.dim});
    py::object dz = py::none();
    Inputs<T> in = gather_inputs<T>(p, u, delta, A, D, z, delta_bias, delta_softplus, fn);
    Grads<T> g{du.mutable_data(), ddelta.mutable_data(), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    if (in.z) {
        auto dz_array = new_array<T>({p.batch, p.dim, p.length});
        g.dz = dz_array.mutable_data();
        dz = dz_array;
    }
    const T* B_data = buffer<T>(B, fn, "B");
    const T* C_data = buffer<T>(C, fn, "C");
    T* dA_data = dA.mutable_data();
    T* dB_data = dB.mutable_data();
    T* dC_data = dC.mutable_data();
    T* dD_data = dD.mutable_data();
    T* dbias_data = dbias.mutable_data();
    {
        py::gil_scoped_release release;
        const int64_t N = p.state, L = p.length;
        std::vector<T> Bt(static_cast<size_t>(p.batch * p.groups_B * L * N));
        std::vector<T> Ct(static_cast<size_t>(p.batch * p.groups_C * L * N));
        transpose_state_time(B_data, Bt.data(), p.groups_B, p, threads);
        transpose_state_time(C_data, Ct.data(), p.groups_C, p, threads);
        in.Bt = Bt.data();
        in.Ct = Ct.data();
        const int64_t blocks = backward_blocks(p);
        const int64_t segment = p.segment_size(), block_rows = (segment + blocks - 1) / blocks;
        std::vector<T> dB_partial(static_cast<size_t>(p.batch * p.segments() * blocks * L * N), T(0));
        std::vector<T> dC_partial(dB_partial.size(), T(0));
        std::vector<T> dA_partial(static_cast<size_t>(p.batch * p.dim * N));
        std::vector<T> dD_partial(static_cast<size_t>(p.batch * p.dim));
        std::vector<T> dbias_partial(dD_partial.size());
        g.dB_partial = dB_partial.data();
        g.dC_partial = dC_partial.data();
        g.dA_partial = dA_partial.data();
        g.dD_partial = dD_partial.data();
        g.dbias_partial = dbias_partial.data();
        std::vector<BackwardScratch<T>> scratch(static_cast<size_t>(threads), BackwardScratch<T>(N));
        const int64_t tasks_per_batch = p.segments() * blocks;
        dispatch_state_size<T>(N, [&](auto n_fixed) {
            // task = (b, segment, block) in row-major order, which is also the order of the partial buffers.
            parallel_for(p.batch * tasks_per_batch, threads, [&](int64_t task, int worker) {
                const int64_t b = task / tasks_per_batch, seg = task % tasks_per_batch / blocks;
                const int64_t first = seg * segment + task % blocks * block_rows;
                const int64_t last = std::min(first + block_rows, (seg + 1) * segment);
                T* dB_t = g.dB_partial + task * L * N;
                T* dC_t = g.dC_partial + task * L * N;
                for (int64_t d = first; d < last; ++d)
                    backward_row<T, decltype(n_fixed)::value>(in, dout_data, checkpoint_data, b, d, scratch[worker],
                                                           g, dB_t, dC_t);
            });
        });
        reduce_state_time(g.dB_partial, dB_data, p.groups_B, p, blocks, threads);
        reduce_state_time(g.dC_partial, dC_data, p.groups_C, p, blocks, threads);
        // Sums over the batch, in batch order.
        for (int64_t d = 0; d < p.dim; ++d) {
            T dD_sum = T(0), dbias_sum = T(0);
            for (int64_t n = 0; n < N; ++n) dA_data[d * N + n] = T(0);
            for (int64_t b = 0; b < p.batch; ++b) {
                const int64_t row = b * p.dim + d;
                for (int64_t n = 0; n < N; ++n) dA_data[d * N + n] += dA_partial[row * N + n];
                dD_sum += dD_partial[row];
                dbias_sum += dbias_partial[row];
            }
            dD_data[d] = dD_sum;
            dbias_data[d] = dbias_sum;
        }
    }
    return py::make_tuple(du, ddelta, dA, dB, dC, in.D ? py::object(dD) : py::object(py::none()),
                          in.delta_bias ? py::object(dbias) : py::object(py::none()), dz);
}

py::tuple selective_scan_fwd(const py::object& u, const py::object& delta, const py::object& A,
                             const py::object& B, const py::object& C, const py::object& D,
                             const py::object& z, const py::object& delta_bias, bool delta_softplus,
                             int num_threads) {
    const char* fn = "selective_scan_fwd";
    return is_float64(u) ? forward_impl<double>(u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_threads, fn)
                         : forward_impl<float>(u, delta, A, B, C, D, z, delta_bias, delta_softplus, num_threads, fn);
}

py::tuple selective_scan_bwd(const py::object& dout, const py::object& u, const py::object& delta,
                             const py::object& A, const py::object& B, const py::object& C,
                             const py::object& checkpoints, const py::object& D, const py::object& z,
                             const py::object& delta_bias, bool delta_softplus, int num_threads) {
    const char* fn = "selective_scan_bwd";
    return is_float64(u) ? backward_impl<double>(dout, u, delta, A, B, C, checkpoints, D, z, delta_bias,
                                                 delta_softplus, num_threads, fn)
                         : backward_impl<float>(dout, u, delta, A, B, C, checkpoints, D, z, delta_bias,
                                                delta_softplus, num_threads, fn);
}

}  // namespace

void register_selective_scan(py::module_& m) {
    m.attr("selective_scan_chunk") = kChunk;
    m.def("selective_scan_fwd", &selective_scan_fwd, py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
          py::arg("C"), py::arg("D") = py::none(), py::arg("z") = py::none(), py::arg("delta_bias") = py::none(),
          py::arg("delta_softplus") = false, py::arg("num_threads") = 0,
          "Selective scan forward on C-contiguous float32 arrays (float64 too, for gradchecks; all arrays share u's "
          "dtype) (SPEC 6.2). u, delta, z: (batch, dim, L); "
          "A: (dim, N); B, C: (batch, N, L) or (batch, groups, N, L); D, delta_bias: (dim,).\n"
          "Returns (out (batch, dim, L), last_state (batch, dim, N), checkpoints) where checkpoints "
          "(batch, dim, ceil(L/selective_scan_chunk) - 1, N) is what selective_scan_bwd needs. "
          "num_threads=0 uses one thread per hardware thread; results do not depend on it.");
    m.def("selective_scan_bwd", &selective_scan_bwd, py::arg("dout"), py::arg("u"), py::arg("delta"), py::arg("A"),
          py::arg("B"), py::arg("C"), py::arg("checkpoints"), py::arg("D") = py::none(), py::arg("z") = py::none(),
          py::arg("delta_bias") = py::none(), py::arg("delta_softplus") = false, py::arg("num_threads") = 0,
          "Selective scan backward: the gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias, dz) of "
          "sum(dout * out) for the inputs of selective_scan_fwd, in u's dtype, None where the input was None; "
          "dB, dC have B's and C's shapes. Deterministic: the bits depend on neither num_threads nor scheduling.");
}

}  // namespace retailsim
