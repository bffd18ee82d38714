// Time-major CPU kernels of Vim's bidirectional mixer, forward and backward:
//
//   conv_silu:  u[t] = silu(bias + sum_k w[k] x[t + shift(k)])      (depthwise, K taps, zero padding)
//               shift(k) = k - (K - 1) for the forward direction (causal), (K - 1) - k for the reverse
//               one (the backward branch's causal conv on the flipped sequence, in original time order).
//   scan:       dt_t = softplus(delta_t + delta_bias)                (threshold 20; optional)
//               h_t  = exp(dt_t A) h_{t-1} + dt_t B_t u_t            (h = 0 before the first step)
//               out_t = scale (C_t . h_t + D u_t) * silu(z_t)     (scale: 1, or the 1/2 of Vim's mean of the
//                                                                  two directions, so that no pass over the
//                                                                  outputs or their gradient divides by 2)
//               steps run t = 0 .. T-1, or t = T-1 .. 0 for the reverse direction.
//
// Activations are (B, T, X) tensors with unit stride over X and any stride over B and T, so column
// slices of a wider tensor (x and z of in_proj's output, B and C of x_proj's output) are read in
// place (B and C of a bfloat16 call: from float copies, see Scan). Parameters: conv weight (E, K) (the
// (E, 1, K) Conv1d weight), A (E, N), bias and D (E,).
//
// Types: the compute type S (float or double) is the parameters' dtype; activations, their gradients and
// the outputs are stored in V, which is S or, for float compute, bfloat16. bfloat16 values are read
// exactly into float and written rounded to nearest even (as Tensor.to(torch.bfloat16) rounds), so a
// bfloat16 call gives bit for bit the float call on the same values with its outputs cast to bfloat16,
// without float copies of its inputs and outputs (but the scan's small B and C, see Scan).
//
// A task owns one batch row and one block of W channels (or, in the scan backward, a group of
// blocks); the W channels are the vector lanes, so every inner loop runs over lanes (`omp simd`
// keeps gcc from unrolling those 16-trip loops into scalar code) and the state index n of the scan
// is a plain loop, with no horizontal sums in the time loop. A task walks one column strip of its
// rows (the conv kernels one native vector at a time, in one pass). Tasks are handed out from a
// shared counter, so a thread slowed down by other load simply takes fewer.
//
// The scan backward recomputes the states: it cuts the steps into chunks of at most kMaxChunk,
// takes the state at each chunk start from the forward (which keeps them, (B, E, chunks, N), when given
// a chunk_states tensor: the autograd wrapper gives one when a gradient will follow) or else finds them by
// a forward pass, then per chunk (last first) recomputes and keeps that chunk's states and decays in
// per-thread buffers and walks it backwards. Nothing of size (B, T, E, N) is ever stored. Sums over time
// and batch (dA, dD, d delta_bias, conv dweight and dbias) and over channels (dB, dC) are accumulated in
// float64 (after at most kFlush time steps, or the channel blocks of one task, in the compute dtype; dB and
// dC lane-wise over the task's channel blocks, then over the 16 lanes by a tree of pairwise sums): per task
// into (B, ...) partials (and
// (G, B, T, N) for dB and dC, G channel groups per row: min(kGroups, channel blocks, ceil(kGroupTasks /
// batch)), which depends on the shape only, never on the thread count),
// which are summed after the parallel part.
//
// float32 computes exp as 2^(x log2 e) with the branch-free exp2 of fast_math.h (relative error 1e-7),
// so that the lane loops vectorise; float64 calls libm.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fast_math.h"
#include "partial_sums.h"

namespace {

constexpr int64_t W = 16;          // channels per task block = vector lanes
static_assert(W == 16, "the whole-register paths hold a block's lanes in one Floats16 (fast_math.h)");
constexpr int64_t kMaxTaps = 8;    // largest conv kernel size
constexpr int64_t kMaxChunk = 256; // scan backward: steps whose states are kept at once (224 px: one chunk)
constexpr int64_t kGroups = 16;     // scan backward: at most this many channel groups per batch row
constexpr int64_t kGroupTasks = 64; // scan backward: fewer groups per row once batch * groups reaches this
constexpr int64_t kFlush = 32;     // steps summed in the compute dtype before a float64 flush
constexpr int64_t kAhead = 8;      // steps ahead whose rows a walk prefetches
// The scan backward's walk keeps dL/dh in vector registers when the state has this many rows (Vim's N),
// the lanes are float and full, and the CPU has AVX-512 (32 vector registers; see scan_reverse).
constexpr int64_t kRegisterStates = 16;
#if defined(__AVX512F__)
constexpr bool kRegisterWalk = true;
#else
constexpr bool kRegisterWalk = false;
#endif

// The scan backward's chunks of a T-step sequence (T >= 1): {count, steps per chunk}, at most kMaxChunk steps
// each, as equal as possible (the last one may be shorter).
inline std::pair<int64_t, int64_t> scan_chunks(int64_t T) {
  TORCH_CHECK(T >= 1, "scan: the sequence must have at least one step, got ", T);
  const int64_t count = (T + kMaxChunk - 1) / kMaxChunk;
  return {count, (T + count - 1) / count};
}
// Steps whose step sizes the scan forward and the backward's checkpoint pass compute together (see
// scan_forward_block). With AVX-512, 8. With AVX2 (16 vector registers), 1: a block of 8 kept its rows of step
// sizes in memory and the forward took 1.2x the time of the one-step form, which the compiler makes of kSteps = 1
// (AMD EPYC family 25 model 1, one thread, the same bits; 2 and 4 steps were no better than 8).
#if defined(__AVX512F__)
constexpr int64_t kSteps = 8;
#else
constexpr int64_t kSteps = 1;
#endif

// ---------------------------------------------------------------- shared plumbing

// A compute value in the activation storage type V.
template <typename V, typename S>
inline V stored(S v) {
  if constexpr (std::is_same_v<V, c10::BFloat16>) {
    return c10::BFloat16(v);  // round to nearest even; NaN stays NaN
  } else {
    return v;
  }
}

// dst = v stored in V, or with kAccumulate dst += v as torch adds two stored tensors: v rounded as stored, then
// added, and the sum stored. Where V is S, "+ 0" keeps gcc from fusing the product that makes v into the
// addition, which would round once less; it also makes -0 + -0 give +0 there (torch: -0). A bfloat16 v is
// rounded by integer operations first, which no fusion crosses, so there -0 + -0 stays -0 as in torch.
template <bool kAccumulate, typename V, typename S>
inline void store_or_add(V& dst, S v) {
  if constexpr (kAccumulate && std::is_same_v<V, S>) {
    dst = lane(dst) + (v + S(0));
  } else if constexpr (kAccumulate) {
    dst = stored<V>(lane(dst) + lane(stored<V>(v)));
  } else {
    dst = stored<V>(v);
  }
}

// A (B, T, X) tensor with unit stride over X.
template <typename P>
struct Rows {
  P* data;
  int64_t batch_stride, time_stride;

  P* at(int64_t b, int64_t t, int64_t x0) const { return data + b * batch_stride + t * time_stride + x0; }
};

// Prefetches, for every Rows r in `rows`, the line of r.at(b, t, e0); t must be in [0, T) (the callers check
// the step). A task walks its column strip one time step at a time, and the rows of (B, T, X) tensors are
// kilobytes apart: every step reads new pages, which the hardware prefetchers do not run ahead into. Once
// the tensors no longer fit in the caches, every step waited for memory: at (32, 197, 768), one thread,
// on an Intel Xeon, the scan forward took 1.6x and its backward 1.8x as long as with these prefetches
// kAhead steps ahead (no change at (8, 197, 384), which stays in cache). always_inline: gcc 12 judged an
// out-of-line copy free of side effects and dropped the calls, prefetches included.
template <typename... R>
[[gnu::always_inline]] inline void prefetch_rows(int64_t b, int64_t t, int64_t e0, const R&... rows) {
  (__builtin_prefetch(rows.at(b, t, e0)), ...);
}

template <typename V>
Rows<const V> rows_in(const at::Tensor& t) {
  return {t.const_data_ptr<V>(), t.stride(0), t.stride(1)};
}

template <typename V>
Rows<V> rows_out(const at::Tensor& t) {
  return {t.mutable_data_ptr<V>(), t.stride(0), t.stride(1)};
}

void check_rows(const at::Tensor& t, at::ScalarType dtype, int64_t batch, int64_t T, int64_t width,
                const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(1) == T && t.size(2) == width, name, " must be (",
              batch, ", ", T, ", ", width, "), got ", t.sizes());
  TORCH_CHECK(t.stride(2) == 1 || width == 1, name, " must have unit stride over its last dimension");
}

void check_param(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous() && t.numel() == numel, name, " must be contiguous with ", numel, " elements");
}

// Channels [e0, e0 + valid) of one block.
struct Lanes {
  int64_t e0, valid;
};

inline Lanes block_lanes(int64_t cb, int64_t E) { return {cb * W, std::min(W, E - cb * W)}; }

