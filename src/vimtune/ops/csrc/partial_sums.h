// The last step of the CPU kernels' deterministic reductions (selective_scan_cpu.cpp, mixer_cpu.cpp): each task
// of a kernel writes its own slice of float64 partial sums (one per batch row or channel group), and after the
// parallel part the slices are added up in a fixed order, so that a gradient does not depend on how many
// threads ran the tasks.
//
// Everything lives in an anonymous namespace, as in fast_math.h.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace {

// Calls write(i, parts[i] + parts[n + i] + ... + parts[(slices - 1) * n + i]) for i < n: the `slices` slices of
// n float64 partial sums at `parts`, added in double in slice order, starting from 0.0 (so zero slices give 0).
// The sums run kStrip values at a time, slice after slice, so that the additions vectorise over i.
template <typename F>
void add_slices(const double* parts, int64_t slices, int64_t n, const F& write) {
  constexpr int64_t kStrip = 256;
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i0 = begin; i0 < end; i0 += kStrip) {
      const int64_t len = std::min(kStrip, end - i0);
      double sum[kStrip] = {};
      for (int64_t r = 0; r < slices; ++r)
        for (int64_t k = 0; k < len; ++k) sum[k] += parts[r * n + i0 + k];
      for (int64_t k = 0; k < len; ++k) write(i0 + k, sum[k]);
    }
  });
}

}  // namespace
