// retailsim._native: the CPU kernels of the package (SPEC section 8), on NumPy buffers, no libtorch.
#include "registry.h"

PYBIND11_MODULE(_native, m) {
    m.doc() = "RetailSim native CPU kernels (pybind11). Use through retailsim.native, not directly.";
    retailsim::register_pipeline(m);
    retailsim::register_selective_scan(m);
    retailsim::register_causal_conv(m);
    retailsim::register_collate(m);
    retailsim::register_cooccurrence(m);
}