// The channel block of task i when each of the tasks [b * n_cb, (b + 1) * n_cb) owns one block of row b
// (the row is i / n_cb). Within a row, even tasks take the first half of the blocks and odd ones the
// second: tasks are handed out in order, so two threads start on blocks half a row apart rather than on
// neighbours, whose bfloat16 rows (16 lanes, 32 bytes) share cache lines that both would write step by
// step (that sharing slowed a 2-thread bfloat16 conv over short sequences by up to 1.7x).
inline Lanes task_lanes(int64_t i, int64_t n_cb, int64_t E) {
  const int64_t j = i % n_cb;
  return block_lanes(j % 2 == 0 ? j / 2 : (n_cb + 1) / 2 + j / 2, E);
}

// Runs task(i, workspace) for i in [0, n_tasks) on torch's intra-op threads, one Workspace per thread.
template <typename Workspace, typename F>
void for_each_task(int64_t n_tasks, const F& task) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(n_tasks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    Workspace ws;
    for (int64_t i = next++; i < n_tasks; i = next++) task(i, ws);
  });
}

// Calls body.template operator()<NV>(lanes): NV = W for a full block (constant trip counts), 0 otherwise.
template <typename F>
void dispatch_lanes(const Lanes& lanes, const F& body) {
  if (lanes.valid == W) {
    body.template operator()<W>(lanes);
  } else {
    body.template operator()<0>(lanes);
  }
}

// Calls body(S{}, V{}) for the compute type S (the parameters' dtype) and the activations' storage type V.
template <typename F>
void dispatch_types(at::ScalarType activations, at::ScalarType params, const char* op, const F& body) {
  if (params == at::kFloat && activations == at::kFloat) {
    body(float{}, float{});
  } else if (params == at::kFloat && activations == at::kBFloat16) {
    body(float{}, c10::BFloat16{});
  } else if (params == at::kDouble && activations == at::kDouble) {
    body(double{}, double{});
  } else {
    TORCH_CHECK(false, op, ": activations float32 or bfloat16 with float32 parameters, or float64 with float64, got ",
                activations, " and ", params);
  }
}

// Calls body.template operator()<flag>() with the runtime flag as a compile-time one.
template <typename F>
void dispatch_flag(bool flag, const F& body) {
  if (flag) {
    body.template operator()<true>();
  } else {
    body.template operator()<false>();
  }
}

// An output of shape `sizes`, or an empty (0-element) tensor when it is not wanted.
at::Tensor wanted(bool want, at::IntArrayRef sizes, const at::TensorOptions& options) {
  return want ? at::empty(sizes, options) : at::empty({0}, options);
}

// The caller's `given` output (checked to be (batch, T, width) rows of dtype), or a fresh one like `like`.
at::Tensor output_rows(const std::optional<at::Tensor>& given, const at::Tensor& like, int64_t batch, int64_t T,
                       int64_t width, const char* name) {
  if (!given.has_value()) return at::empty(like.sizes(), like.options());
  check_rows(*given, like.scalar_type(), batch, T, width, name);
  return *given;
}

// Uninitialised float64 buffer for per-task partial sums (every entry is written by one task).
using Partials = std::unique_ptr<double[]>;

Partials partials(int64_t n) { return std::make_unique_for_overwrite<double[]>(n); }

// out[i] = sum_r parts[r * n + i] for i < n, r < rows (float64 sums in row order, add_slices of
// partial_sums.h, written in S, then stored as O).
template <typename S, typename O>
void sum_rows(const Partials& parts, int64_t rows, int64_t n, O* out) {
  add_slices(parts.get(), rows, n, [out](int64_t i, double sum) { out[i] = stored<O>(S(sum)); });
}

// ---------------------------------------------------------------- lane sums

// W lanes of S as one GCC vector (two or four native vectors where those are narrower).
template <typename S>
struct LaneVecOf {
  typedef S type __attribute__((vector_size(W * sizeof(S))));
};
template <typename S>
using LaneVec = typename LaneVecOf<S>::type;

// Pairwise sums of the lanes of a and b, in order: (a0 + a1, a2 + a3, ..., a14 + a15, b0 + b1, ..., b14 + b15).
template <typename S>
inline LaneVec<S> pair_sums(LaneVec<S> a, LaneVec<S> b) {
  static_assert(W == 16, "pair_sums is written for 16 lanes");
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// Sums of `rows` (at most W) rows of W lanes at `lanes` (row k at lanes + k * W): sum[k] = the sum of row k's
// lanes, as a tree of pairwise sums (the same order for every row, 15 pair_sums for the W rows instead of W
// horizontal sums); sum[k] = 0 for k >= rows. The rows are then set to zero.
template <typename S>
inline LaneVec<S> take_row_sums(S* lanes, int64_t rows) {
  LaneVec<S> v[W] = {};
  std::memcpy(v, lanes, rows * sizeof v[0]);
  std::memset(lanes, 0, rows * sizeof v[0]);
  for (int64_t width = W / 2; width >= 1; width /= 2)
    for (int64_t k = 0; k < width; ++k) v[k] = pair_sums<S>(v[2 * k], v[2 * k + 1]);
  return v[0];
}

// ---------------------------------------------------------------- causal conv + SiLU
//
// In causal position p (p = t for the forward direction, T - 1 - t for the reverse one) the conv reads
// positions p - K + 1 .. p: pre[p] = bias + sum_k w[k] x[p - K + 1 + k]. A task's W channels are cut into
// native vectors (GCC vector types of kVectorBytes); each vector walks the whole sequence once, with its
// K-tap window of x (and in the backward the last K values of g = dL/dpre) in arrays of vectors that
// shift by one slot per step: with K = 4 known at compile time (Vim's kernel size) they live in registers.

#if defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
#else
constexpr int64_t kVectorBytes = 32;
#endif

// A native vector of S lanes, and its lane count.
template <typename S>
struct NativeVec {
  typedef S type __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t lanes = kVectorBytes / int64_t(sizeof(S));
};
template <typename S>
using Vec = typename NativeVec<S>::type;
// The float vector's lanes as bfloat16 bits and as float bits.
typedef uint16_t HalfVec __attribute__((vector_size(kVectorBytes / 2)));
typedef uint32_t WordVec __attribute__((vector_size(kVectorBytes)));

// silu(v) lane by lane, and silu'(v) = s (1 + v (1 - s)) with s = sigmoid(v): the arithmetic of the
// scalar sigmoid (fast_math.h), on a whole vector (float) or lane by lane through libm (double).
inline Vec<float> sigmoid_vec(Vec<float> v) { return sigmoid_lanes(v); }
inline Vec<double> sigmoid_vec(Vec<double> v) {
  Vec<double> s;
  for (int64_t i = 0; i < NativeVec<double>::lanes; ++i) s[i] = sigmoid(double(v[i]));
  return s;
}

// The n (all when kFull) channels at src as a vector of S, zero in the other lanes.
template <bool kFull, typename S, typename V>
inline Vec<S> load_vec(const V* src, int64_t n) {
  Vec<S> v = {};
  if constexpr (kFull && std::is_same_v<V, S>) {
    std::memcpy(&v, src, sizeof v);
  } else if constexpr (kFull) {  // bfloat16 -> float: the 16 bits become the upper half
    HalfVec h;
    std::memcpy(&h, src, sizeof h);
    v = std::bit_cast<Vec<S>>(__builtin_convertvector(h, WordVec) << 16);
  } else {
    for (int64_t i = 0; i < n; ++i) v[i] = lane(src[i]);
  }
  return v;
}

// The first nv values of a stored row (W lanes) as compute values: the row itself when V is S, else widened
// into buf, a whole native vector at a time when NV = W. A loop over compute values that read bfloat16 lanes
// itself ran, with AVX-512, on 256-bit halves (gcc sized its vectors for the 16-bit loads): twice the
// instructions of the float32 build.
template <int64_t NV, typename S, typename V>
inline const S* widened(const V* __restrict__ row, S (&buf)[W], int64_t nv) {
  if constexpr (std::is_same_v<V, S>) {
    return row;
  } else if constexpr (NV == W) {
    constexpr int64_t lanes = NativeVec<S>::lanes;
    for (int64_t k = 0; k < W; k += lanes) {
      const Vec<S> v = load_vec<true, S>(row + k, lanes);
      std::memcpy(buf + k, &v, sizeof v);
    }
    return buf;
  } else {
    for (int64_t w = 0; w < nv; ++w) buf[w] = lane(row[w]);
    return buf;
  }
}

// Stores the first n (all when kFull) lanes of v at dst, bfloat16 rounded to nearest even as c10 does.
template <bool kFull, typename S, typename V>
inline void store_vec(V* dst, Vec<S> v, int64_t n) {
  if constexpr (kFull && std::is_same_v<V, S>) {
    std::memcpy(dst, &v, sizeof v);
  } else if constexpr (kFull) {
    const HalfVec h = __builtin_convertvector(bfloat16_bits<WordVec>(v), HalfVec);
    std::memcpy(dst, &h, sizeof h);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = stored<V>(S(v[i]));
  }
}

// v as a store to V keeps it, read back (v itself when V is S).
template <bool kFull, typename S, typename V>
inline Vec<S> as_stored(Vec<S> v, int64_t n) {
  if constexpr (std::is_same_v<V, S>) {
    return v;
  } else {
    V kept[NativeVec<S>::lanes];
    store_vec<kFull, S>(kept, v, n);
    return load_vec<kFull, S>(kept, n);
  }
}

// Stores the first n (all when kFull) lanes of v at dst, or with `accumulate` adds them as torch adds two stored
// tensors: v rounded as stored, then added, and the sum stored.
template <bool kFull, typename S, typename V>
inline void store_or_add_vec(V* dst, Vec<S> v, int64_t n, bool accumulate) {
  if (accumulate) v = load_vec<kFull, S>(dst, n) + as_stored<kFull, S, V>(v, n);
  store_vec<kFull, S>(dst, v, n);
}

// store_or_add over the first nv lanes of a row: whole native vectors when NV = W and V is bfloat16 (its
// rounding of fast_math.h, the bits of c10's), lane by lane otherwise.
template <int64_t NV, bool kAccumulate, typename S, typename V>
inline void store_or_add_row(V* __restrict__ dst, const S* __restrict__ v, int64_t nv) {
  if constexpr (NV == W && !std::is_same_v<V, S>) {
    constexpr int64_t lanes = NativeVec<S>::lanes;
    for (int64_t k = 0; k < W; k += lanes) {
      Vec<S> x;
      std::memcpy(&x, v + k, sizeof x);
      store_or_add_vec<true, S>(dst + k, x, lanes, kAccumulate);
    }
  } else {
    #pragma omp simd
    for (int64_t w = 0; w < nv; ++w) store_or_add<kAccumulate>(dst[w], v[w]);
  }
}

template <typename S, typename V>
struct Conv {
  Rows<const V> x;  // (B, T, E)
  const S* weight;  // (E, K)
  const S* bias;    // (E,)
  int64_t batch, T, E, K;
  bool reverse;

  int64_t time(int64_t p) const { return reverse ? T - 1 - p : p; }

  // x at position p of row b, channels [e0, e0 + n); zero outside [0, T).
  template <bool kFull>
  Vec<S> x_at(int64_t b, int64_t p, int64_t e0, int64_t n) const {
    return p >= 0 && p < T ? load_vec<kFull, S>(x.at(b, time(p), e0), n) : Vec<S>{};
  }

  // Taps and bias of channels [e0, e0 + n) as vectors (zero in the lanes past n).
  void load_params(int64_t e0, int64_t n, Vec<S> (&taps)[kMaxTaps], Vec<S>& lane_bias) const {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < K; ++k) taps[k][i] = weight[(e0 + i) * K + k];
      lane_bias[i] = bias[e0 + i];
    }
  }
};

