// NumPy buffers of the CPU kernels: argument checks with one clear message each, and strided (batch, dim, L)
// views that the kernels read and write in place. Header-only.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

namespace retailsim {
namespace arrays {

namespace py = pybind11;

inline std::string shape_text(const py::array& array) {
    std::string text = "(";
    for (py::ssize_t i = 0; i < array.ndim(); ++i) text += (i ? ", " : "") + std::to_string(array.shape(i));
    return text + (array.ndim() == 1 ? ",)" : ")");
}

// Every buffer of a call has the dtype of its first argument: float32 (the product) or float64 (gradchecks).
template <class T>
const char* dtype_name() {
    return std::is_same<T, float>::value ? "float32" : "float64";
}

// `object` as an aligned NumPy array of T with non-negative strides that are multiples of the item size,
// C-contiguous too when `contiguous`; otherwise a TypeError / ValueError naming `fn` and `name`. `first` names
// the argument whose dtype every buffer shares.
template <class T>
py::array checked(const py::handle& object, const char* fn, const char* name, bool contiguous, const char* first) {
    if (!py::isinstance<py::array>(object))
        throw py::type_error(std::string(fn) + ": " + name + " must be a NumPy array, got " +
                             std::string(py::str(py::type::of(object).attr("__name__"))) + ".");
    auto array = py::reinterpret_borrow<py::array>(object);
    if (!array.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(fn) + ": " + name + " must be " + dtype_name<T>() + " (all arrays share " +
                             first + "'s dtype, float32 or float64), got " + std::string(py::str(array.dtype())) +
                             ".");
    const int flags = array.flags();
    if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw py::value_error(std::string(fn) + ": " + name + " must be aligned.");
    if (contiguous && !(flags & py::array::c_style))
        throw py::value_error(std::string(fn) + ": " + name + " must be C-contiguous.");
    for (py::ssize_t i = 0; i < array.ndim(); ++i)
        if (array.strides(i) < 0 || array.strides(i) % static_cast<py::ssize_t>(sizeof(T)) != 0)
            throw py::value_error(std::string(fn) + ": " + name +
                                  " must have non-negative strides that are multiples of its item size.");
    return array;
}

// Element stride of one axis of an array that passed checked<T>.
template <class T>
int64_t element_stride(const py::array& array, py::ssize_t axis) {
    return array.strides(axis) / static_cast<py::ssize_t>(sizeof(T));
}

// A (batch, dim, L) array addressed through its element strides.
template <class T>
struct Rows {
    T* data = nullptr;
    int64_t sb = 0, sd = 0, sl = 0;
    T* row(int64_t b, int64_t d) const { return data + b * sb + d * sd; }
    T& at(int64_t b, int64_t d, int64_t t) const { return data[b * sb + d * sd + t * sl]; }
    bool time_major() const { return sd < sl; }  // (batch, L, dim) in memory
};

// The strided view of a 3-d array that passed checked<T> (read-only use is the caller's promise).
template <class T>
Rows<T> rows_of(const py::array& array) {
    return Rows<T>{static_cast<T*>(const_cast<void*>(array.data())), element_stride<T>(array, 0),
                   element_stride<T>(array, 1), element_stride<T>(array, 2)};
}

// A new (batch, dim, L) array: C-contiguous, or time-major (the transposed view of a (batch, L, dim) array).
template <class T>
std::pair<py::object, Rows<T>> new_rows(int64_t batch, int64_t dim, int64_t length, bool time_major) {
    if (!time_major) {
        py::array_t<T> array({batch, dim, length});
        return {array, Rows<T>{array.mutable_data(), dim * length, length, 1}};
    }
    py::array_t<T> array({batch, length, dim});
    Rows<T> rows{array.mutable_data(), length * dim, 1, dim};
    return {array.attr("transpose")(0, 2, 1), rows};
}

}  // namespace arrays
}  // namespace retailsim
