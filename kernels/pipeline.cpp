// Stage 2 pipeline kernel: the per-customer item streams (SPEC 3.4) as a CSR scatter.
//
// Baskets arrive in time order, a chunk at a time. For basket b of customer k = customer_key[b] (0 = anonymous,
// skipped) the kernel records where k's history window ends before b — history_end[b] = cursor[k] (items of
// k's earlier baskets) and history_end_week[b] = the cursor when k's current week began (items of earlier
// weeks) — then appends b's items and week to k's slice [stream_offsets[k], stream_offsets[k+1]) of the
// shared stream and advances cursor[k]. cursor, week_cursor and last_week carry the state between chunks.
// Every offset is validated before it is used; the NumPy twin is retailsim.data.customer_streams.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/numpy.h>

#include "registry.h"

namespace py = pybind11;

namespace retailsim {
namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

template <typename T>
T* mutable_data(Array<T>& a, const char* name) {
    if (!a.writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
    return a.mutable_data();
}

void scatter_customer_streams(Array<int64_t> customer_key, Array<int32_t> basket_week, Array<int64_t> item_offsets,
                              Array<int32_t> item_ids, Array<int64_t> stream_offsets, Array<int64_t> cursor,
                              Array<int64_t> week_cursor, Array<int32_t> last_week, Array<int32_t> stream_items,
                              Array<int16_t> stream_weeks, Array<int64_t> history_start, Array<int64_t> history_end,
                              Array<int64_t> history_end_week) {
    const int64_t n_baskets = customer_key.size();
    const int64_t n_keys = stream_offsets.size() - 1;
    const int64_t n_items = item_ids.size();
    const int64_t stream_size = stream_items.size();
    if (basket_week.size() != n_baskets || item_offsets.size() != n_baskets + 1 || history_start.size() != n_baskets ||
        history_end.size() != n_baskets || history_end_week.size() != n_baskets)
        throw std::invalid_argument("basket arrays disagree in length (item_offsets needs n_baskets + 1 entries)");
    if (n_keys < 1 || cursor.size() != n_keys || week_cursor.size() != n_keys || last_week.size() != n_keys)
        throw std::invalid_argument("stream_offsets needs n_keys + 1 entries and cursor/week_cursor/last_week n_keys");
    if (stream_weeks.size() != stream_size) throw std::invalid_argument("stream_items and stream_weeks differ in length");

    const int64_t* key = customer_key.data();
    const int32_t* week = basket_week.data();
    const int64_t* offsets = item_offsets.data();
    const int32_t* items = item_ids.data();
    const int64_t* s_offsets = stream_offsets.data();
    int64_t* o_cursor = mutable_data(cursor, "cursor");
    int64_t* o_week_cursor = mutable_data(week_cursor, "week_cursor");
    int32_t* o_last_week = mutable_data(last_week, "last_week");
    int32_t* o_items = mutable_data(stream_items, "stream_items");
    int16_t* o_weeks = mutable_data(stream_weeks, "stream_weeks");
    int64_t* o_start = mutable_data(history_start, "history_start");
    int64_t* o_end = mutable_data(history_end, "history_end");
    int64_t* o_end_week = mutable_data(history_end_week, "history_end_week");

    // Validate everything that is read-only before writing anything.
    if (offsets[0] < 0 || offsets[n_baskets] > n_items)
        throw std::invalid_argument("item_offsets run outside item_ids");
    for (int64_t b = 0; b < n_baskets; ++b) {
        if (offsets[b + 1] < offsets[b]) throw std::invalid_argument("item_offsets must be non-decreasing");
        if (key[b] < 0 || key[b] >= n_keys) throw std::invalid_argument("customer_key outside 0..n_keys-1");
    }
    if (s_offsets[0] < 0 || s_offsets[n_keys] > stream_size)
        throw std::invalid_argument("stream_offsets run outside the stream arrays");
    for (int64_t k = 0; k < n_keys; ++k) {
        if (s_offsets[k + 1] < s_offsets[k]) throw std::invalid_argument("stream_offsets must be non-decreasing");
        if (o_cursor[k] < s_offsets[k] || o_cursor[k] > s_offsets[k + 1] || o_week_cursor[k] < s_offsets[k] ||
            o_week_cursor[k] > o_cursor[k])
            throw std::invalid_argument("cursor/week_cursor outside their customer's stream slice");
    }
    // Capacity: every customer's items of this chunk must fit its slice (checked before any write).
    bool overflow = false;
    {
        py::gil_scoped_release release;
        for (int64_t b = 0; b < n_baskets; ++b) {
            const int64_t k = key[b];
            if (k == 0) continue;
            o_cursor[k] += offsets[b + 1] - offsets[b];
            if (o_cursor[k] > s_offsets[k + 1]) overflow = true;
        }
        for (int64_t b = 0; b < n_baskets; ++b) {  // undo the dry run
            const int64_t k = key[b];
            if (k != 0) o_cursor[k] -= offsets[b + 1] - offsets[b];
        }
        if (!overflow) {
            for (int64_t b = 0; b < n_baskets; ++b) {
                const int64_t k = key[b];
                if (k == 0) {
                    o_start[b] = o_end[b] = o_end_week[b] = 0;
                    continue;
                }
                if (o_last_week[k] != week[b]) {
                    o_week_cursor[k] = o_cursor[k];
                    o_last_week[k] = week[b];
                }
                o_start[b] = s_offsets[k];
                o_end[b] = o_cursor[k];
                o_end_week[b] = o_week_cursor[k];
                int64_t to = o_cursor[k];
                for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i, ++to) {
                    o_items[to] = items[i];
                    o_weeks[to] = static_cast<int16_t>(week[b]);
                }
                o_cursor[k] = to;
            }
        }
    }
    if (overflow) throw std::invalid_argument("a customer's items overflow its stream slice (stream_offsets too small)");
}

}  // namespace

void register_pipeline(py::module_& m) {
    m.def("scatter_customer_streams", &scatter_customer_streams, py::arg("customer_key"), py::arg("basket_week"),
          py::arg("item_offsets"), py::arg("item_ids"), py::arg("stream_offsets"), py::arg("cursor"),
          py::arg("week_cursor"), py::arg("last_week"), py::arg("stream_items"), py::arg("stream_weeks"),
          py::arg("history_start"), py::arg("history_end"), py::arg("history_end_week"),
          "Append a time-ordered chunk of baskets to the per-customer item streams (CSR scatter); see "
          "retailsim.data.customer_streams for the contract.");
}

}  // namespace retailsim