// bias + sum_k taps[k] win[k] (win[k]: x at position p - K + 1 + k), summed in this order in both passes.
template <typename S>
inline Vec<S> preactivation(int64_t K, const Vec<S> (&taps)[kMaxTaps], Vec<S> lane_bias, const Vec<S> (&win)[kMaxTaps]) {
  Vec<S> pre = lane_bias;
  for (int64_t k = 0; k < K; ++k) pre += taps[k] * win[k];
  return pre;
}

// Channels [e0, e0 + n) of row b (n = all lanes when kFull); K = KC when KC > 0.
template <int64_t KC, bool kFull, typename S, typename V>
void conv_forward_lanes(const Conv<S, V>& c, const Rows<V>& out, int64_t b, int64_t e0, int64_t n) {
  const int64_t K = KC > 0 ? KC : c.K;
  Vec<S> taps[kMaxTaps] = {}, lane_bias = {}, win[kMaxTaps] = {};
  c.load_params(e0, n, taps, lane_bias);
  for (int64_t p = 0; p < c.T; ++p) {
    if (p + kAhead < c.T) prefetch_rows(b, c.time(p + kAhead), e0, c.x, out);
    for (int64_t k = 0; k + 1 < K; ++k) win[k] = win[k + 1];
    win[K - 1] = load_vec<kFull, S>(c.x.at(b, c.time(p), e0), n);
    const Vec<S> pre = preactivation<S>(K, taps, lane_bias, win);
    store_vec<kFull, S>(out.at(b, c.time(p), e0), pre * sigmoid_vec(pre), n);
  }
}

template <typename V>
struct ConvGrads {
  Rows<const V> dout;  // (B, T, E)
  Rows<V> dx;          // (B, T, E)
  double* dweight;     // (B, E, K) partial sums per batch row
  double* dbias;       // (B, E)
  bool accumulate;     // dx += the gradient (both rounded to V, as a torch add of two V tensors), not dx =
};

// Walks the positions down from T - 1, so that g at p + K - 1 .. p, which dx[p] = sum_k w[k] g[p + K - 1 - k]
// needs, is known when dx[p] is written: one pass reads x and dout once and writes dx once. Without
// kParamGrads (frozen weight and bias) only dx is computed.
template <int64_t KC, bool kFull, bool kParamGrads, typename S, typename V>
void conv_backward_lanes(const Conv<S, V>& c, const ConvGrads<V>& gr, int64_t b, int64_t e0, int64_t n) {
  const int64_t K = KC > 0 ? KC : c.K, T = c.T;
  Vec<S> taps[kMaxTaps] = {}, lane_bias = {};
  c.load_params(e0, n, taps, lane_bias);
  Vec<S> win[kMaxTaps], g[kMaxTaps] = {};  // x at p - K + 1 + k; g at p + K - 1 - k
  for (int64_t k = 0; k < K; ++k) win[k] = c.template x_at<kFull>(b, T - K + 1 + k, e0, n);  // as at p = T
  Vec<S> dw_part[kMaxTaps] = {}, db_part = {};
  double dw[kMaxTaps][NativeVec<S>::lanes] = {}, db[NativeVec<S>::lanes] = {};
  for (int64_t p = T - 1; p >= 0; --p) {
    if (p - K + 1 >= kAhead) prefetch_rows(b, c.time(p - K + 1 - kAhead), e0, c.x);
    if (p >= kAhead) prefetch_rows(b, c.time(p - kAhead), e0, gr.dout, gr.dx);
    for (int64_t k = K - 1; k > 0; --k) win[k] = win[k - 1];
    win[0] = c.template x_at<kFull>(b, p - K + 1, e0, n);
    for (int64_t k = 0; k + 1 < K; ++k) g[k] = g[k + 1];
    const Vec<S> pre = preactivation<S>(K, taps, lane_bias, win), s = sigmoid_vec(pre);
    const Vec<S> gp = load_vec<kFull, S>(gr.dout.at(b, c.time(p), e0), n) * s * (S(1) + pre * (S(1) - s));
    g[K - 1] = gp;
    Vec<S> dx = {};
    for (int64_t k = 0; k < K; ++k) dx += taps[k] * g[k];
    store_or_add_vec<kFull, S>(gr.dx.at(b, c.time(p), e0), dx, n, gr.accumulate);
    if constexpr (kParamGrads) {
      db_part += gp;
      for (int64_t k = 0; k < K; ++k) dw_part[k] += gp * win[k];
      if ((T - p) % kFlush == 0 || p == 0) {
        for (int64_t i = 0; i < NativeVec<S>::lanes; ++i) {
          for (int64_t k = 0; k < K; ++k) dw[k][i] += double(dw_part[k][i]);
          db[i] += double(db_part[i]);
        }
        for (int64_t k = 0; k < K; ++k) dw_part[k] = Vec<S>{};
        db_part = Vec<S>{};
      }
    }
  }
  if constexpr (kParamGrads) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t be = b * c.E + e0 + i;
      for (int64_t k = 0; k < K; ++k) gr.dweight[be * K + k] = dw[k][i];
      gr.dbias[be] = db[i];
    }
  }
}

// Calls body.template operator()<KC, kFull>(e0, n) for each vector of the block's channels: KC = 4 for
// Vim's kernel size (the windows in registers), else 0 (K read at run time); kFull for a whole vector.
template <typename S, typename F>
void for_each_vector(const Lanes& l, int64_t K, const F& body) {
  constexpr int64_t L = NativeVec<S>::lanes;
  for (int64_t e0 = l.e0; e0 < l.e0 + l.valid; e0 += L) {
    const int64_t n = std::min(L, l.e0 + l.valid - e0);
    const auto taps = [&]<int64_t KC>() {
      if (n == L) {
        body.template operator()<KC, true>(e0, n);
      } else {
        body.template operator()<KC, false>(e0, n);
      }
    };
    if (K == 4) {
      taps.template operator()<4>();
    } else {
      taps.template operator()<0>();
    }
  }
}

