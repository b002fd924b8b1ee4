// A minimal thread pool for the CPU kernels: parallel_for over task indices, header-only.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace retailsim {
namespace pool {

// A fixed number of workers pull task indices from a shared counter. Each task writes only its own
// outputs, so the scheduling never changes a result.

inline int default_threads() {
    const unsigned hardware = std::thread::hardware_concurrency();
    return hardware == 0 ? 1 : static_cast<int>(hardware);
}

template <class Task>
void parallel_for(int64_t n_tasks, int n_threads, const Task& task) {
    if (n_tasks <= 0) return;
    const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n_tasks)));
    std::atomic<int64_t> next{0};
    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto work = [&](int worker) {
        try {
            for (int64_t i = next.fetch_add(1); i < n_tasks; i = next.fetch_add(1)) task(i, worker);
        } catch (...) {
            std::lock_guard<std::mutex> lock(failure_mutex);
            if (!failure) failure = std::current_exception();
            next.store(n_tasks);
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
    work(0);
    for (auto& thread : threads) thread.join();
    if (failure) std::rethrow_exception(failure);
}


}  // namespace pool
}  // namespace retailsim
