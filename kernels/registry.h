// Each concept of the extension registers its functions on the module from its own source file;
// bindings.cpp calls every register_* declared here.
#pragma once
#include <pybind11/pybind11.h>

namespace retailsim {
}  // namespace retailsim