template <typename S, typename V>
Conv<S, V> make_conv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool reverse) {
  TORCH_CHECK(x.dim() == 3, "conv_silu: x must be (B, T, E)");
  const int64_t batch = x.size(0), T = x.size(1), E = x.size(2);
  TORCH_CHECK(T >= 1 && E > 0 && weight.numel() % E == 0, "conv_silu: T >= 1 and E * K weights needed");
  const int64_t K = weight.numel() / E;
  TORCH_CHECK(K >= 1 && K <= kMaxTaps, "conv_silu: kernel size must be in [1, ", kMaxTaps, "]");
  check_rows(x, x.scalar_type(), batch, T, E, "x");
  check_param(weight, weight.scalar_type(), E * K, "weight");
  check_param(bias, weight.scalar_type(), E, "bias");
  return Conv<S, V>{rows_in<V>(x), weight.const_data_ptr<S>(), bias.const_data_ptr<S>(), batch, T, E, K, reverse};
}

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool reverse) {
  at::Tensor out = at::empty(x.sizes(), x.options());
  dispatch_types(x.scalar_type(), weight.scalar_type(), "conv_silu", [&](auto s, auto v) {
    using S = decltype(s);
    using V = decltype(v);
    const Conv<S, V> c = make_conv<S, V>(x, weight, bias, reverse);
    const Rows<V> o = rows_out<V>(out);
    const int64_t n_cb = (c.E + W - 1) / W;
    struct None {};
    for_each_task<None>(c.batch * n_cb, [&](int64_t i, None&) {
      for_each_vector<S>(task_lanes(i, n_cb, c.E), c.K, [&]<int64_t KC, bool kFull>(int64_t e0, int64_t n) {
        conv_forward_lanes<KC, kFull>(c, o, i / n_cb, e0, n);
      });
    });
  });
  return out;
}

// Returns dx (B, T, E), dweight (E, K), dbias (E,); dweight and dbias are empty without param_grads. With
// dx_out, dx is written into it (added to it with accumulate) and the dx returned is empty (an op's outputs
// do not alias its inputs).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& weight,
                                                        const at::Tensor& bias, bool reverse,
                                                        const at::Tensor& dout, bool param_grads,
                                                        const std::optional<at::Tensor>& dx_out, bool accumulate) {
  TORCH_CHECK(dx_out.has_value() || !accumulate, "conv_bwd: accumulate needs dx_out");
  TORCH_CHECK(x.dim() == 3, "conv_silu: x must be (B, T, E)");
  at::Tensor dx = output_rows(dx_out, x, x.size(0), x.size(1), x.size(2), "dx_out");
  at::Tensor dweight = wanted(param_grads, weight.sizes(), weight.options());
  at::Tensor dbias = wanted(param_grads, bias.sizes(), bias.options());
  dispatch_types(x.scalar_type(), weight.scalar_type(), "conv_silu", [&](auto s, auto v) {
    using S = decltype(s);
    using V = decltype(v);
    const Conv<S, V> c = make_conv<S, V>(x, weight, bias, reverse);
    check_rows(dout, x.scalar_type(), c.batch, c.T, c.E, "dout");
    const int64_t param_rows = param_grads ? c.batch : 0;
    const Partials dw_rows = partials(param_rows * c.E * c.K), db_rows = partials(param_rows * c.E);
    const ConvGrads<V> gr{rows_in<V>(dout), rows_out<V>(dx), dw_rows.get(), db_rows.get(), accumulate};
    const int64_t n_cb = (c.E + W - 1) / W;
    struct None {};
    dispatch_flag(param_grads, [&]<bool kParamGrads>() {
      for_each_task<None>(c.batch * n_cb, [&](int64_t i, None&) {
        for_each_vector<S>(task_lanes(i, n_cb, c.E), c.K,
                           [&]<int64_t KC, bool kFull>(int64_t e0, int64_t n) {
                             conv_backward_lanes<KC, kFull, kParamGrads>(c, gr, i / n_cb, e0, n);
                           });
      });
    });
    if (param_grads) {
      sum_rows<S>(dw_rows, c.batch, c.E * c.K, dweight.mutable_data_ptr<S>());
      sum_rows<S>(db_rows, c.batch, c.E, dbias.mutable_data_ptr<S>());
    }
  });
  return {dx_out.has_value() ? at::empty({0}, dx.options()) : dx, dweight, dbias};
}

// ---------------------------------------------------------------- selective scan

template <typename S, typename V>
struct Scan {
  Rows<const V> u, delta, z;  // (B, T, E)
  // B and C (B, T, N) in the compute type S. A bfloat16 call reads them from float copies made once per call
  // (N / E of u's size): every channel block broadcasts each of their values to a register once per state,
  // and a bfloat16 value took two more vector instructions there (a move from a general register and the
  // broadcast) than a float one broadcast straight from memory (18 instead of 14 in the forward's loop per state).
  at::Tensor B_compute, C_compute;
  Rows<const S> Bm, Cm;
  const S* A;                 // (E, N)
  const S* D;                 // (E,)
  const S* bias;              // (E,)
  int64_t batch, T, E, N;
  bool softplus, reverse;
  S out_scale;                // the output's factor; the backward multiplies dL/dout by it as it reads it

  int64_t time(int64_t step) const { return reverse ? T - 1 - step : step; }
};

// The block's parameters as lanes (zero in unused lanes): A[n][w] times kExpScale (the decay is
// exp_scaled(dt * A_scaled)), A itself, D[w], bias[w].
template <typename S>
struct ScanParams {
  std::vector<S> A_scaled, A;
  S D[W] = {}, bias[W] = {};

  template <typename V>
  ScanParams(const Scan<S, V>& p, const Lanes& l) : A_scaled(p.N * W, S(0)), A(p.N * W, S(0)) {
    for (int64_t w = 0; w < l.valid; ++w) {
      for (int64_t n = 0; n < p.N; ++n) {
        A[n * W + w] = p.A[(l.e0 + w) * p.N + n];
        A_scaled[n * W + w] = A[n * W + w] * kExpScale<S>;
      }
      D[w] = p.D[l.e0 + w];
      bias[w] = p.bias[l.e0 + w];
    }
  }
};

// Step sizes at time t: dt = softplus(delta + bias) (or delta + bias), slope = d dt / d delta; dtu = dt u.
template <int64_t NV, typename S, typename V>
inline void step_sizes(const Scan<S, V>& p, const ScanParams<S>& prm, const Lanes& l, int64_t b, int64_t t,
                       S* __restrict__ dt, S* __restrict__ slope, S* __restrict__ dtu) {
  const int64_t nv = NV > 0 ? NV : l.valid;
  S d_buf[W], u_buf[W];
  const S* __restrict__ d = widened<NV>(p.delta.at(b, t, l.e0), d_buf, nv);
  const S* __restrict__ u = widened<NV>(p.u.at(b, t, l.e0), u_buf, nv);
  if (p.softplus) {
    #pragma omp simd
    for (int64_t w = 0; w < nv; ++w) softplus(d[w] + prm.bias[w], dt[w], slope[w]);
  } else {
    #pragma omp simd
    for (int64_t w = 0; w < nv; ++w) {
      dt[w] = d[w] + prm.bias[w];
      slope[w] = S(1);
    }
  }
  #pragma omp simd
  for (int64_t w = 0; w < nv; ++w) dtu[w] = dt[w] * u[w];
}

// Step sizes of the steps [s0, s0 + len), len <= kSteps, into rows 0 .. len - 1 of dt, slope and dtu; prefetches
// the rows of `ahead` kAhead steps ahead. The first of the passes of scan_forward_block and block_start.
template <int64_t NV, typename S, typename V, typename... R>
inline void step_sizes_block(const Scan<S, V>& p, const ScanParams<S>& prm, const Lanes& l, int64_t b, int64_t s0,
                             int64_t len, S (&dt)[kSteps][W], S (&slope)[kSteps][W], S (&dtu)[kSteps][W],
                             const R&... ahead) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t s = s0 + i;
    if (s + kAhead < p.T) prefetch_rows(b, p.time(s + kAhead), l.e0, ahead...);
    step_sizes<NV>(p, prm, l, b, p.time(s), dt[i], slope[i], dtu[i]);
  }
}

