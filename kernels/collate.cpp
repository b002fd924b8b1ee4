// Batch assembly (SPEC 3.5, 3.6, 8): the per-item part of a training/evaluation batch from the Stage 2 arrays.
//
// For each sample s (a basket row of the split) the kernel writes, padded to the batch's widths
//   S = max(1, max_s min(n_items(s), max_items)),  H = max(1, max_s min(history(s), max_history)):
//   basket: the first min(n, max_items) items with masking applied, their targets, price features;
//   history: the last max_history stream items before the basket's week (left-aligned, padding after) with
//            weeks-before and the coarse-category shares of the window.
// Randomness is counter-based: draw(base, j, stream) = mix64(base ^ (j << 2 | stream)) with
// base = mix64(mix64(mix64(seed) ^ epoch) ^ sample) and mix64 the splitmix64 finaliser, so a sample's masks
// depend on (seed, epoch, sample, position) only — never on the batch, the worker or the order.
// Selection: the k = max(1, (rate_bp * n + 5000) / 10000) positions with the smallest (draw(j, 0), j).
// Training: a selected position becomes MASK when draw(j, 1) % 10 < 8, product 1 + draw(j, 2) % N when it is 8,
// and stays itself when it is 9 (BERT "keep"); evaluation: every selected position becomes MASK.
// Everything is integer arithmetic or a single IEEE float division, so the NumPy twin
// (retailsim.data.batching.collate_items_numpy) agrees bit for bit. Offsets and ids are validated before use;
// a bad value raises ValueError naming the array and row, never an out-of-bounds read.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "registry.h"

namespace py = pybind11;

