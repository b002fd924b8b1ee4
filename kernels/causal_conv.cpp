// CPU causal depthwise convolution beside the selective scan (the Mamba block's conv, SPEC 4), forward and
// backward, with the bias and the optional SiLU fused:
//
//   pre[b, d, t] = bias[d] + Σ_k w[d, k] x[b, d, t - (W - 1) + k]     (x before t = 0 is 0)
//   out          = silu(pre) or pre
//
// x and dout are (batch, dim, L) arrays read through their strides; out and dx take x's layout (time-major
// (batch, L, dim) in memory when x is, C-contiguous otherwise), so the model's time-major projections pass
// through without a transpose. The loops over channels are innermost: contiguous in the time-major layout.
//
// Work is split into tasks of (batch row, block of kTimeBlock steps), a choice made from the shape alone.
// Backward: each task recomputes pre and the gradient at it for its steps plus the W - 1 that follow (dx[t]
// reads the gradient at t .. t + W - 1), writes its dx, and keeps its own partial sums of dw and dbias; the
// partials are added in task order, so the bits depend on neither the thread count nor the scheduling.
#include "arrays.h"
#include "parallel_for.h"
#include "registry.h"
#include "scan_math.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace retailsim {
namespace {

using namespace simd;
using pool::default_threads;
using pool::parallel_for;

constexpr int64_t kTimeBlock = 64;  // steps per task
constexpr int64_t kMinWorkPerThread = int64_t(1) << 16;  // multiply-adds below which another thread is not worth it

using arrays::Rows;
using arrays::shape_text;

struct Shape {
    int64_t batch = 0, dim = 0, length = 0, width = 0;
    int64_t time_blocks() const { return (length + kTimeBlock - 1) / kTimeBlock; }
    int64_t tasks() const { return batch * time_blocks(); }
};

template <class T>
py::array checked(const py::handle& object, const char* fn, const char* name, bool contiguous) {
    return arrays::checked<T>(object, fn, name, contiguous, "x");
}

// Checks x (batch, dim, L), weight (dim, W) and bias (dim,) or None; returns the shape.
template <class T>
Shape check(const char* fn, const py::object& x, const py::object& weight, const py::object& bias) {
    auto x_array = checked<T>(x, fn, "x", false);
    if (x_array.ndim() != 3)
        throw py::value_error(std::string(fn) + ": x must have shape (batch, dim, L), got " + shape_text(x_array) +
                              ".");
    Shape s{x_array.shape(0), x_array.shape(1), x_array.shape(2), 0};
    auto w_array = checked<T>(weight, fn, "weight", true);
    if (w_array.ndim() != 2 || w_array.shape(0) != s.dim || w_array.shape(1) < 1)
        throw py::value_error(std::string(fn) + ": weight must have shape (dim, width) = (" + std::to_string(s.dim) +
                              ", width >= 1), got " + shape_text(w_array) + ".");
    s.width = w_array.shape(1);
    if (!bias.is_none()) {
        auto b_array = checked<T>(bias, fn, "bias", true);
        if (b_array.ndim() != 1 || b_array.shape(0) != s.dim)
            throw py::value_error(std::string(fn) + ": bias must have shape (" + std::to_string(s.dim) + ",), got " +
                                  shape_text(b_array) + ".");
    }
    return s;
}

int resolve_threads(int num_threads, const Shape& s) {
    if (num_threads < 0) throw py::value_error("num_threads must be >= 0 (0: one per hardware thread).");
    const int asked = num_threads == 0 ? default_threads() : num_threads;
    const int64_t work = s.batch * s.dim * s.length * s.width;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(asked, work / kMinWorkPerThread)));
}

// pre[d] = bias[d] + Σ_k w[d, k] x[b, d, t - (W - 1) + k] for every channel of step t, into pre (dim,).
template <class T>
inline void preactivation(const Rows<T>& x, const T* w, const T* bias, const Shape& s, int64_t b, int64_t t,
                          T* pre) {
    const int64_t D = s.dim, W = s.width;
    for (int64_t d = 0; d < D; ++d) pre[d] = bias ? bias[d] : T(0);
    for (int64_t k = 0; k < W; ++k) {
        const int64_t src = t - (W - 1) + k;
        if (src < 0) continue;
        const T* xs = &x.at(b, 0, src);
        const int64_t sd = x.sd;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) pre[d] += w[d * W + k] * xs[d * sd];
    }
}