// One step of the recurrence at time t: h_out[n] = a[n] h_in[n] + dtu B_t[n] with a[n] = exp(dt A[n]);
// acc += C_t . h_out. With kRecompute (the backward's recompute) it also keeps a[n] in decay[n] and adds
// dy h_out[n] to dC[n], the lanes of dL/dC_t[n] (dy = dL/dy_t). h_in may be h_out. The sum runs in a local
// copy of acc: summed in place, each of its N additions waited for the previous one's store to be
// loaded back (a caller's acc row picked by a run-time index stays in memory), a chain that took
// more time than the exps.
template <int64_t NV, bool kRecompute, typename S, typename V>
inline void advance(const Scan<S, V>& p, const ScanParams<S>& prm, const Lanes& l, int64_t b, int64_t t,
                    const S* dt, const S* dtu, const S* h_in, S* h_out, S* decay, S* __restrict__ acc_out,
                    const S* dy = nullptr, S* dC = nullptr) {
  const int64_t nv = NV > 0 ? NV : l.valid;
  const S* __restrict__ Bt = p.Bm.at(b, t, 0);
  const S* __restrict__ Ct = p.Cm.at(b, t, 0);
  if constexpr (kVectorExp && NV == W && std::is_same_v<S, float>) {
    // Whole registers, for exp2_lanes' AVX-512 form; the same arithmetic as the loop below.
    Floats16 acc, dt16, dtu16, dy16 = {};
    std::memcpy(&acc, acc_out, sizeof acc);
    std::memcpy(&dt16, dt, sizeof dt16);
    std::memcpy(&dtu16, dtu, sizeof dtu16);
    if constexpr (kRecompute) std::memcpy(&dy16, dy, sizeof dy16);
    for (int64_t n = 0; n < p.N; ++n) {
      Floats16 As, hi;
      std::memcpy(&As, prm.A_scaled.data() + n * W, sizeof As);
      std::memcpy(&hi, h_in + n * W, sizeof hi);
      const Floats16 a = exp2_lanes(dt16 * As);
      const Floats16 h = a * hi + dtu16 * Bt[n];
      if constexpr (kRecompute) {
        Floats16 dCn;
        std::memcpy(decay + n * W, &a, sizeof a);
        std::memcpy(&dCn, dC + n * W, sizeof dCn);
        dCn += dy16 * h;
        std::memcpy(dC + n * W, &dCn, sizeof dCn);
      }
      std::memcpy(h_out + n * W, &h, sizeof h);
      acc += Ct[n] * h;
    }
    std::memcpy(acc_out, &acc, sizeof acc);
    return;
  }
  S acc[W];
  #pragma omp simd
  for (int64_t w = 0; w < nv; ++w) acc[w] = acc_out[w];
  for (int64_t n = 0; n < p.N; ++n) {
    const S bn = Bt[n], cn = Ct[n];
    const S* As = prm.A_scaled.data() + n * W;
    const S* hi = h_in + n * W;
    S* ho = h_out + n * W;
    S* an = kRecompute ? decay + n * W : nullptr;
    S* dCn = kRecompute ? dC + n * W : nullptr;
    #pragma omp simd
    for (int64_t w = 0; w < nv; ++w) {
      const S a = exp_scaled(dt[w] * As[w]);
      const S h = a * hi[w] + dtu[w] * bn;
      if constexpr (kRecompute) {
        an[w] = a;
        dCn[w] += dy[w] * h;
      }
      ho[w] = h;
      acc[w] += cn * h;
    }
  }
  #pragma omp simd
  for (int64_t w = 0; w < nv; ++w) acc_out[w] = acc[w];
}

// The scan of one channel block of row b, written to `out` (added to it with `accumulate`). With `state`
// ((B, E, N), or null): starts from the state it
// holds instead of zero and leaves the state after the last step in it (a sequence scanned in pieces). With
// `chunk_states` ([chunks][N][W] of this block, see scan_chunks, or null): keeps there the state before each of
// the backward's chunks, which the backward would otherwise find by running the recurrence again.
// The steps run in blocks of kSteps, each in three passes: step sizes (and D u), the recurrence, the gate.
// A step's step sizes and gate do not depend on the state, so computing them a block at a time lets their
// exps and divisions overlap; done inside each step they waited on the state's chain (and it on them) and
// took a third of the time with AVX-512 (on AVX2 the opposite: kSteps is 1 there). The arithmetic of each value
// is the same either way.
template <int64_t NV, typename S, typename V>
void scan_forward_block(const Scan<S, V>& p, const Rows<V>& out, bool accumulate, int64_t b, const Lanes& l,
                        std::vector<S>& h, S* state, S* chunk_states) {
  const int64_t nv = NV > 0 ? NV : l.valid, chunk = scan_chunks(p.T).second;
  const ScanParams<S> prm(p, l);
  S* lane_state = state ? state + (b * p.E + l.e0) * p.N : nullptr;  // [w][n] of this block
  h.assign(p.N * W, S(0));
  if (lane_state)
    for (int64_t w = 0; w < nv; ++w)
      for (int64_t n = 0; n < p.N; ++n) h[n * W + w] = lane_state[w * p.N + n];
  for (int64_t s0 = 0; s0 < p.T; s0 += kSteps) {
    const int64_t len = std::min(kSteps, p.T - s0);
    S dt[kSteps][W], slope[kSteps][W], dtu[kSteps][W], acc[kSteps][W];
    step_sizes_block<NV>(p, prm, l, b, s0, len, dt, slope, dtu, p.u, p.delta, p.z, out);
    for (int64_t i = 0; i < len; ++i) {
      S u_buf[W];
      const S* __restrict__ u = widened<NV>(p.u.at(b, p.time(s0 + i), l.e0), u_buf, nv);
      #pragma omp simd
      for (int64_t w = 0; w < nv; ++w) acc[i][w] = prm.D[w] * u[w];
    }
    for (int64_t i = 0; i < len; ++i) {
      if (chunk_states != nullptr && (s0 + i) % chunk == 0)
        std::copy(h.begin(), h.end(), chunk_states + (s0 + i) / chunk * p.N * W);
      advance<NV, false>(p, prm, l, b, p.time(s0 + i), dt[i], dtu[i], h.data(), h.data(), static_cast<S*>(nullptr),
                         acc[i]);
    }
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = p.time(s0 + i);
      S z_buf[W];
      const S* __restrict__ z = widened<NV>(p.z.at(b, t, l.e0), z_buf, nv);
      #pragma omp simd
      for (int64_t w = 0; w < nv; ++w) {
        acc[i][w] *= z[w] * sigmoid(z[w]);  // y silu(z), silu first as in torch: no inf * 0
        acc[i][w] *= p.out_scale;           // a power of two (or 1): exact but where it makes a subnormal
      }
      V* __restrict__ o = out.at(b, t, l.e0);
      dispatch_flag(accumulate, [&]<bool kAccumulate>() { store_or_add_row<NV, kAccumulate>(o, acc[i], nv); });
    }
  }
  if (lane_state)
    for (int64_t w = 0; w < nv; ++w)
      for (int64_t n = 0; n < p.N; ++n) lane_state[w * p.N + n] = h[n * W + w];
}

template <typename V>
struct ScanGrads {
  Rows<const V> dout;         // (B, T, E)
  Rows<V> du, ddelta, dz;     // (B, T, E)
  double* dA;                 // (B, E, N) partial sums per batch row
  double* dD;                 // (B, E)
  double* dbias;              // (B, E)
  double* dB;                 // (G, B, T, N) partial sums per channel group
  double* dC;                 // (G, B, T, N)
  int64_t groups, chunk;
  bool accumulate_dz;         // dz += the gradient (both rounded to V, as a torch add of two V tensors), not dz =
};

// What one channel block of a backward task carries from chunk to chunk.
template <typename S>
struct BlockCarry {
  std::vector<S> ckpt;             // [chunks][N][W]: state before each chunk
  std::vector<S> carry, dA_part;   // [N][W]: dL/dh flowing to earlier steps; dA sums since the last flush
  std::vector<double> dA;          // [N][W]
  double dD[W] = {}, dbias[W] = {};
};

// Per-thread buffers of the scan backward.
template <typename S>
struct ScanWork {
  std::vector<S> hs, decay;        // [chunk + 1][N][W] states (row 0: before the chunk), [chunk][N][W] decays
  std::vector<S> dt, slope, dtu;   // [chunk][W]: step sizes, their slope, step size times u
  std::vector<S> y, dy, gate;      // [chunk][W]: y (C . h + D u) and dL/dy, before the gate; sigmoid(z)
  std::vector<S> dB, dC;           // [chunk][N][W]: lane-wise dL/dB_t, dL/dC_t of the chunk's steps over the
                                   // task's channel blocks (zero between chunks)
  std::vector<BlockCarry<S>> blocks;  // one per channel block of the task

  void reserve(int64_t N, int64_t chunk, int64_t n_blocks) {
    hs.resize((chunk + 1) * N * W);
    decay.resize(chunk * N * W);
    dt.resize(chunk * W);
    slope.resize(chunk * W);
    dtu.resize(chunk * W);
    y.resize(chunk * W);
    dy.resize(chunk * W);
    gate.resize(chunk * W);
    dB.resize(chunk * N * W);  // zero when new; every chunk leaves them zero (see scan_bwd)
    dC.resize(chunk * N * W);
    blocks.resize(n_blocks);
  }
};

