// SVP's prompt update on CPU, forward and backward, one pass over the rows each:
//
//   forward:  out = h + sum_i scale_i * silu(pre_i), except out = h on the kept token (t == keep)
//   backward: dpre_i = m * grad * scale_i * silu'(pre_i), dscale_i = sum over rows of m * grad * silu(pre_i)
//
// with m = 0 on the kept token and 1 elsewhere, silu(x) = x s, silu'(x) = s (1 + x (1 - s)), s = sigmoid(x).
// h and every pre_i are float32 or bfloat16 (the pre_i of one dtype), (rows, D) with rows = B T, contiguous;
// the scales and the result are float32, computed in float32 (as torch's ops on the float32 copies do, with
// fast_math.h's sigmoid). In torch ops the update of one layer made about six (B, T, D) tensors forward and a
// dozen backward (float32 copies of bfloat16 inputs among them). dscale_i is summed in float64, each block of
// kRowBlock rows into its own slice of partial sums, the slices added in block order (partial_sums.h): the
// same bits at any thread count.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "fast_math.h"
#include "partial_sums.h"

namespace {

constexpr int64_t kRowBlock = 32;  // rows per task, and per slice of the scales' partial sums

struct Layout {
  int64_t rows, D, tokens, keep;  // keep < 0: no token kept

  bool kept(int64_t row) const { return keep >= 0 && row % tokens == keep; }
};

// h: the forward's h, or the backward's grad (the same shape).
Layout check_inputs(const at::Tensor& h, int64_t keep, at::TensorList pres, at::TensorList scales) {
  TORCH_CHECK(h.device().is_cpu() && h.is_contiguous() && (h.scalar_type() == at::kFloat ||
                                                          h.scalar_type() == at::kBFloat16),
              "prompt_update: h must be a contiguous float32 or bfloat16 CPU tensor, got ", h.scalar_type());
  TORCH_CHECK(h.dim() >= 1 && h.size(-1) > 0, "prompt_update: h must be (..., D) with D > 0, got ", h.sizes());
  TORCH_CHECK(keep < 0 || (h.dim() == 3 && keep < h.size(1)), "prompt_update: keep ", keep,
              " needs h (B, T, D) with T > keep, got ", h.sizes());
  TORCH_CHECK(!pres.empty() && pres.size() == scales.size(), "prompt_update: one scale per pre-activation");
  for (size_t i = 0; i < pres.size(); ++i) {
    TORCH_CHECK(pres[i].device().is_cpu() && pres[i].is_contiguous() && pres[i].sizes() == h.sizes() &&
                    pres[i].scalar_type() == pres[0].scalar_type() &&
                    (pres[i].scalar_type() == at::kFloat || pres[i].scalar_type() == at::kBFloat16),
                "prompt_update: every pre-activation must be a contiguous CPU tensor of h's shape ", h.sizes(),
                " and one dtype, float32 or bfloat16");
    TORCH_CHECK(scales[i].device().is_cpu() && scales[i].is_contiguous() && scales[i].dim() == 1 &&
                    scales[i].size(0) == h.size(-1) && scales[i].scalar_type() == at::kFloat,
                "prompt_update: every scale must be a contiguous float32 CPU tensor (", h.size(-1), ",)");
  }
  const int64_t D = h.size(-1);
  return {h.numel() / D, D, keep >= 0 ? h.size(1) : 1, keep};
}

template <typename H, typename P>
void forward_rows(const Layout& l, const H* h, const std::vector<const P*>& pres,
                  const std::vector<const float*>& scales, float* out) {
  at::parallel_for(0, l.rows, kRowBlock, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const H* __restrict__ hr = h + r * l.D;
      float* __restrict__ o = out + r * l.D;
      #pragma omp simd
      for (int64_t d = 0; d < l.D; ++d) o[d] = lane(hr[d]);
      if (l.kept(r)) continue;
      for (size_t i = 0; i < pres.size(); ++i) {
        const P* __restrict__ p = pres[i] + r * l.D;
        const float* __restrict__ s = scales[i];
        #pragma omp simd
        for (int64_t d = 0; d < l.D; ++d) {
          const float x = lane(p[d]);
          o[d] += s[d] * (x * sigmoid(x));
        }
      }
    }
  });
}

// One row of one pair: dp = grad * scale * silu'(pre) and part += grad * silu(pre). Both are always computed
// (into scratch rows when not asked for): with one of them left out gcc contracted the other's arithmetic
// differently, and a gradient's bits depended on which others were asked for.
template <typename P>
inline void backward_row(const float* __restrict__ g, const P* __restrict__ p, const float* __restrict__ s,
                         P* __restrict__ dp, double* __restrict__ part, int64_t D) {
  #pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    const float x = lane(p[d]), sg = sigmoid(x);
    const float v = g[d] * s[d] * (sg * (1.0f + x * (1.0f - sg)));
    if constexpr (std::is_same_v<P, float>)
      dp[d] = v;
    else
      reinterpret_cast<uint16_t*>(dp)[d] = uint16_t(bfloat16_bits<uint32_t>(v));
    part[d] += double(g[d] * (x * sg));
  }
}