namespace retailsim {
namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

constexpr int64_t kIgnoreTarget = -100;
constexpr int kPriceFeatures = 3;
enum Stream : uint64_t { kSelect = 0, kAction = 1, kRandom = 2 };

inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline uint64_t draw(uint64_t base, int64_t position, Stream stream) {
    return mix64(base ^ ((static_cast<uint64_t>(position) << 2) | stream));
}

// First problem found while filling (the fill runs without the GIL, so it cannot raise there).
struct FillError {
    std::string message;
    bool set = false;
    void record(const std::string& text) {
        if (!set) message = text, set = true;
    }
};

py::dict collate_items(Array<int64_t> basket_item_offsets, Array<int32_t> item_ids, Array<float> item_price,
                       Array<int64_t> history_start, Array<int64_t> history_end, Array<int16_t> basket_week,
                       Array<int32_t> stream_items, Array<int16_t> stream_weeks, Array<int32_t> product_category,
                       Array<int64_t> sample_indices, uint64_t seed, uint64_t epoch, bool train,
                       int64_t mask_rate_bp, int64_t n_products, int64_t max_items, int64_t max_history,
                       int64_t n_categories) {
    const int64_t n_baskets = basket_item_offsets.size() - 1;
    const int64_t n_items = item_ids.size();
    const int64_t n_stream = stream_items.size();
    const int64_t batch = sample_indices.size();
    const int64_t unk = n_products + 1;
    if (n_baskets < 0) throw std::invalid_argument("basket_item_offsets must hold n_baskets + 1 entries");
    if (item_price.ndim() != 2 || item_price.shape(0) != n_items || item_price.shape(1) != kPriceFeatures)
        throw std::invalid_argument("item_price must have shape (len(item_ids), 3)");
    if (history_start.size() != n_baskets || history_end.size() != n_baskets || basket_week.size() != n_baskets)
        throw std::invalid_argument("history_start, history_end and week need one entry per basket");
    if (stream_weeks.size() != n_stream) throw std::invalid_argument("stream_items and stream_weeks differ in length");
    if (n_products < 1) throw std::invalid_argument("n_products must be at least 1");
    if (product_category.size() != n_products + 3)
        throw std::invalid_argument("product_category needs one entry per vocabulary id (n_products + 3)");
    if (mask_rate_bp < 1 || mask_rate_bp > 10000) throw std::invalid_argument("mask_rate must be in (0, 1]");
    if (max_items < 1 || max_history < 1 || n_categories < 1)
        throw std::invalid_argument("max_items, max_history and n_categories must be at least 1");

    const int64_t* offsets = basket_item_offsets.data();
    const int32_t* items = item_ids.data();
    const float* price = item_price.data();
    const int64_t* h_start = history_start.data();
    const int64_t* h_end = history_end.data();
    const int16_t* week = basket_week.data();
    const int32_t* s_items = stream_items.data();
    const int16_t* s_weeks = stream_weeks.data();
    const int32_t* category = product_category.data();
    const int64_t* samples = sample_indices.data();

    // Pass 1: validate every offset the fill will follow, and size the batch.
    int64_t width = 1, depth = 1;
    std::string error;
    {
        py::gil_scoped_release release;
        for (int64_t c = 0; c < n_products + 3 && error.empty(); ++c)
            if (category[c] < 0 || category[c] >= n_categories)
                error = "product_category[" + std::to_string(c) + "] = " + std::to_string(category[c]) +
                        " is outside 0.." + std::to_string(n_categories - 1);
        for (int64_t i = 0; i < batch && error.empty(); ++i) {
            const int64_t s = samples[i];
            if (s < 0 || s >= n_baskets) {
                error = "sample index " + std::to_string(s) + " is outside 0.." + std::to_string(n_baskets - 1);
                break;
            }
            const int64_t lo = offsets[s], hi = offsets[s + 1];
            if (lo < 0 || hi < lo || hi > n_items) {
                error = "basket_item_offsets[" + std::to_string(s) + ":" + std::to_string(s + 2) + "] = (" +
                        std::to_string(lo) + ", " + std::to_string(hi) + ") is not a slice of item_ids (0.." +
                        std::to_string(n_items) + ")";
                break;
            }
            const int64_t hs = h_start[s], he = h_end[s];
            if (hs < 0 || he < hs || he > n_stream) {
                error = "history_start/history_end[" + std::to_string(s) + "] = (" + std::to_string(hs) + ", " +
                        std::to_string(he) + ") is not a slice of the stream (0.." + std::to_string(n_stream) + ")";
                break;
            }
            width = std::max(width, std::min(hi - lo, max_items));
            depth = std::max(depth, std::min(he - hs, max_history));
        }
    }
    if (!error.empty()) throw std::invalid_argument(error);

    Array<int64_t> o_items({batch, width}), o_targets({batch, width}), o_history({batch, depth});
    Array<bool> o_valid({batch, width}), o_selected({batch, width}), o_hidden({batch, width}),
        o_history_valid({batch, depth});
    Array<float> o_price({batch, width, static_cast<int64_t>(kPriceFeatures)}), o_shares({batch, n_categories});
    Array<int32_t> o_weeks_before({batch, depth});
    int64_t* p_items = o_items.mutable_data();
    int64_t* p_targets = o_targets.mutable_data();
    int64_t* p_history = o_history.mutable_data();
    bool* p_valid = o_valid.mutable_data();
    bool* p_selected = o_selected.mutable_data();
    bool* p_hidden = o_hidden.mutable_data();
    bool* p_history_valid = o_history_valid.mutable_data();
    float* p_price = o_price.mutable_data();
    float* p_shares = o_shares.mutable_data();
    int32_t* p_weeks_before = o_weeks_before.mutable_data();

    // Pass 2: fill (ids are checked as they are read; the first bad one is reported after the loop).
    FillError fill_error;
    {
        py::gil_scoped_release release;
        std::fill(p_items, p_items + batch * width, 0);
        std::fill(p_targets, p_targets + batch * width, kIgnoreTarget);
        std::fill(p_valid, p_valid + batch * width, false);
        std::fill(p_selected, p_selected + batch * width, false);
        std::fill(p_hidden, p_hidden + batch * width, false);
        std::fill(p_price, p_price + batch * width * kPriceFeatures, 0.0f);
        std::fill(p_history, p_history + batch * depth, 0);
        std::fill(p_history_valid, p_history_valid + batch * depth, false);
        std::fill(p_weeks_before, p_weeks_before + batch * depth, 0);
        std::fill(p_shares, p_shares + batch * n_categories, 0.0f);
        std::vector<std::pair<uint64_t, int64_t>> keys;
        std::vector<int64_t> counts(n_categories);
        for (int64_t i = 0; i < batch; ++i) {
            const int64_t s = samples[i];
            const uint64_t base = mix64(mix64(mix64(seed) ^ epoch) ^ static_cast<uint64_t>(s));
            const int64_t lo = offsets[s];
            const int64_t n = std::min(offsets[s + 1] - lo, max_items);
            int64_t* row_items = p_items + i * width;
            keys.clear();
            for (int64_t j = 0; j < n; ++j) {
                const int32_t id = items[lo + j];
                if (id < 1 || id > unk)
                    fill_error.record("item_ids[" + std::to_string(lo + j) + "] = " + std::to_string(id) +
                                      " is not a product id 1.." + std::to_string(unk));
                row_items[j] = id;
                p_valid[i * width + j] = true;
                for (int f = 0; f < kPriceFeatures; ++f)
                    p_price[(i * width + j) * kPriceFeatures + f] = price[(lo + j) * kPriceFeatures + f];
                keys.emplace_back(draw(base, j, kSelect), j);
            }
            const int64_t k = n == 0 ? 0 : std::min(n, std::max<int64_t>(1, (mask_rate_bp * n + 5000) / 10000));
            std::partial_sort(keys.begin(), keys.begin() + k, keys.end());
            for (int64_t r = 0; r < k; ++r) {
                const int64_t j = keys[r].second;
                const int64_t at = i * width + j;
                p_selected[at] = true;
                p_targets[at] = row_items[j];
                const uint64_t action = train ? draw(base, j, kAction) % 10 : 0;
                if (action == 9) continue;  // BERT "keep": the position shows its own product and price
                row_items[j] = action < 8 ? n_products + 2
                                          : 1 + static_cast<int64_t>(draw(base, j, kRandom) % static_cast<uint64_t>(n_products));
                p_hidden[at] = true;
                for (int f = 0; f < kPriceFeatures; ++f) p_price[at * kPriceFeatures + f] = 0.0f;
            }

            const int64_t he = h_end[s];
            const int64_t hs = std::max(h_start[s], he - max_history);
            std::fill(counts.begin(), counts.end(), 0);
            for (int64_t t = hs; t < he; ++t) {
                const int64_t at = i * depth + (t - hs);
                const int32_t id = s_items[t];
                if (id < 1 || id > unk) {
                    fill_error.record("stream_items[" + std::to_string(t) + "] = " + std::to_string(id) +
                                      " is not a product id 1.." + std::to_string(unk));
                    continue;
                }
                const int32_t before = static_cast<int32_t>(week[s]) - static_cast<int32_t>(s_weeks[t]);
                if (before < 1)
                    fill_error.record("stream_weeks[" + std::to_string(t) + "] = " + std::to_string(s_weeks[t]) +
                                      " is not before the basket's week " + std::to_string(week[s]) +
                                      " (history would leak the basket)");
                p_history[at] = id;
                p_history_valid[at] = true;
                p_weeks_before[at] = before;
                ++counts[category[id]];
            }
            if (he > hs)
                for (int64_t c = 0; c < n_categories; ++c)
                    p_shares[i * n_categories + c] = static_cast<float>(counts[c]) / static_cast<float>(he - hs);
        }
    }
    if (fill_error.set) throw std::invalid_argument(fill_error.message);

    py::dict out;
    out["basket_items"] = o_items;
    out["basket_valid"] = o_valid;
    out["basket_price"] = o_price;
    out["price_hidden"] = o_hidden;
    out["masked_positions"] = o_selected;
    out["targets"] = o_targets;
    out["history_items"] = o_history;
    out["history_valid"] = o_history_valid;
    out["history_weeks_before"] = o_weeks_before;
    out["history_category_shares"] = o_shares;
    return out;
}

}  // namespace

void register_collate(py::module_& m) {
    m.def("collate_items", &collate_items, py::arg("basket_item_offsets"), py::arg("item_ids"), py::arg("item_price"),
          py::arg("history_start"), py::arg("history_end"), py::arg("basket_week"), py::arg("stream_items"),
          py::arg("stream_weeks"), py::arg("product_category"), py::arg("sample_indices"), py::arg("seed"),
          py::arg("epoch"), py::arg("train"), py::arg("mask_rate_bp"), py::arg("n_products"), py::arg("max_items"),
          py::arg("max_history"), py::arg("n_categories"),
          "The per-item arrays of a batch (masked basket, targets, prices, history window); see "
          "retailsim.data.batching for the contract. Releases the GIL; validates every offset and id.");
}

}  // namespace retailsim