// Recomputes steps [s0, s0 + len) from the state in ws.hs row 0: states, decays, step sizes and
// dL/dy; writes dz, adds dL/dC lanes into ws.dC and dL/dD into dD. Three passes over the whole chunk (its
// step sizes and states are kept for scan_reverse anyway): step sizes, D u, sigmoid(z) and dL/dy (which
// does not depend on the state); the recurrence, which adds dL/dC while each state is in a register;
// then dz and dL/dD. As in scan_forward_block, no step's step sizes or gate wait on the state's chain.
// dL/dC was added in a pass of its own over the chunk's states before (December 7): the backward took
// 0.86x to 0.93x its time this way at (8, 197, 384, 16) and (32, 197, 768, 16), float32 and bfloat16, one
// thread, Zen 5 EPYC, the same bits (the same products and sums, in the same order).
template <int64_t NV, typename S, typename V>
void scan_recompute(const Scan<S, V>& p, const ScanGrads<V>& gr, const ScanParams<S>& prm, int64_t b,
                    const Lanes& l, int64_t s0, int64_t len, ScanWork<S>& ws, double (&dD)[W]) {
  const int64_t nv = NV > 0 ? NV : l.valid, NW = p.N * W;
  for (int64_t i = 0; i < len; ++i) {
    const int64_t s = s0 + i, t = p.time(s);
    if (s + kAhead < p.T) prefetch_rows(b, p.time(s + kAhead), l.e0, p.u, p.delta, p.z, gr.dout);
    S* __restrict__ y = ws.y.data() + i * W;
    S* __restrict__ dyi = ws.dy.data() + i * W;
    S* __restrict__ sg = ws.gate.data() + i * W;
    step_sizes<NV>(p, prm, l, b, t, ws.dt.data() + i * W, ws.slope.data() + i * W, ws.dtu.data() + i * W);
    S u_buf[W], z_buf[W], g_buf[W];
    const S* __restrict__ u = widened<NV>(p.u.at(b, t, l.e0), u_buf, nv);
    const S* __restrict__ z = widened<NV>(p.z.at(b, t, l.e0), z_buf, nv);
    const S* __restrict__ g = widened<NV>(gr.dout.at(b, t, l.e0), g_buf, nv);
    #pragma omp simd
    for (int64_t w = 0; w < nv; ++w) {
      const S sz = sigmoid(z[w]);
      y[w] = prm.D[w] * u[w];
      sg[w] = sz;
      dyi[w] = (g[w] * p.out_scale) * (z[w] * sz);
    }
  }
  for (int64_t i = 0; i < len; ++i)
    advance<NV, true>(p, prm, l, b, p.time(s0 + i), ws.dt.data() + i * W, ws.dtu.data() + i * W,
                      ws.hs.data() + i * NW, ws.hs.data() + (i + 1) * NW, ws.decay.data() + i * NW,
                      ws.y.data() + i * W, ws.dy.data() + i * W, ws.dC.data() + i * NW);
  for (int64_t i = 0; i < len; ++i) {
    const int64_t s = s0 + i, t = p.time(s);
    if (s + kAhead < p.T) prefetch_rows(b, p.time(s + kAhead), l.e0, gr.dz);
    const S* __restrict__ y = ws.y.data() + i * W;
    const S* __restrict__ dyi = ws.dy.data() + i * W;
    const S* __restrict__ sg = ws.gate.data() + i * W;
    S u_buf[W], z_buf[W], g_buf[W];
    const S* __restrict__ u = widened<NV>(p.u.at(b, t, l.e0), u_buf, nv);
    const S* __restrict__ z = widened<NV>(p.z.at(b, t, l.e0), z_buf, nv);
    const S* __restrict__ g = widened<NV>(gr.dout.at(b, t, l.e0), g_buf, nv);
    V* __restrict__ dz = gr.dz.at(b, t, l.e0);
    dispatch_flag(gr.accumulate_dz, [&]<bool kAccumulate>() {
      #pragma omp simd
      for (int64_t w = 0; w < nv; ++w) {
        const S sz = sg[w];
        store_or_add<kAccumulate>(dz[w], (g[w] * p.out_scale) * y[w] * sz * (S(1) + z[w] * (S(1) - sz)));
        dD[w] += double(dyi[w] * u[w]);
      }
    });
  }
}

// Walks steps [s0, s0 + len) backwards after scan_recompute: carries dL/dh in bc.carry, adds dL/dB
// lanes into ws.dB and (with kDA) dL/dA into bc.dA_part, writes du and ddelta, adds d delta_bias into
// bc.dbias.
// kRegisters (float, 16 full lanes, N = kRegisterStates, AVX-512): the N rows of dL/dh stay in vector registers
// from step to step instead of being loaded and stored at every state; the arithmetic is the same, term for
// term. The backward took 0.90x to 0.96x its time that way at 224 px in float32 (AMD EPYC; the states and
// decays the walk reads come from the L2 cache either way).
// always_inline: once scan_bwd's task also handled the forward's chunk states, gcc 12 stopped inlining the
// bfloat16 register walk into it, and the bfloat16 backward at (8, 197, 384) and (32, 197, 768) took 1.05x to
// 1.09x its time (Zen 5 EPYC, one thread); inlined, 1.01x.
template <int64_t NV, bool kDA, bool kRegisters, typename S, typename V>
[[gnu::always_inline]] inline void scan_reverse(const Scan<S, V>& p, const ScanGrads<V>& gr,
                                                const ScanParams<S>& prm, int64_t b, const Lanes& l, int64_t s0,
                                                int64_t len, ScanWork<S>& ws, BlockCarry<S>& bc) {
  const int64_t nv = NV > 0 ? NV : l.valid, N = p.N, NW = p.N * W;
  [[maybe_unused]] Floats16 carry16[kRegisterStates];
  if constexpr (kRegisters)
    for (int64_t n = 0; n < kRegisterStates; ++n) std::memcpy(&carry16[n], bc.carry.data() + n * W, sizeof(Floats16));
  for (int64_t i = len - 1; i >= 0; --i) {
    const int64_t s = s0 + i, t = p.time(s);
    if (s >= kAhead) prefetch_rows(b, p.time(s - kAhead), l.e0, p.u, gr.du, gr.ddelta);
    S u_buf[W];
    const S* __restrict__ uw = widened<NV>(p.u.at(b, t, l.e0), u_buf, nv);
    const S* __restrict__ dti = ws.dt.data() + i * W;
    const S* __restrict__ dyi = ws.dy.data() + i * W;
    const S* __restrict__ Bt = p.Bm.at(b, t, 0);
    const S* __restrict__ Ct = p.Cm.at(b, t, 0);
    const S* __restrict__ dtu = ws.dtu.data() + i * W;  // dt u, kept by scan_recompute
    S sb[W] = {}, dd[W] = {};
    if constexpr (kRegisters) {
      Floats16 dy16, dt16, dtu16, sb16 = {}, dd16 = {};
      std::memcpy(&dy16, dyi, sizeof dy16);
      std::memcpy(&dt16, dti, sizeof dt16);
      std::memcpy(&dtu16, dtu, sizeof dtu16);
      #pragma GCC unroll 16
      for (int64_t n = 0; n < kRegisterStates; ++n) {
        const S bn = Bt[n], cn = Ct[n];
        Floats16 An, h_prev, a, dBn;
        std::memcpy(&An, prm.A.data() + n * W, sizeof An);
        std::memcpy(&h_prev, ws.hs.data() + i * NW + n * W, sizeof h_prev);
        std::memcpy(&a, ws.decay.data() + i * NW + n * W, sizeof a);
        std::memcpy(&dBn, ws.dB.data() + (i * N + n) * W, sizeof dBn);
        const Floats16 gh = carry16[n] + dy16 * cn;  // as in the loop below
        dBn += gh * dtu16;
        std::memcpy(ws.dB.data() + (i * N + n) * W, &dBn, sizeof dBn);
        sb16 += gh * bn;
        const Floats16 ga = gh * h_prev * a;
        if constexpr (kDA) {
          Floats16 dAn;
          std::memcpy(&dAn, bc.dA_part.data() + n * W, sizeof dAn);
          dAn += ga * dt16;
          std::memcpy(bc.dA_part.data() + n * W, &dAn, sizeof dAn);
        }
        dd16 += ga * An;
        carry16[n] = a * gh;
      }
      std::memcpy(sb, &sb16, sizeof sb16);
      std::memcpy(dd, &dd16, sizeof dd16);
    } else {
      for (int64_t n = 0; n < N; ++n) {
        const S bn = Bt[n], cn = Ct[n];
        const S* __restrict__ An = prm.A.data() + n * W;
        const S* __restrict__ h_prev = ws.hs.data() + i * NW + n * W;
        const S* __restrict__ a = ws.decay.data() + i * NW + n * W;
        S* __restrict__ carry = bc.carry.data() + n * W;
        S* __restrict__ dAn = bc.dA_part.data() + n * W;
        S* __restrict__ dBn = ws.dB.data() + (i * N + n) * W;
        #pragma omp simd
        for (int64_t w = 0; w < nv; ++w) {
          const S gh = carry[w] + dyi[w] * cn;  // dL/dh_t
          dBn[w] += gh * dtu[w];
          sb[w] += gh * bn;
          const S ga = gh * h_prev[w] * a[w];  // dL/d(dt A[n])
          if constexpr (kDA) dAn[w] += ga * dti[w];
          dd[w] += ga * An[w];
          carry[w] = a[w] * gh;
        }
      }
    }
    const S* __restrict__ sl = ws.slope.data() + i * W;
    V* __restrict__ du = gr.du.at(b, t, l.e0);
    V* __restrict__ ddelta = gr.ddelta.at(b, t, l.e0);
    #pragma omp simd
    for (int64_t w = 0; w < nv; ++w) {
      const S dd_w = (dd[w] + sb[w] * uw[w]) * sl[w];
      du[w] = stored<V>(dyi[w] * prm.D[w] + sb[w] * dti[w]);
      ddelta[w] = stored<V>(dd_w);
      bc.dbias[w] += double(dd_w);
    }
    if (kDA && ((len - i) % kFlush == 0 || i == 0)) {
      #pragma omp simd
      for (int64_t k = 0; k < NW; ++k) {
        bc.dA[k] += double(bc.dA_part[k]);
        bc.dA_part[k] = S(0);
      }
    }
  }
  if constexpr (kRegisters)
    for (int64_t n = 0; n < kRegisterStates; ++n) std::memcpy(bc.carry.data() + n * W, &carry16[n], sizeof(Floats16));
}

