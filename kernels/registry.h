// Each concept of the extension registers its functions on the module from its own source file;
// bindings.cpp calls every register_* declared here.
#pragma once
#include <pybind11/pybind11.h>

namespace retailsim {
void register_pipeline(pybind11::module_& m);  // pipeline.cpp: per-customer item streams (Stage 2)
void register_collate(pybind11::module_& m);  // collate.cpp: batch assembly (masking, prices, history window)
void register_cooccurrence(pybind11::module_& m);  // cooccurrence.cpp: top-k item-pair counts
void register_selective_scan(pybind11::module_& m);  // selective_scan.cpp: CPU selective scan (SPEC 6.2)
void register_causal_conv(pybind11::module_& m);  // causal_conv.cpp: the Mamba block's causal depthwise conv
}  // namespace retailsim
