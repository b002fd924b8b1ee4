// CPU selective scan (SPEC 6.2, 8): forward and backward of mamba_ssm's selective_scan_fn on float32 buffers
// (and float64 ones: the same code on libm math, so that the hand-written backward can be gradchecked).
//
//   Δ_t   = softplus(delta_t + delta_bias)  (or delta_t + delta_bias)
//   h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t          h ∈ R^N per (batch b, channel d), h_{-1} = 0
//   y_t   = C_t · h_t + D u_t,   out_t = y_t · silu(z_t)  (when z is given)
//
// Layout: u, delta, z, out (batch, dim, L); A (dim, N); B, C (batch, groups, N, L) with channel d reading
// group d / (dim / groups) (B and C may have different group counts; (batch, N, L) is one group).
// u, delta, z, dout, B and C are read through their strides, so transposed or sliced views (the model's u, z
// and Δ are transposed (batch, L, dim) matmul outputs) need no copy. Each output of shape
// (batch, dim, L) takes the layout of the input it belongs to (out and du u's, ddelta delta's, dz z's): a
// time-major input ((batch, L, dim) in memory) gets a time-major output, which the model's next matmul reads
// without a copy. Channels are processed kRowBlock at a time, chunk by chunk: the chunk's (kRowBlock, kChunk)
// tiles of u, Δ, z (and dout) are copied in the array's own memory order into scratch, where every channel's
// steps are contiguous, and the results leave through tiles the same way. Forward tasks are such blocks, so
// forward threads write disjoint 16-channel column blocks of a time-major output (a cache line may still
// straddle two blocks when the array is not 64-byte aligned; backward tasks start where the shape-only split
// of the channels puts them). Sharing a line costs speed only: every element has one writer.
// B and C are first transposed to (batch, groups, L, N) so that every step reads N contiguous floats: the
// loops over N are the SIMD dimension (`omp simd` with scan_math.h's inline exp/log1p, and its horizontal
// sums for the dot products over N; no -ffast-math), the time loop is sequential. N = 8, 16, 32, 64 are
// compiled as constants; other N run the same code with N read at run time.
//
// Forward: one task per (b, block of kRowBlock channels); each channel's state lives in N floats of the
// per-thread scratch. It keeps the state at
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
#include "arrays.h"
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
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace retailsim {
namespace {

using namespace simd;
using pool::default_threads;
using pool::parallel_for;

constexpr int64_t kChunk = 64;  // steps between two checkpoints; also the scratch length of one chunk
constexpr int64_t kTargetBackwardTasks = 64;  // how finely the backward splits channels (shape-only choice)
constexpr int64_t kRowBlock = 16;  // channels per tile (and per forward task): a 64-byte line of time-major floats

// ---------------------------------------------------------------------------------------------------------
// Argument checking: every buffer must be an aligned NumPy array of u's dtype and the expected shape; A, D,
// delta_bias and checkpoints C-contiguous, the others with any non-negative strides.

using arrays::Rows;
using arrays::shape_text;

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

// An aligned NumPy array of T (C-contiguous unless `contiguous` is false): its data, or a clear error.
template <class T>
const T* buffer(const py::handle& object, const char* fn, const char* name, bool contiguous = true) {
    return static_cast<const T*>(arrays::checked<T>(object, fn, name, contiguous, "u").data());
}

// A checked (batch, dim, L) input read through its strides.
template <class T>
Rows<T> rows_of(const py::handle& object, const char* fn, const char* name) {
    return arrays::rows_of<T>(arrays::checked<T>(object, fn, name, false, "u"));
}

template <class T>
Rows<T> optional_rows_of(const py::object& object, const char* fn, const char* name) {
    return object.is_none() ? Rows<T>{} : rows_of<T>(object, fn, name);
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
    buffer<T>(u, fn, "u", false);
    auto u_array = py::reinterpret_borrow<py::array>(u);
    if (u_array.ndim() != 3)
        throw py::value_error(std::string(fn) + ": u must have shape (batch, dim, L), got " +
                              shape_text(u_array) + ".");
    Problem p;
    p.batch = u_array.shape(0);
    p.dim = u_array.shape(1);
    p.length = u_array.shape(2);
    buffer<T>(delta, fn, "delta", false);
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
        buffer<T>(bc, fn, name, false);
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
    if (!z.is_none() && buffer<T>(z, fn, "z", false)) expect_shape(z, {p.batch, p.dim, p.length}, fn, "z", "(u's shape)");
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

// A new (batch, dim, L) output: C-contiguous, or time-major (a transposed view of a (batch, L, dim) array).
template <class T>
std::pair<py::object, Rows<T>> new_rows(const Problem& p, bool time_major) {
    return arrays::new_rows<T>(p.batch, p.dim, p.length, time_major);
}

// B or C, (batch, N, L) or (batch, groups, N, L), read through its strides.
template <class T>
struct StateTime {
    const T* data;
    int64_t groups, sb, sg, sn, st;
};

template <class T>
StateTime<T> state_time_of(const py::object& object, int64_t groups, const char* fn, const char* name) {
    const py::array array = arrays::checked<T>(object, fn, name, false, "u");
    const bool grouped = array.ndim() == 4;
    const py::ssize_t first = grouped ? 2 : 1;
    return StateTime<T>{static_cast<const T*>(array.data()), groups, arrays::element_stride<T>(array, 0),
                        grouped ? arrays::element_stride<T>(array, 1) : 0, arrays::element_stride<T>(array, first),
                        arrays::element_stride<T>(array, first + 1)};
}

// ---------------------------------------------------------------------------------------------------------
// Kernels (run without the GIL on raw pointers).

template <class T>
struct Inputs {
    Problem p;
    Rows<T> u;
    Rows<T> delta;
    const T* A;
    const T* Bt;  // (batch, groups_B, L, N): B transposed
    const T* Ct;  // (batch, groups_C, L, N): C transposed
    const T* D;           // nullable
    Rows<T> z;            // z.data nullable
    const T* delta_bias;  // nullable
    bool softplus;
};

// The validated input buffers of one call; Bt/Ct are filled by the caller once B and C are transposed.
template <class T>
Inputs<T> gather_inputs(const Problem& p, const py::object& u, const py::object& delta, const py::object& A,
                        const py::object& D, const py::object& z, const py::object& delta_bias, bool delta_softplus,
                        const char* fn) {
    return Inputs<T>{p,
                     rows_of<T>(u, fn, "u"),
                     rows_of<T>(delta, fn, "delta"),
                     buffer<T>(A, fn, "A"),
                     nullptr,
                     nullptr,
                     optional_buffer<T>(D, fn, "D"),
                     optional_rows_of<T>(z, fn, "z"),
                     optional_buffer<T>(delta_bias, fn, "delta_bias"),
                     delta_softplus};
}

// (batch, groups, N, L) at any strides -> contiguous (batch, groups, L, N), in tiles so both sides stay in cache.
template <class T>
void transpose_state_time(const StateTime<T>& src, T* dst, const Problem& p, int threads) {
    const int64_t N = p.state, L = p.length;
    parallel_for(p.batch * src.groups, threads, [&](int64_t bg, int) {
        const T* s = src.data + bg / src.groups * src.sb + bg % src.groups * src.sg;
        T* d = dst + bg * N * L;
        constexpr int64_t tile = 32;
        for (int64_t t0 = 0; t0 < L; t0 += tile)
            for (int64_t n0 = 0; n0 < N; n0 += tile)
                for (int64_t n = n0; n < std::min(N, n0 + tile); ++n)
                    for (int64_t t = t0; t < std::min(L, t0 + tile); ++t) d[t * N + n] = s[n * src.sn + t * src.st];
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

// Tiles: steps [t0, t0 + len) of channels d0 .. d0 + nd of batch row b, stored tile[j * kChunk + i]. Loading and
// storing walk the array in its own memory order (channels innermost for a time-major array), so the row
// loops below always run on contiguous scratch whatever the caller's layout.
template <class T>
void load_tile(const Rows<T>& x, int64_t b, int64_t d0, int64_t nd, int64_t t0, int64_t len, T* tile) {
    const T* base = x.row(b, d0) + t0 * x.sl;
    if (x.time_major()) {
        for (int64_t i = 0; i < len; ++i)
            for (int64_t j = 0; j < nd; ++j) tile[j * kChunk + i] = base[i * x.sl + j * x.sd];
    } else {
        for (int64_t j = 0; j < nd; ++j)
            for (int64_t i = 0; i < len; ++i) tile[j * kChunk + i] = base[j * x.sd + i * x.sl];
    }
}

template <class T>
void store_tile(const T* tile, const Rows<T>& x, int64_t b, int64_t d0, int64_t nd, int64_t t0, int64_t len) {
    T* base = x.row(b, d0) + t0 * x.sl;
    if (x.time_major()) {
        for (int64_t i = 0; i < len; ++i)
            for (int64_t j = 0; j < nd; ++j) base[i * x.sl + j * x.sd] = tile[j * kChunk + i];
    } else {
        for (int64_t j = 0; j < nd; ++j)
            for (int64_t i = 0; i < len; ++i) base[j * x.sd + i * x.sl] = tile[j * kChunk + i];
    }
}

// Effective Δ and Δ·u for the len steps of one channel's tile rows.
template <class T>
inline void chunk_delta(const T* delta_row, const T* u_row, int64_t len, T bias, bool softplus, T* delta_eff,
                        T* delta_u) {
    if (softplus) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) delta_eff[i] = softplus_of(delta_row[i] + bias);
    } else {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) delta_eff[i] = delta_row[i] + bias;
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) delta_u[i] = delta_eff[i] * u_row[i];
}

// What channel d of batch row b reads besides its tiles: its row of A, the (L, N) slices of the transposed B and
// C groups it belongs to, its Δ bias and D.
template <class T>
struct Channel {
    const T* A_row;
    const T* Bt;
    const T* Ct;
    T bias, D;
    Channel(const Inputs<T>& in, int64_t b, int64_t d, int64_t N)
        : A_row(in.A + d * N),
          Bt(in.Bt + (b * in.p.groups_B + d / (in.p.dim / in.p.groups_B)) * in.p.length * N),
          Ct(in.Ct + (b * in.p.groups_C + d / (in.p.dim / in.p.groups_C)) * in.p.length * N),
          bias(in.delta_bias ? in.delta_bias[d] : T(0)),
          D(in.D ? in.D[d] : T(0)) {}
};

template <class T>
struct ForwardScratch {
    std::vector<T> u, delta, z, out;  // tiles (kRowBlock, kChunk)
    std::vector<T> delta_eff, delta_u, y, h, terms;
    explicit ForwardScratch(int64_t N)
        : u(kRowBlock * kChunk), delta(kRowBlock * kChunk), z(kRowBlock * kChunk), out(kRowBlock * kChunk),
          delta_eff(kChunk), delta_u(kChunk), y(kChunk), h(kRowBlock * N), terms(N) {}
};

// Channels d0 .. d0 + nd (nd <= kRowBlock) of batch row b, chunk by chunk; each channel's state h stays in
// the scratch between chunks.
template <class T, int64_t kN>
void forward_block(const Inputs<T>& in, int64_t b, int64_t d0, int64_t nd, ForwardScratch<T>& s,
                   const Rows<T>& out, T* last_state, T* checkpoints) {
    const Problem& p = in.p;
    const int64_t N = kN > 0 ? kN : p.state, L = p.length;  // kN > 0: N known at compile time
    std::fill(s.h.begin(), s.h.begin() + nd * N, T(0));
    for (int64_t chunk = 0; chunk < p.n_chunks(); ++chunk) {
        const int64_t t0 = chunk * kChunk, len = std::min(kChunk, L - t0);
        load_tile(in.u, b, d0, nd, t0, len, s.u.data());
        load_tile(in.delta, b, d0, nd, t0, len, s.delta.data());
        if (in.z.data) load_tile(in.z, b, d0, nd, t0, len, s.z.data());
        for (int64_t j = 0; j < nd; ++j) {
            const int64_t d = d0 + j;
            const Channel<T> c(in, b, d, N);
            const T *A_row = c.A_row, *Bt = c.Bt, *Ct = c.Ct;
            const T bias = c.bias, D = c.D;
            const T* u_row = s.u.data() + j * kChunk;
            T* h = s.h.data() + j * N;
            chunk_delta(s.delta.data() + j * kChunk, u_row, len, bias, in.softplus, s.delta_eff.data(),
                        s.delta_u.data());
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
            T* out_row = s.out.data() + j * kChunk;
            if (in.z.data) {
                const T* z_row = s.z.data() + j * kChunk;
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
        store_tile(s.out.data(), out, b, d0, nd, t0, len);
    }
    for (int64_t j = 0; j < nd; ++j)
        std::copy(s.h.data() + j * N, s.h.data() + (j + 1) * N, last_state + (b * p.dim + d0 + j) * N);
}

template <class T>
struct BackwardScratch {
    std::vector<T> u, delta, z, dout, du, ddelta, dz;  // tiles (kRowBlock, kChunk)
    std::vector<T> delta_eff, delta_u, delta_grad_scale, y, dy, decay, states, carry, dA, dD, dbias, zeros, terms,
        terms2;
    explicit BackwardScratch(int64_t N)
        : u(kRowBlock * kChunk), delta(kRowBlock * kChunk), z(kRowBlock * kChunk), dout(kRowBlock * kChunk),
          du(kRowBlock * kChunk), ddelta(kRowBlock * kChunk), dz(kRowBlock * kChunk), delta_eff(kChunk),
          delta_u(kChunk), delta_grad_scale(kChunk), y(kChunk), dy(kChunk), decay(kChunk * N), states(kChunk * N),
          carry(kRowBlock * N), dA(kRowBlock * N), dD(kRowBlock), dbias(kRowBlock), zeros(N, T(0)), terms(N),
          terms2(N) {}
};

template <class T>
struct Grads {
    Rows<T> du;       // u's layout
    Rows<T> ddelta;   // delta's layout
    Rows<T> dz;       // z's layout; data nullable
    T* dB_partial;    // (batch, segments, blocks, L, N)
    T* dC_partial;    // (batch, segments, blocks, L, N)
    T* dA_partial;    // (batch, dim, N)
    T* dD_partial;    // (batch, dim)
    T* dbias_partial; // (batch, dim)
};

// Channels d0 .. d0 + nd (nd <= kRowBlock) of batch row b: adds their share of dB, dC into dB_t, dC_t ((L, N)
// partial sums of the task's block, channels added in ascending order at every step) and writes the rest.
template <class T, int64_t kN>
void backward_block(const Inputs<T>& in, const Rows<T>& dout, const T* checkpoints, int64_t b, int64_t d0,
                    int64_t nd, BackwardScratch<T>& s, const Grads<T>& g, T* dB_t, T* dC_t) {
    const Problem& p = in.p;
    const int64_t N = kN > 0 ? kN : p.state, L = p.length;  // kN > 0: N known at compile time
    std::fill(s.carry.begin(), s.carry.begin() + nd * N, T(0));  // exp(Δ_{t+1} A) ⊙ g_{t+1}, per channel
    std::fill(s.dA.begin(), s.dA.begin() + nd * N, T(0));
    std::fill(s.dD.begin(), s.dD.end(), T(0));
    std::fill(s.dbias.begin(), s.dbias.end(), T(0));
    for (int64_t chunk = p.n_chunks() - 1; chunk >= 0; --chunk) {
        const int64_t t0 = chunk * kChunk, len = std::min(kChunk, L - t0);
        load_tile(in.u, b, d0, nd, t0, len, s.u.data());
        load_tile(in.delta, b, d0, nd, t0, len, s.delta.data());
        load_tile(dout, b, d0, nd, t0, len, s.dout.data());
        if (in.z.data) load_tile(in.z, b, d0, nd, t0, len, s.z.data());
        for (int64_t j = 0; j < nd; ++j) {
            const int64_t d = d0 + j, row = b * p.dim + d;
            const Channel<T> c(in, b, d, N);
            const T *A_row = c.A_row, *Bt = c.Bt, *Ct = c.Ct;
            const T bias = c.bias, D = c.D;
            const T* u_row = s.u.data() + j * kChunk;
            const T* delta_row = s.delta.data() + j * kChunk;
            const T* dout_row = s.dout.data() + j * kChunk;
            T* carry = s.carry.data() + j * N;
            T* dA = s.dA.data() + j * N;
            chunk_delta(delta_row, u_row, len, bias, in.softplus, s.delta_eff.data(), s.delta_u.data());
            if (in.softplus) {
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
                s.y[i] = in.z.data ? terms.sum(N) : T(0);
                h_prev = h;
            }
            // Gradient at y (before the gate) and the gate's own gradient.
            if (in.z.data) {
                const T* z_row = s.z.data() + j * kChunk;
                T* dz_row = s.dz.data() + j * kChunk;
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
            T* du_row = s.du.data() + j * kChunk;
            T* ddelta_row = s.ddelta.data() + j * kChunk;
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
                s.dD[j] += s.dy[i] * u_row[i];
                s.dbias[j] += ddelta_row[i];
            }
        }
        store_tile(s.du.data(), g.du, b, d0, nd, t0, len);
        store_tile(s.ddelta.data(), g.ddelta, b, d0, nd, t0, len);
        if (in.z.data) store_tile(s.dz.data(), g.dz, b, d0, nd, t0, len);
    }
    for (int64_t j = 0; j < nd; ++j) {
        const int64_t row = b * p.dim + d0 + j;
        std::copy(s.dA.data() + j * N, s.dA.data() + (j + 1) * N, g.dA_partial + row * N);
        g.dD_partial[row] = s.dD[j];
        g.dbias_partial[row] = s.dbias[j];
    }
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
    Inputs<T> in = gather_inputs<T>(p, u, delta, A, D, z, delta_bias, delta_softplus, fn);
    auto [out, out_rows] = new_rows<T>(p, in.u.time_major());
    auto last_state = new_array<T>({p.batch, p.dim, p.state});
    auto checkpoints = new_array<T>({p.batch, p.dim, p.n_checkpoints(), p.state});
    const StateTime<T> B_src = state_time_of<T>(B, p.groups_B, fn, "B");
    const StateTime<T> C_src = state_time_of<T>(C, p.groups_C, fn, "C");
    T* last_data = last_state.mutable_data();
    T* checkpoint_data = checkpoints.mutable_data();
    {
        py::gil_scoped_release release;
        std::vector<T> Bt(static_cast<size_t>(p.batch * p.groups_B * p.length * p.state));
        std::vector<T> Ct(static_cast<size_t>(p.batch * p.groups_C * p.length * p.state));
        transpose_state_time(B_src, Bt.data(), p, threads);
        transpose_state_time(C_src, Ct.data(), p, threads);
        in.Bt = Bt.data();
        in.Ct = Ct.data();
        std::vector<ForwardScratch<T>> scratch(static_cast<size_t>(threads), ForwardScratch<T>(p.state));
        const int64_t blocks = (p.dim + kRowBlock - 1) / kRowBlock;
        const Rows<T> out_view = out_rows;
        dispatch_state_size<T>(p.state, [&](auto n_fixed) {
            parallel_for(p.batch * blocks, threads, [&](int64_t task, int worker) {
                const int64_t b = task / blocks, first = task % blocks * kRowBlock;
                forward_block<T, decltype(n_fixed)::value>(in, b, first, std::min(kRowBlock, p.dim - first),
                                                           scratch[worker], out_view, last_data, checkpoint_data);
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
    buffer<T>(dout, fn, "dout", false);
    expect_shape(dout, {p.batch, p.dim, p.length}, fn, "dout", "(u's shape)");
    const Rows<T> dout_rows = rows_of<T>(dout, fn, "dout");
    const T* checkpoint_data = buffer<T>(checkpoints, fn, "checkpoints");
    expect_shape(checkpoints, {p.batch, p.dim, p.n_checkpoints(), p.state}, fn, "checkpoints",
                 "(as returned by selective_scan_fwd for these inputs)");
    Inputs<T> in = gather_inputs<T>(p, u, delta, A, D, z, delta_bias, delta_softplus, fn);
    auto [du, du_rows] = new_rows<T>(p, in.u.time_major());
    auto [ddelta, ddelta_rows] = new_rows<T>(p, in.delta.time_major());
    auto dA = new_array<T>({p.dim, p.state});
    std::vector<py::ssize_t> b_shape = {p.batch, p.state, p.length}, c_shape = b_shape;
    if (p.b_grouped) b_shape = {p.batch, p.groups_B, p.state, p.length};
    if (p.c_grouped) c_shape = {p.batch, p.groups_C, p.state, p.length};
    auto dB = new_array<T>(b_shape);
    auto dC = new_array<T>(c_shape);
    auto dD = new_array<T>({p.dim});
    auto dbias = new_array<T>({p.dim});
    py::object dz = py::none();
    Grads<T> g{du_rows, ddelta_rows, Rows<T>{}, nullptr, nullptr, nullptr, nullptr, nullptr};
    if (in.z.data) std::tie(dz, g.dz) = new_rows<T>(p, in.z.time_major());
    const StateTime<T> B_src = state_time_of<T>(B, p.groups_B, fn, "B");
    const StateTime<T> C_src = state_time_of<T>(C, p.groups_C, fn, "C");
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
        transpose_state_time(B_src, Bt.data(), p, threads);
        transpose_state_time(C_src, Ct.data(), p, threads);
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
                for (int64_t d0 = first; d0 < last; d0 += kRowBlock)
                    backward_block<T, decltype(n_fixed)::value>(in, dout_rows, checkpoint_data, b, d0,
                                                                std::min(kRowBlock, last - d0), scratch[worker], g,
                                                                dB_t, dC_t);
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
          "Selective scan forward on float32 arrays (float64 too, for gradchecks; all arrays share u's "
          "dtype) (SPEC 6.2). u, delta, z: (batch, dim, L); "
          "A: (dim, N); B, C: (batch, N, L) or (batch, groups, N, L); D, delta_bias: (dim,). u, delta, z, B, C are "
          "read through their strides; A, D, delta_bias must be C-contiguous.\n"
          "Returns (out (batch, dim, L), last_state (batch, dim, N), checkpoints) where checkpoints "
          "(batch, dim, ceil(L/selective_scan_chunk) - 1, N) is what selective_scan_bwd needs; out has u's layout "
          "(time-major when u is). "
          "num_threads=0 uses one thread per hardware thread; results do not depend on it.");
    m.def("selective_scan_bwd", &selective_scan_bwd, py::arg("dout"), py::arg("u"), py::arg("delta"), py::arg("A"),
          py::arg("B"), py::arg("C"), py::arg("checkpoints"), py::arg("D") = py::none(), py::arg("z") = py::none(),
          py::arg("delta_bias") = py::none(), py::arg("delta_softplus") = false, py::arg("num_threads") = 0,
          "Selective scan backward: the gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias, dz) of "
          "sum(dout * out) for the inputs of selective_scan_fwd, in u's dtype, None where the input was None; "
          "dB, dC have B's and C's shapes; du, ddelta, dz the layouts of u, delta, z. Deterministic: the bits depend on neither num_threads nor scheduling.");
}

}  // namespace retailsim
