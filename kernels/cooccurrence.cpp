// Item-pair co-occurrence counts over baskets, kept sparse as the top-k partners of each product (SPEC 8).
//
// count(a, c) = number of baskets holding both real products a != c (ids 1..n_products; PAD, UNK and MASK are
// left out and a product listed twice in a basket counts once). For each product a the kernel keeps its top_k
// partners ordered by (count descending, partner id ascending) — a total order, so the result is unique and
// the NumPy twin (retailsim.data.cooccurrence.cooccurrence_numpy) matches it exactly.
// Method: distinct items per basket (CSR), the inverted index product -> baskets, then for each product a dense
// scratch row of counts over its baskets' items (memory O(vocabulary + items), never vocabulary^2). Products
// are striped over n_threads threads, each with its own scratch; the GIL is released throughout.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <pybind11/numpy.h>

#include "registry.h"

namespace py = pybind11;

namespace retailsim {
namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

py::dict cooccurrence_topk(Array<int64_t> basket_item_offsets, Array<int32_t> item_ids, int64_t n_products,
                           int64_t top_k, int64_t n_threads) {
    const int64_t n_baskets = basket_item_offsets.size() - 1;
    const int64_t n_items = item_ids.size();
    if (n_baskets < 0) throw std::invalid_argument("basket_item_offsets must hold n_baskets + 1 entries");
    if (n_products < 1) throw std::invalid_argument("n_products must be at least 1");
    if (top_k < 1) throw std::invalid_argument("top_k must be at least 1");
    const int64_t vocab = n_products + 3;
    const int64_t* offsets = basket_item_offsets.data();
    const int32_t* items = item_ids.data();

    std::string error;
    std::vector<int64_t> indptr(vocab + 1, 0), item_baskets(vocab, 0);
    std::vector<int32_t> neighbors;
    std::vector<int64_t> counts;
    int64_t pairs = 0;
    {
        py::gil_scoped_release release;
        if (offsets[0] < 0 || offsets[n_baskets] > n_items) error = "basket_item_offsets run outside item_ids";
        for (int64_t b = 0; b < n_baskets && error.empty(); ++b)
            if (offsets[b + 1] < offsets[b])
                error = "basket_item_offsets must be non-decreasing (row " + std::to_string(b) + ")";
        for (int64_t i = offsets[0]; error.empty() && i < offsets[n_baskets]; ++i)
            if (items[i] < 0 || items[i] >= vocab)
                error = "item_ids[" + std::to_string(i) + "] = " + std::to_string(items[i]) +
                        " is outside the vocabulary 0.." + std::to_string(vocab - 1);
        if (error.empty()) {
            // Distinct real products of each basket.
            std::vector<int64_t> clean_offsets(n_baskets + 1, 0);
            std::vector<int32_t> clean;
            clean.reserve(offsets[n_baskets] - offsets[0]);
            std::vector<int64_t> seen_in(vocab, -1);
            for (int64_t b = 0; b < n_baskets; ++b) {
                for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i) {
                    const int32_t id = items[i];
                    if (id < 1 || id > n_products || seen_in[id] == b) continue;
                    seen_in[id] = b;
                    clean.push_back(id);
                    ++item_baskets[id];
                }
                clean_offsets[b + 1] = static_cast<int64_t>(clean.size());
                const int64_t n = clean_offsets[b + 1] - clean_offsets[b];
                pairs += n * (n - 1);
            }
            // Inverted index: product -> baskets holding it (counting sort, baskets ascending).
            std::vector<int64_t> inv_offsets(vocab + 1, 0);
            for (int64_t id = 0; id < vocab; ++id) inv_offsets[id + 1] = inv_offsets[id] + item_baskets[id];
            std::vector<int64_t> inv(clean.size()), fill(inv_offsets.begin(), inv_offsets.end() - 1);
            for (int64_t b = 0; b < n_baskets; ++b)
                for (int64_t i = clean_offsets[b]; i < clean_offsets[b + 1]; ++i) inv[fill[clean[i]]++] = b;

            std::vector<int32_t> slot_ids(vocab * top_k);
            std::vector<int64_t> slot_counts(vocab * top_k), slot_len(vocab, 0);
            const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(n_threads, 64));
            auto work = [&](int64_t first) {
                std::vector<int64_t> row(vocab, 0);
                std::vector<int32_t> touched;
                for (int64_t a = 1 + first; a <= n_products; a += threads) {
                    touched.clear();
                    for (int64_t p = inv_offsets[a]; p < inv_offsets[a + 1]; ++p) {
                        const int64_t b = inv[p];
                        for (int64_t i = clean_offsets[b]; i < clean_offsets[b + 1]; ++i) {
                            const int32_t c = clean[i];
                            if (c == a) continue;
                            if (row[c]++ == 0) touched.push_back(c);
                        }
                    }
                    const auto before = [&row](int32_t x, int32_t y) { return row[x] != row[y] ? row[x] > row[y] : x < y; };
                    const int64_t keep = std::min<int64_t>(top_k, static_cast<int64_t>(touched.size()));
                    std::partial_sort(touched.begin(), touched.begin() + keep, touched.end(), before);
                    for (int64_t r = 0; r < keep; ++r) {
                        slot_ids[a * top_k + r] = touched[r];
                        slot_counts[a * top_k + r] = row[touched[r]];
                    }
                    slot_len[a] = keep;
                    for (int32_t c : touched) row[c] = 0;
                }
            };
            std::vector<std::thread> pool;
            for (int64_t t = 1; t < threads; ++t) pool.emplace_back(work, t);
            work(0);
            for (auto& thread : pool) thread.join();

            for (int64_t a = 0; a < vocab; ++a) indptr[a + 1] = indptr[a] + slot_len[a];
            neighbors.resize(indptr[vocab]);
            counts.resize(indptr[vocab]);
            for (int64_t a = 0; a < vocab; ++a)
                for (int64_t r = 0; r < slot_len[a]; ++r) {
                    neighbors[indptr[a] + r] = slot_ids[a * top_k + r];
                    counts[indptr[a] + r] = slot_counts[a * top_k + r];
                }
        }
    }
    if (!error.empty()) throw std::invalid_argument(error);
    py::dict out;
    out["indptr"] = Array<int64_t>(static_cast<py::ssize_t>(indptr.size()), indptr.data());
    out["neighbors"] = Array<int32_t>(static_cast<py::ssize_t>(neighbors.size()), neighbors.data());
    out["counts"] = Array<int64_t>(static_cast<py::ssize_t>(counts.size()), counts.data());
    out["item_baskets"] = Array<int64_t>(static_cast<py::ssize_t>(item_baskets.size()), item_baskets.data());
    out["pairs"] = pairs;
    return out;
}

}  // namespace

void register_cooccurrence(py::module_& m) {
    m.def("cooccurrence_topk", &cooccurrence_topk, py::arg("basket_item_offsets"), py::arg("item_ids"),
          py::arg("n_products"), py::arg("top_k"), py::arg("n_threads") = 1,
          "Top-k co-occurring partners of every product over the baskets (CSR); see "
          "retailsim.data.cooccurrence for the contract. Releases the GIL; validates offsets and ids.");
}

}  // namespace retailsim