template <class T>
py::object forward_impl(const py::object& x, const py::object& weight, const py::object& bias, bool silu,
                        int num_threads) {
    const char* fn = "causal_conv1d_fwd";
    const Shape s = check<T>(fn, x, weight, bias);
    const Rows<T> xs = arrays::rows_of<T>(py::reinterpret_borrow<py::array>(x));
    const T* w = static_cast<const T*>(py::reinterpret_borrow<py::array>(weight).data());
    const T* b_data = bias.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(bias).data());
    auto [out, os] = arrays::new_rows<T>(s.batch, s.dim, s.length, xs.time_major());
    const int threads = resolve_threads(num_threads, s);
    {
        py::gil_scoped_release release;
        std::vector<std::vector<T>> scratch(static_cast<size_t>(threads), std::vector<T>(s.dim));
        parallel_for(s.tasks(), threads, [&](int64_t task, int worker) {
            const int64_t b = task / s.time_blocks(), t0 = task % s.time_blocks() * kTimeBlock;
            T* pre = scratch[worker].data();
            for (int64_t t = t0; t < std::min(s.length, t0 + kTimeBlock); ++t) {
                preactivation(xs, w, b_data, s, b, t, pre);
                T* o = &os.at(b, 0, t);
                const int64_t sd = os.sd;
                if (silu) {
#pragma omp simd
                    for (int64_t d = 0; d < s.dim; ++d) o[d * sd] = pre[d] * sigmoid_of(pre[d]);
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < s.dim; ++d) o[d * sd] = pre[d];
                }
            }
        });
    }
    return out;
}

template <class T>
py::tuple backward_impl(const py::object& dout, const py::object& x, const py::object& weight,
                        const py::object& bias, bool silu, int num_threads) {
    const char* fn = "causal_conv1d_bwd";
    const Shape s = check<T>(fn, x, weight, bias);
    auto dout_array = checked<T>(dout, fn, "dout", false);
    if (dout_array.ndim() != 3 || dout_array.shape(0) != s.batch || dout_array.shape(1) != s.dim ||
        dout_array.shape(2) != s.length)
        throw py::value_error(std::string(fn) + ": dout must have x's shape (" + std::to_string(s.batch) + ", " +
                              std::to_string(s.dim) + ", " + std::to_string(s.length) + "), got " +
                              shape_text(dout_array) + ".");
    const Rows<T> xs = arrays::rows_of<T>(py::reinterpret_borrow<py::array>(x));
    const Rows<T> gs = arrays::rows_of<T>(dout_array);
    const T* w = static_cast<const T*>(py::reinterpret_borrow<py::array>(weight).data());
    const T* b_data = bias.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(bias).data());
    auto [dx, dxs] = arrays::new_rows<T>(s.batch, s.dim, s.length, xs.time_major());
    py::array_t<T> dweight({s.dim, s.width});
    py::array_t<T> dbias({s.dim});
    T* dw_data = dweight.mutable_data();
    T* db_data = dbias.mutable_data();
    const int threads = resolve_threads(num_threads, s);
    {
        py::gil_scoped_release release;
        const int64_t D = s.dim, W = s.width, tasks = s.tasks();
        std::vector<T> dw_partial(static_cast<size_t>(tasks * D * W), T(0));
        std::vector<T> db_partial(static_cast<size_t>(tasks * D), T(0));
        // Per worker: the gradient at pre for the task's steps and the W - 1 after them, and one step of pre.
        std::vector<std::vector<T>> grad_scratch(static_cast<size_t>(threads),
                                                 std::vector<T>((kTimeBlock + W - 1) * D));
        std::vector<std::vector<T>> pre_scratch(static_cast<size_t>(threads), std::vector<T>(D));
        parallel_for(tasks, threads, [&](int64_t task, int worker) {
            const int64_t b = task / s.time_blocks(), t0 = task % s.time_blocks() * kTimeBlock;
            const int64_t t1 = std::min(s.length, t0 + kTimeBlock), t_end = std::min(s.length, t1 + W - 1);
            T* gpre = grad_scratch[worker].data();  // row (t - t0) holds the gradient at pre[t]
            T* pre = pre_scratch[worker].data();
            for (int64_t t = t0; t < t_end; ++t) {
                T* g = gpre + (t - t0) * D;
                const T* go = &gs.at(b, 0, t);
                const int64_t sd = gs.sd;
                if (silu) {
                    preactivation(xs, w, b_data, s, b, t, pre);
#pragma omp simd
                    for (int64_t d = 0; d < D; ++d) {
                        const T p = pre[d], sig = sigmoid_of(p);
                        g[d] = go[d * sd] * (sig * (T(1) + p * (T(1) - sig)));
                    }
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < D; ++d) g[d] = go[d * sd];
                }
            }
            T* dw = dw_partial.data() + task * D * W;
            T* db = db_partial.data() + task * D;
            for (int64_t t = t0; t < t1; ++t) {
                const T* g = gpre + (t - t0) * D;
                // dx[t] = Σ_k w[d, k] g[t + (W - 1) - k]
                T* dxt = &dxs.at(b, 0, t);
                const int64_t sdx = dxs.sd;
                for (int64_t d = 0; d < D; ++d) pre[d] = T(0);
                for (int64_t k = 0; k < W; ++k) {
                    const int64_t dst = t + (W - 1) - k;
                    if (dst >= s.length) continue;
                    const T* gk = gpre + (dst - t0) * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; ++d) pre[d] += w[d * W + k] * gk[d];
                }
#pragma omp simd
                for (int64_t d = 0; d < D; ++d) dxt[d * sdx] = pre[d];
                // dw[d, k] += g[t] x[t - (W - 1) + k]; dbias[d] += g[t]
                for (int64_t k = 0; k < W; ++k) {
                    const int64_t src = t - (W - 1) + k;
                    if (src < 0) continue;
                    const T* xk = &xs.at(b, 0, src);
                    const int64_t sd = xs.sd;
#pragma omp simd
                    for (int64_t d = 0; d < D; ++d) dw[d * W + k] += g[d] * xk[d * sd];
                }
#pragma omp simd
                for (int64_t d = 0; d < D; ++d) db[d] += g[d];
            }
        });
        // Partials added in task order.
        std::fill(dw_data, dw_data + D * W, T(0));
        std::fill(db_data, db_data + D, T(0));
        for (int64_t task = 0; task < tasks; ++task) {
            const T* dw = dw_partial.data() + task * D * W;
            const T* db = db_partial.data() + task * D;
            for (int64_t i = 0; i < D * W; ++i) dw_data[i] += dw[i];
            for (int64_t d = 0; d < D; ++d) db_data[d] += db[d];
        }
    }
    return py::make_tuple(dx, dweight, bias.is_none() ? py::object(py::none()) : py::object(dbias));
}