// The backward of one channel block of row b is cut into chunks, walked last first: block_start finds the
// states before every chunk (copies them from `saved`, [chunks][N][W] kept by the forward, when given),
// block_chunk takes one chunk (dA only with kDA), block_finish writes the block's sums. A task walks the
// chunks in its outer loop and its channel blocks in the inner one, so that its lane-wise dB, dC sums cover
// one chunk at a time: over the whole sequence (T N W values each) they left the
// cache at long T: with them the backward took 1.7 ns per state update at (B, T, E, N) = (1, 6085, 384, 16)
// against 1.0 ns at (8, 197, 384, 16) (AMD EPYC, one thread; the forward 0.3 ns at both).
template <int64_t NV, typename S, typename V>
void block_start(const Scan<S, V>& p, const ScanGrads<V>& gr, int64_t b, const Lanes& l, const S* saved,
                 BlockCarry<S>& bc) {
  const int64_t NW = p.N * W, chunk = gr.chunk, n_chunks = (p.T + chunk - 1) / chunk;
  const ScanParams<S> prm(p, l);
  if (saved != nullptr) {
    bc.ckpt.assign(saved, saved + n_chunks * NW);
  } else {
    bc.ckpt.assign(n_chunks * NW, S(0));
    for (int64_t c = 0; c + 1 < n_chunks; ++c) {
      S* h = bc.ckpt.data() + (c + 1) * NW;
      std::copy(h - NW, h, h);
      for (int64_t s0 = c * chunk; s0 < (c + 1) * chunk; s0 += kSteps) {  // as in scan_forward_block
        const int64_t steps = std::min(kSteps, (c + 1) * chunk - s0);
        S dt[kSteps][W], slope[kSteps][W], dtu[kSteps][W], unused[W] = {};
        step_sizes_block<NV>(p, prm, l, b, s0, steps, dt, slope, dtu, p.u, p.delta);
        for (int64_t i = 0; i < steps; ++i)
          advance<NV, false>(p, prm, l, b, p.time(s0 + i), dt[i], dtu[i], h, h, static_cast<S*>(nullptr), unused);
      }
    }
  }
  bc.carry.assign(NW, S(0));
  bc.dA_part.assign(NW, S(0));
  bc.dA.assign(NW, 0.0);
  std::fill(bc.dD, bc.dD + W, 0.0);
  std::fill(bc.dbias, bc.dbias + W, 0.0);
}

template <int64_t NV, bool kDA, typename S, typename V>
void block_chunk(const Scan<S, V>& p, const ScanGrads<V>& gr, int64_t b, const Lanes& l, int64_t c, ScanWork<S>& ws,
                 BlockCarry<S>& bc) {
  const int64_t NW = p.N * W, s0 = c * gr.chunk, len = std::min(gr.chunk, p.T - s0);
  const ScanParams<S> prm(p, l);
  std::copy(bc.ckpt.begin() + c * NW, bc.ckpt.begin() + (c + 1) * NW, ws.hs.begin());
  scan_recompute<NV>(p, gr, prm, b, l, s0, len, ws, bc.dD);
  if constexpr (kRegisterWalk && NV == W && std::is_same_v<S, float>) {
    if (p.N == kRegisterStates) return scan_reverse<NV, kDA, true>(p, gr, prm, b, l, s0, len, ws, bc);
  }
  scan_reverse<NV, kDA, false>(p, gr, prm, b, l, s0, len, ws, bc);
}

template <bool kDA, typename S, typename V>
void block_finish(const Scan<S, V>& p, const ScanGrads<V>& gr, int64_t b, const Lanes& l, const BlockCarry<S>& bc) {
  for (int64_t w = 0; w < l.valid; ++w) {
    const int64_t be = b * p.E + l.e0 + w;
    if constexpr (kDA)
      for (int64_t n = 0; n < p.N; ++n) gr.dA[be * p.N + n] = bc.dA[n * W + w];
    gr.dD[be] = bc.dD[w];
    gr.dbias[be] = bc.dbias[w];
  }
}

template <typename S, typename V>
Scan<S, V> make_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                  const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                  bool softplus, bool reverse, double out_scale) {
  TORCH_CHECK(u.dim() == 3 && A.dim() == 2, "scan: u must be (B, T, E) and A (E, N)");
  int exponent = 0;
  TORCH_CHECK(out_scale > 0 && std::frexp(out_scale, &exponent) == 0.5,
              "scan: out_scale must be a power of two (exact), got ", out_scale);
  const at::ScalarType dtype = u.scalar_type(), param_dtype = A.scalar_type();
  const int64_t batch = u.size(0), T = u.size(1), E = u.size(2), N = A.size(1);
  TORCH_CHECK(A.size(0) == E && T >= 1 && E >= 1, "scan: A must be (E, N), T >= 1 and E >= 1");
  check_rows(u, dtype, batch, T, E, "u");
  check_rows(delta, dtype, batch, T, E, "delta");
  check_rows(z, dtype, batch, T, E, "z");
  check_rows(Bm, dtype, batch, T, N, "B");
  check_rows(Cm, dtype, batch, T, N, "C");
  check_param(A, param_dtype, E * N, "A");
  check_param(D, param_dtype, E, "D");
  check_param(bias, param_dtype, E, "delta_bias");
  const at::Tensor B_compute = Bm.to(param_dtype), C_compute = Cm.to(param_dtype);  // Bm, Cm themselves for V = S
  return Scan<S, V>{rows_in<V>(u), rows_in<V>(delta), rows_in<V>(z), B_compute, C_compute,
                    rows_in<S>(B_compute), rows_in<S>(C_compute), A.const_data_ptr<S>(), D.const_data_ptr<S>(),
                    bias.const_data_ptr<S>(), batch, T, E, N, softplus, reverse, S(out_scale)};
}

// The shape of the states kept for the scan backward, (B, channel blocks, chunks, N, W): see scan_chunks.
std::vector<int64_t> chunk_states_shape(int64_t batch, int64_t T, int64_t E, int64_t N) {
  return {batch, (E + W - 1) / W, scan_chunks(T).first, N, W};
}

// The chunk states of scan_fwd / scan_bwd (or none: a null data pointer); block(b, l) is channel block l of
// row b, [chunks][N][W], or null.
template <typename S>
struct ChunkStates {
  S* data;
  int64_t n_cb, per_block;

  S* block(int64_t b, const Lanes& l) const { return data ? data + (b * n_cb + l.e0 / W) * per_block : nullptr; }
};

// `states`, checked against the problem, as ChunkStates.
template <typename S, typename V>
ChunkStates<S> chunk_states_of(const std::optional<at::Tensor>& states, const Scan<S, V>& p, at::ScalarType dtype) {
  const std::vector<int64_t> shape = chunk_states_shape(p.batch, p.T, p.E, p.N);
  S* data = nullptr;
  if (states.has_value()) {
    check_param(*states, dtype, c10::multiply_integers(shape), "chunk_states");
    TORCH_CHECK(states->sizes() == at::IntArrayRef(shape), "chunk_states must be ", at::IntArrayRef(shape), ", got ",
                states->sizes());
    data = states->mutable_data_ptr<S>();
  }
  return {data, shape[1], shape[2] * p.N * W};
}