// The rows of block `block` (kRowBlock rows): dpre_i, when dpre is non-empty, and the scales' partial sums of
// these rows into parts ([pair][block][D], zero-initialised; when non-null).
template <typename P>
void backward_rows(const Layout& l, const float* grad, const std::vector<const P*>& pres,
                   const std::vector<const float*>& scales, const std::vector<P*>& dpre, double* parts,
                   int64_t block, int64_t blocks) {
  const int64_t pairs = static_cast<int64_t>(pres.size());
  const int64_t begin = block * kRowBlock, end = std::min(l.rows, begin + kRowBlock);
  std::vector<P> dp_scratch(dpre.empty() ? l.D : 0);
  std::vector<double> part_scratch(parts == nullptr ? l.D : 0);
  for (int64_t r = begin; r < end; ++r) {
    const float* g = grad + r * l.D;
    for (int64_t i = 0; i < pairs; ++i) {
      P* dp = dpre.empty() ? dp_scratch.data() : dpre[i] + r * l.D;
      if (l.kept(r)) {  // the kept token: no gradient reaches its pre-activations, nor the scales
        std::fill(dp, dp + l.D, P(0.0f));
        continue;
      }
      double* part = parts == nullptr ? part_scratch.data() : parts + (i * blocks + block) * l.D;
      backward_row<P>(g, pres[i] + r * l.D, scales[i], dp, part, l.D);
    }
  }
}

template <typename T>
std::vector<const T*> data_of(at::TensorList tensors) {
  std::vector<const T*> data;
  for (const at::Tensor& t : tensors) data.push_back(t.const_data_ptr<T>());
  return data;
}

template <typename P>
void dispatch_forward(const at::Tensor& h, const Layout& l, at::TensorList pres, at::TensorList scales,
                      float* out) {
  if (h.scalar_type() == at::kFloat)
    forward_rows<float, P>(l, h.const_data_ptr<float>(), data_of<P>(pres), data_of<float>(scales), out);
  else
    forward_rows<c10::BFloat16, P>(l, h.const_data_ptr<c10::BFloat16>(), data_of<P>(pres), data_of<float>(scales),
                                   out);
}

at::Tensor prompt_fwd(const at::Tensor& h, int64_t keep, at::TensorList pres, at::TensorList scales) {
  const Layout l = check_inputs(h, keep, pres, scales);
  at::Tensor out = at::empty(h.sizes(), h.options().dtype(at::kFloat));
  if (pres[0].scalar_type() == at::kFloat)
    dispatch_forward<float>(h, l, pres, scales, out.mutable_data_ptr<float>());
  else
    dispatch_forward<c10::BFloat16>(h, l, pres, scales, out.mutable_data_ptr<float>());
  return out;
}

template <typename P>
void backward_all(const Layout& l, const at::Tensor& grad, at::TensorList pres, at::TensorList scales,
                  std::vector<at::Tensor>& dpre, std::vector<double>& parts) {
  std::vector<P*> dpre_data;
  for (at::Tensor& t : dpre) dpre_data.push_back(t.mutable_data_ptr<P>());
  const auto pre_data = data_of<P>(pres);
  const auto scale_data = data_of<float>(scales);
  const int64_t blocks = (l.rows + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b)
      backward_rows<P>(l, grad.const_data_ptr<float>(), pre_data, scale_data, dpre_data,
                       parts.empty() ? nullptr : parts.data(), b, blocks);
  });
}

// Returns [dpre_0, ..., dpre_{n-1}, dscale_0, ..., dscale_{n-1}]; empty tensors for what was not asked for.
std::vector<at::Tensor> prompt_bwd(const at::Tensor& grad, int64_t keep, at::TensorList pres, at::TensorList scales,
                                   bool need_pre, bool need_scale) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat, "prompt_update: grad must be float32, got ", grad.scalar_type());
  const Layout l = check_inputs(grad, keep, pres, scales);
  const int64_t pairs = static_cast<int64_t>(pres.size()), blocks = (l.rows + kRowBlock - 1) / kRowBlock;
  std::vector<at::Tensor> dpre;
  if (need_pre)
    for (const at::Tensor& p : pres) dpre.push_back(at::empty_like(p));
  std::vector<double> parts(need_scale ? blocks * pairs * l.D : 0);
  if (pres[0].scalar_type() == at::kFloat)
    backward_all<float>(l, grad, pres, scales, dpre, parts);
  else
    backward_all<c10::BFloat16>(l, grad, pres, scales, dpre, parts);
  std::vector<at::Tensor> result;
  for (int64_t i = 0; i < pairs; ++i) result.push_back(need_pre ? dpre[i] : at::empty({0}, grad.options()));
  for (int64_t i = 0; i < pairs; ++i) {
    at::Tensor dscale = at::empty({need_scale ? l.D : 0}, grad.options());
    if (need_scale) {  // pair i's slices, in block order
      float* out = dscale.mutable_data_ptr<float>();
      add_slices(parts.data() + i * blocks * l.D, blocks, l.D, [&](int64_t d, double sum) { out[d] = float(sum); });
    }
    result.push_back(dscale);
  }
  return result;
}

}  // namespace

TORCH_LIBRARY(vimtune_prompt_cpu, m) {
  m.def("prompt_fwd(Tensor h, int keep, Tensor[] pres, Tensor[] scales) -> Tensor", &prompt_fwd);
  m.def(
      "prompt_bwd(Tensor grad, int keep, Tensor[] pres, Tensor[] scales, bool need_pre, bool need_scale) -> Tensor[]",
      &prompt_bwd);
}