bool is_float64(const py::handle& x) {
    return py::isinstance<py::array>(x) && py::reinterpret_borrow<py::array>(x).dtype().is(py::dtype::of<double>());
}

py::object causal_conv1d_fwd(const py::object& x, const py::object& weight, const py::object& bias, bool silu,
                             int num_threads) {
    return is_float64(x) ? forward_impl<double>(x, weight, bias, silu, num_threads)
                         : forward_impl<float>(x, weight, bias, silu, num_threads);
}

py::tuple causal_conv1d_bwd(const py::object& dout, const py::object& x, const py::object& weight,
                            const py::object& bias, bool silu, int num_threads) {
    return is_float64(x) ? backward_impl<double>(dout, x, weight, bias, silu, num_threads)
                         : backward_impl<float>(dout, x, weight, bias, silu, num_threads);
}

}  // namespace

void register_causal_conv(py::module_& m) {
    m.def("causal_conv1d_fwd", &causal_conv1d_fwd, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(),
          py::arg("silu") = false, py::arg("num_threads") = 0,
          "Causal depthwise conv: out[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - (W-1) + k]) on "
          "float32 (or float64) arrays; x (batch, dim, L) at any strides, weight (dim, W), bias (dim,) or None; "
          "act = SiLU when silu. out has x's layout (time-major when x is).");
    m.def("causal_conv1d_bwd", &causal_conv1d_bwd, py::arg("dout"), py::arg("x"), py::arg("weight"),
          py::arg("bias") = py::none(), py::arg("silu") = false, py::arg("num_threads") = 0,
          "Gradients (dx, dweight, dbias) of sum(dout * causal_conv1d_fwd(x, weight, bias, silu)); dx in x's "
          "layout, dbias None without a bias. Deterministic: the bits depend on neither num_threads nor scheduling.");
}

}  // namespace retailsim