// Returns out (B, T, E). `state` (B, E, N) in the parameters' dtype, when given, is the state before the
// first step and is overwritten with the state after the last one. `chunk_states` (chunk_states_shape, the
// parameters' dtype), when given, gets the state before each of the backward's chunks, for scan_bwd. With
// out_into (B, T, E) in u's dtype (rows of any stride), out is written into it (added to it with accumulate_out,
// the bits of torch's `out_into.add_(out)`, but for -0 + -0 in float32 and float64: +0, see store_or_add) and
// the out returned is empty: the mixer's inference in pieces writes both directions into one tensor without a
// copy and an addition per piece.
at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                    const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                    bool softplus, bool reverse, const std::optional<at::Tensor>& state,
                    const std::optional<at::Tensor>& chunk_states, const std::optional<at::Tensor>& out_into,
                    bool accumulate_out, double out_scale) {
  TORCH_CHECK(out_into.has_value() || !accumulate_out, "scan_fwd: accumulate_out needs out_into");
  TORCH_CHECK(u.dim() == 3, "scan: u must be (B, T, E)");
  at::Tensor out = output_rows(out_into, u, u.size(0), u.size(1), u.size(2), "out_into");
  dispatch_types(u.scalar_type(), A.scalar_type(), "scan", [&](auto s, auto v) {
    using S = decltype(s);
    using V = decltype(v);
    const Scan<S, V> p = make_scan<S, V>(u, delta, A, Bm, Cm, D, z, bias, softplus, reverse, out_scale);
    S* state_data = nullptr;
    if (state.has_value()) {
      check_param(*state, A.scalar_type(), p.batch * p.E * p.N, "state");
      TORCH_CHECK(state->dim() == 3 && state->size(0) == p.batch && state->size(1) == p.E, "state must be (",
                  p.batch, ", ", p.E, ", ", p.N, "), got ", state->sizes());
      state_data = state->mutable_data_ptr<S>();
    }
    const ChunkStates<S> kept = chunk_states_of(chunk_states, p, A.scalar_type());
    TORCH_CHECK(kept.data == nullptr || state_data == nullptr,
                "scan_fwd: chunk_states are for the backward, which starts from a zero state: not with `state`");
    const Rows<V> o = rows_out<V>(out);
    const int64_t n_cb = (p.E + W - 1) / W;
    for_each_task<std::vector<S>>(p.batch * n_cb, [&](int64_t i, std::vector<S>& h) {
      dispatch_lanes(task_lanes(i, n_cb, p.E), [&]<int64_t NV>(const Lanes& l) {
        scan_forward_block<NV>(p, o, accumulate_out, i / n_cb, l, h, state_data, kept.block(i / n_cb, l));
      });
    });
  });
  return out_into.has_value() ? at::empty({0}, out.options()) : out;
}

// Returns du, ddelta, dz (B, T, E), dA (E, N) (empty without compute_dA: a frozen A saves the reverse
// walk a multiply-add per state and step), dB, dC (B, T, N), dD, ddelta_bias (E,). With dz_out, dz is written
// into it (added to it with accumulate_dz) and the dz returned is empty. With chunk_states (filled by scan_fwd on
// the same inputs) the states before the chunks are read from it instead of being found by running the
// recurrence again.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
    const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias, bool softplus, bool reverse,
    const at::Tensor& dout, bool compute_dA, const std::optional<at::Tensor>& dz_out, bool accumulate_dz,
    const std::optional<at::Tensor>& chunk_states, double out_scale) {
  TORCH_CHECK(dz_out.has_value() || !accumulate_dz, "scan_bwd: accumulate_dz needs dz_out");
  TORCH_CHECK(u.dim() == 3, "scan: u must be (B, T, E)");
  at::Tensor du = at::empty(u.sizes(), u.options()), ddelta = at::empty(u.sizes(), u.options());
  at::Tensor dz = output_rows(dz_out, u, u.size(0), u.size(1), u.size(2), "dz_out");
  at::Tensor dA = wanted(compute_dA, A.sizes(), A.options()), dD = at::empty(D.sizes(), D.options());
  at::Tensor dbias = at::empty(bias.sizes(), bias.options());
  at::Tensor dB = at::empty(Bm.sizes(), Bm.options()), dC = at::empty(Cm.sizes(), Cm.options());
  dispatch_types(u.scalar_type(), A.scalar_type(), "scan", [&](auto s, auto v) {
    using S = decltype(s);
    using V = decltype(v);
    const Scan<S, V> p = make_scan<S, V>(u, delta, A, Bm, Cm, D, z, bias, softplus, reverse, out_scale);
    const int64_t batch = p.batch, T = p.T, E = p.E, N = p.N, n_cb = (E + W - 1) / W;
    check_rows(dout, u.scalar_type(), batch, T, E, "dout");
    // Channel groups per row: a count fixed by the shape, not the thread count, so that dB and dC (summed over
    // the groups in a fixed order) are the same at any thread count; enough for kGroupTasks tasks, and no more,
    // as each group sums its dB / dC lanes and adds a (B, T, N) partial.
    const int64_t groups = std::min({kGroups, n_cb, (kGroupTasks + batch - 1) / batch});
    const auto [n_chunks, chunk] = scan_chunks(T);
    const ChunkStates<S> kept = chunk_states_of(chunk_states, p, A.scalar_type());
    const Partials dA_rows = partials(compute_dA ? batch * E * N : 0), dD_rows = partials(batch * E), dbias_rows = partials(batch * E);
    const Partials dB_groups = partials(groups * batch * T * N), dC_groups = partials(groups * batch * T * N);
    const ScanGrads<V> gr{rows_in<V>(dout), rows_out<V>(du), rows_out<V>(ddelta), rows_out<V>(dz),
                          dA_rows.get(), dD_rows.get(), dbias_rows.get(), dB_groups.get(), dC_groups.get(),
                          groups, chunk, accumulate_dz};
    for_each_task<ScanWork<S>>(batch * groups, [&](int64_t i, ScanWork<S>& ws) {
      const int64_t b = i / groups, g = i % groups, cb0 = g * n_cb / groups, cb1 = (g + 1) * n_cb / groups;
      ws.reserve(N, chunk, cb1 - cb0);
      const auto each_block = [&](auto&& step) {  // step.template operator()<NV, kDA>(lanes, its BlockCarry)
        for (int64_t cb = cb0; cb < cb1; ++cb)
          dispatch_flag(compute_dA, [&]<bool kDA>() {
            dispatch_lanes(block_lanes(cb, E), [&]<int64_t NV>(const Lanes& l) {
              step.template operator()<NV, kDA>(l, ws.blocks[cb - cb0]);
            });
          });
      };
      each_block([&]<int64_t NV, bool kDA>(const Lanes& l, BlockCarry<S>& bc) {
        block_start<NV>(p, gr, b, l, kept.block(b, l), bc);
      });
      double* dBo = gr.dB + (g * batch + b) * T * N;
      double* dCo = gr.dC + (g * batch + b) * T * N;
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        each_block([&]<int64_t NV, bool kDA>(const Lanes& l, BlockCarry<S>& bc) {
          block_chunk<NV, kDA>(p, gr, b, l, c, ws, bc);
        });
        // Sum the chunk's lanes into this group's dB, dC at (b, t, n), and zero them for the next chunk.
        for (int64_t s = c * chunk; s < std::min(T, (c + 1) * chunk); ++s) {
          const int64_t t = p.time(s), i_s = s - c * chunk;
          for (int64_t n0 = 0; n0 < N; n0 += W) {
            const int64_t rows = std::min(W, N - n0);
            const LaneVec<S> sB = take_row_sums(ws.dB.data() + (i_s * N + n0) * W, rows);
            const LaneVec<S> sC = take_row_sums(ws.dC.data() + (i_s * N + n0) * W, rows);
            for (int64_t k = 0; k < rows; ++k) {
              dBo[t * N + n0 + k] = double(sB[k]);
              dCo[t * N + n0 + k] = double(sC[k]);
            }
          }
        }
      }
      each_block([&]<int64_t NV, bool kDA>(const Lanes& l, BlockCarry<S>& bc) { block_finish<kDA>(p, gr, b, l, bc); });
    });
    if (compute_dA) sum_rows<S>(dA_rows, batch, E * N, dA.mutable_data_ptr<S>());
    sum_rows<S>(dD_rows, batch, E, dD.mutable_data_ptr<S>());
    sum_rows<S>(dbias_rows, batch, E, dbias.mutable_data_ptr<S>());
    sum_rows<S>(dB_groups, groups, batch * T * N, dB.mutable_data_ptr<V>());
    sum_rows<S>(dC_groups, groups, batch * T * N, dC.mutable_data_ptr<V>());
  });
  return {du, ddelta, dz_out.has_value() ? at::empty({0}, dz.options()) : dz, dA, dB, dC, dD, dbias};
}

}  // namespace

TORCH_LIBRARY(vimtune_mixer_cpu, m) {
  m.def("conv_fwd(Tensor x, Tensor weight, Tensor bias, bool reverse) -> Tensor", &conv_fwd);
  m.def(
      "conv_bwd(Tensor x, Tensor weight, Tensor bias, bool reverse, Tensor dout, bool param_grads, "
      "Tensor(a!)? dx_out=None, bool accumulate=False) -> (Tensor, Tensor, Tensor)",
      &conv_bwd);
  m.def(
      "scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, Tensor delta_bias, "
      "bool delta_softplus, bool reverse, Tensor(a!)? state=None, Tensor(b!)? chunk_states=None, "
      "Tensor(c!)? out_into=None, bool accumulate_out=False, float out_scale=1.0) -> Tensor",
      &scan_fwd);
  m.def("chunk_states_shape(int batch, int T, int E, int N) -> int[]", &chunk_states_shape);
  m.def(
      "scan_bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, Tensor delta_bias, "
      "bool delta_softplus, bool reverse, Tensor dout, bool compute_dA, Tensor(a!)? dz_out=None, "
      "bool accumulate_dz=False, Tensor? chunk_states=None, float out_scale=1.0) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor)",
      &scan_bwd);
}
