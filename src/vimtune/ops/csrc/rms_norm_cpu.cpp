// RMSNorm over the last dimension on CPU, forward and backward, one pass over the rows each (float32 or
// float64; x contiguous, (..., D), taken as rows of D values):
//
//   forward:  r = 1 / sqrt(mean(x^2) + eps) per row, y = x r w
//   backward: g = dy w, dx = r (g - x r^2 mean(g x)), dw = sum over rows of dy x r
//
// torch's CPU rms_norm is a composition of elementwise ops and a mean, and autograd differentiates that
// composition: about a dozen passes over (rows, D) tensors per forward and backward. Here a row is read once
// for its sum of squares and once more (from cache) for the output; the backward reads dy and x of a row
// twice in the same way. dw is summed in float64, each block of kRowBlock rows into its own slice of
// partial sums, and the slices are added in block order (partial_sums.h): the same bits at any thread count.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "partial_sums.h"

namespace {

constexpr int64_t kRowBlock = 32;  // rows per task, and per slice of dw's partial sums

void check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rms_norm: x and weight must be CPU tensors");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "rms_norm: x must be (..., D) with D > 0, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rms_norm: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "rms_norm: x must be contiguous");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.is_contiguous(),
              "rms_norm: weight must be contiguous (", x.size(-1), ",), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "rms_norm: weight must have x's dtype ", x.scalar_type(),
              ", got ", weight.scalar_type());
}

template <typename S>
void forward_rows(const S* x, const S* w, S* y, S* rstd, int64_t rows, int64_t D, double eps) {
  at::parallel_for(0, rows, kRowBlock, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const S* __restrict__ xr = x + n * D;
      S* __restrict__ yr = y + n * D;
      S squares = 0;
      #pragma omp simd reduction(+ : squares)
      for (int64_t d = 0; d < D; ++d) squares += xr[d] * xr[d];
      const S r = S(1) / std::sqrt(squares / S(D) + S(eps));
      #pragma omp simd
      for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * r * w[d];
      rstd[n] = r;
    }
  });
}

// dx of rows [begin, end) and, with dw_part (kRowBlock-row slices of D float64 sums, zero-initialised; this
// block's), dw's partial sums of those rows. begin is a multiple of kRowBlock.
template <typename S>
void backward_rows(const S* dy, const S* x, const S* w, const S* rstd, S* dx, double* dw_part, int64_t begin,
                   int64_t end, int64_t D) {
  for (int64_t n = begin; n < end; ++n) {
    const S* __restrict__ g = dy + n * D;
    const S* __restrict__ xr = x + n * D;
    const S r = rstd[n];
    if (dx != nullptr) {
      S dot = 0;
      #pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) dot += g[d] * w[d] * xr[d];
      const S coef = r * r * dot / S(D);
      S* __restrict__ out = dx + n * D;
      #pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] = r * (g[d] * w[d] - xr[d] * coef);
    }
    if (dw_part != nullptr) {
      #pragma omp simd
      for (int64_t d = 0; d < D; ++d) dw_part[d] += double(g[d] * xr[d] * r);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_inputs(x, weight);
  const int64_t D = x.size(-1), rows = x.numel() / D;
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({rows}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_fwd", [&] {
    forward_rows<scalar_t>(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                           y.mutable_data_ptr<scalar_t>(), rstd.mutable_data_ptr<scalar_t>(), rows, D, eps);
  });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                                const at::Tensor& rstd, bool need_dx, bool need_dw) {
  check_inputs(x, weight);
  TORCH_CHECK(dy.device().is_cpu() && rstd.device().is_cpu(), "rms_norm: dy and rstd must be CPU tensors");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type() && dy.is_contiguous(),
              "rms_norm: dy must be contiguous ", x.sizes(), " ", x.scalar_type(), ", got ", dy.sizes(), " ",
              dy.scalar_type());
  const int64_t D = x.size(-1), rows = x.numel() / D, blocks = (rows + kRowBlock - 1) / kRowBlock;
  TORCH_CHECK(rstd.dim() == 1 && rstd.size(0) == rows && rstd.scalar_type() == x.scalar_type() &&
                  rstd.is_contiguous(),
              "rms_norm: rstd must be contiguous (", rows, ",) ", x.scalar_type());
  at::Tensor dx = at::empty(need_dx ? x.sizes() : at::IntArrayRef{0}, x.options());  // empty: not asked for
  at::Tensor dw = at::empty(need_dw ? weight.sizes() : at::IntArrayRef{0}, x.options());
  std::vector<double> parts(need_dw ? blocks * D : 0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_bwd", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b)
        backward_rows<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), w,
                                rstd.const_data_ptr<scalar_t>(), need_dx ? dx.mutable_data_ptr<scalar_t>() : nullptr,
                                need_dw ? parts.data() + b * D : nullptr, b * kRowBlock,
                                std::min(rows, (b + 1) * kRowBlock), D);
    });
    if (need_dw) {
      scalar_t* out = dw.mutable_data_ptr<scalar_t>();
      add_slices(parts.data(), blocks, D, [&](int64_t d, double sum) { out[d] = scalar_t(sum); });
    }
  });
  return {dx, dw};
}

}  // namespace

TORCH_LIBRARY(vimtune_norm_cpu, m) {
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)", &rms_norm_fwd);
  m.def(
      "rms_norm_bwd(Tensor dy, Tensor x, Tensor weight, Tensor rstd, bool need_dx, bool need_dw) -> (Tensor, Tensor)",
      &rms_norm_bwd);
}
