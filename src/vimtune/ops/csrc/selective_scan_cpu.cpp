// Fused selective scan (Mamba S6) for CPU: forward and backward, float32 or float64.
//
//   delta_t = softplus(delta_t + delta_bias)            (when delta_softplus; threshold 20)
//   h_t     = exp(delta_t A) h_{t-1} + delta_t B_t u_t  (h_0 = 0)
//   out_t   = (C_t . h_t + D u_t) * silu(z_t)
//
// Shapes: u, delta, z, out: (B, E, L); A: (E, N); B, C: (B, N, L); D, delta_bias: (E,).
//
// Vectorisation: W = 16 channels form the vector lanes, so the time loop needs no horizontal sums; the
// state index n is a plain loop around lane loops that gcc vectorises. The (B, E, L) rows are moved in
// and out of [t][w] blocks of T steps, and B and C into [t][n] blocks, by transposes (16 x 16 tiles in
// registers for float32 on AVX-512, element by element otherwise); the rows of the block a task works on next
// (its next channel block, its next time block, or the first block of the task the thread likely runs next)
// are prefetched while a block computes.
//
// Work split: a task owns one batch row and a group of channel blocks; it walks the time blocks and, in
// each, all of its channel blocks (which share B_t and C_t). Threads take tasks from a shared counter.
// The forward keeps the state at the start of every time block ("checkpoints", B*E*N*L/T values); the
// backward walks the time blocks in reverse and recomputes one block's states from its checkpoint into
// a per-thread buffer of (T+1)*N*2*W values, so memory grows like B*E*L, never B*E*L*N.
//
// Reductions: dL/dB and dL/dC sum over channels, so a backward task sums its channel blocks lane-wise
// for one time block, then the lanes in double into its own slice of dB/dC (G, B, N, L); dA, dD and
// ddelta_bias are summed over time in double per (batch row, channel). The slices are added up in double
// after the parallel part, in a fixed order; the caller casts the float64 sums to the inputs' dtypes.
// float32 runs exp/softplus through the branch-free approximations of fast_math.h (about 1e-7 relative
// error) so that the lane loops vectorise; float64 calls libm. The decays use A * kExpScale, kept per
// channel block, so that exp(dt A) is one multiply and exp_scaled.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "fast_math.h"
#include "partial_sums.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t W = 16;  // channels per task block = vector lanes
static_assert(W == 16, "the whole-register loops hold a block's lanes in one Floats16");
constexpr int64_t T = 64;  // time steps per block = checkpoint interval
constexpr int64_t kRegisterStates = 16;  // N whose reverse sweep keeps dL/dh in registers (Vim's, Mamba's)

// ---------------------------------------------------------------- transposes

#if defined(__AVX512F__)
// One 16 x 16 float tile: dst[j * ds + i] = src[i * ss + j], in four rounds of in-register shuffles.
inline void transpose_tile16(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ss);
  for (int i = 0; i < 16; i += 2) {  // interleave row pairs
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + c]: rows i..i+3 of columns c, c + 4, c + 8, c + 12
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0x88);
      t[i + k + 4] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0xDD);
    }
  }
  for (int k = 0; k < 8; ++k) {  // r[j] is column j
    r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
    r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xDD);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ds, r[i]);
}
#endif

// dst[c * ds + r] = src[r * ss + c] for r < rows, c < cols (16 x 16 tiles in registers when possible).
template <typename S>
void transpose(const S* src, int64_t ss, S* dst, int64_t ds, int64_t rows, int64_t cols) {
  int64_t tiled_rows = 0, tiled_cols = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<S, float>) {
    tiled_rows = rows / 16 * 16;
    tiled_cols = cols / 16 * 16;
    for (int64_t r = 0; r < tiled_rows; r += 16)
      for (int64_t c = 0; c < tiled_cols; c += 16) transpose_tile16(src + r * ss + c, ss, dst + c * ds + r, ds);
  }
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = r < tiled_rows ? tiled_cols : 0; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
}

// Prefetches the cache lines of row[t] for t < len (for writing with `write`). always_inline: as in
// mixer_cpu.cpp, gcc dropped the calls of an out-of-line copy, prefetches included.
template <typename S>
[[gnu::always_inline]] inline void prefetch_row(const S* row, int64_t len, bool write) {
  constexpr int64_t kLine = 64 / sizeof(S);
  if (len <= 0) return;  // (N = 0: an empty checkpoint, whose data pointer may be null)
  for (int64_t t = 0; t < len; t += kLine) write ? __builtin_prefetch(row + t, 1) : __builtin_prefetch(row + t);
  write ? __builtin_prefetch(row + len - 1, 1) : __builtin_prefetch(row + len - 1);  // an unaligned row's last line
}

// ---------------------------------------------------------------- problem description

template <typename S>
struct Problem {
  const S* u;      // (B, E, L)
  const S* delta;  // (B, E, L)
  const S* A;      // (E, N)
  const S* Bm;     // (B, N, L)
  const S* Cm;     // (B, N, L)
  const S* D;      // (E,)
  const S* bias;   // (E,)
  const S* z;      // (B, E, L) or nullptr
  bool softplus;
  int64_t batch, E, L, N;
  int64_t n_cb, n_tb, groups;  // channel blocks of W, time blocks of T, channel groups per task

  int64_t cb_begin(int64_t g) const { return g * n_cb / groups; }

  // Real channels in channel block cb (W but in a last, partial block).
  int64_t valid(int64_t cb) const { return std::min(W, E - cb * W); }

  // Checkpoint of channel block cb before time block tb: [N][W] inside (B, n_cb, n_tb, N, W).
  template <typename P>
  P* ckpt_at(P* ckpt, int64_t b, int64_t cb, int64_t tb) const {
    return ckpt + ((b * n_cb + cb) * n_tb + tb) * N * W;
  }

  // dst[t][w] = src[b, e0 + w, t0 + t] for t < nt; zero for the lanes past the last channel.
  void load(const S* src, int64_t b, int64_t e0, int64_t valid, int64_t t0, int64_t nt, S* dst) const {
    transpose(src + (b * E + e0) * L + t0, L, dst, W, valid, nt);
    for (int64_t t = 0; t < nt; ++t) std::fill(dst + t * W + valid, dst + (t + 1) * W, S(0));
  }

  // dst[b, e0 + w, t0 + t] = src[t][w] for the valid lanes.
  void store(const S* src, int64_t b, int64_t e0, int64_t valid, int64_t t0, int64_t nt, S* dst) const {
    transpose(src, W, dst + (b * E + e0) * L + t0, L, nt, valid);
  }

  // bt[t][n] = B[b, n, t0 + t] and ct[t][n] = C[b, n, t0 + t] for t < nt.
  void load_bc(int64_t b, int64_t t0, int64_t nt, S* bt, S* ct) const {
    if (N == 0) return;  // (no rows; B and C may have null data pointers)
    transpose(Bm + b * N * L + t0, L, bt, N, N, nt);
    transpose(Cm + b * N * L + t0, L, ct, N, N, nt);
  }
};

// One block of W channels: its parameters as lanes and the state it carries across time blocks.
template <typename S>
struct Channels {
  int64_t e0, valid;       // first channel, number of real channels (the other lanes are zero)
  std::vector<S> ns;       // [N][3][W]: A; the state h (forward) or carried dL/dh (backward); dA scratch
  std::vector<S> decay;    // [N][W]: A * kExpScale, so that exp(dt A) = exp_scaled(dt * decay)
  S D[W] = {}, bias[W] = {};
  std::vector<double> dA;  // [N][W] backward sums
  double dD[W] = {}, dbias[W] = {};

  Channels(const Problem<S>& p, int64_t cb)
      : e0(cb * W), valid(p.valid(cb)), ns(p.N * 3 * W, S(0)), decay(p.N * W, S(0)),
        dA(p.N * W, 0.0) {
    for (int64_t w = 0; w < valid; ++w) {
      for (int64_t n = 0; n < p.N; ++n) {
        ns[n * 3 * W + w] = p.A[(e0 + w) * p.N + n];
        decay[n * W + w] = ns[n * 3 * W + w] * kExpScale<S>;
      }
      D[w] = p.D[e0 + w];
      bias[w] = p.bias[e0 + w];
    }
  }

  S* slot(int64_t n, int64_t k) { return ns.data() + (n * 3 + k) * W; }
};

template <typename S>
std::vector<Channels<S>> group_channels(const Problem<S>& p, int64_t g) {
  std::vector<Channels<S>> chans;
  for (int64_t cb = p.cb_begin(g); cb < p.cb_begin(g + 1); ++cb) chans.emplace_back(p, cb);
  return chans;
}

// Per-task buffers for one time block, [T][W] (time-major, channel lanes) unless noted.
template <typename S>
struct Block {
  std::vector<S> u, dt, dtu, dsp, y, z, gout, dy, gate;  // gate (backward): sigmoid(z)
  std::vector<S> bt, ct;  // [T][N]: B and C of the batch row
  std::vector<S> seg;  // [T + 1][N][2][W] (backward): a_t and h_t per step; row 0 holds h before the block
  std::vector<S> dB, dC;  // [T][N][W] (backward): lane-wise dL/dB and dL/dC summed over channel blocks

  Block(int64_t N, bool backward)
      : u(T * W), dt(T * W), dtu(T * W), dsp(T * W), y(T * W), z(T * W), gout(T * W), dy(T * W), gate(T * W),
        bt(T * N), ct(T * N), seg(backward ? (T + 1) * N * 2 * W : 0),
        dB(backward ? T * N * W : 0), dC(backward ? T * N * W : 0) {}

  // Loads u, delta and z; dt = softplus(delta + bias), dtu = dt * u and, with kSlope (the backward), dsp = the
  // slope of dt (the forward skips its division).
  template <bool kSlope>
  void prepare(const Problem<S>& p, const Channels<S>& ch, int64_t b, int64_t t0, int64_t nt) {
    p.load(p.u, b, ch.e0, ch.valid, t0, nt, u.data());
    p.load(p.delta, b, ch.e0, ch.valid, t0, nt, dt.data());
    if (p.z != nullptr) p.load(p.z, b, ch.e0, ch.valid, t0, nt, z.data());
    S* __restrict__ d = dt.data();
    S* __restrict__ ds = dsp.data();
    for (int64_t t = 0; t < nt; ++t)
      for (int64_t w = 0; w < W; ++w) d[t * W + w] += ch.bias[w];
    if (p.softplus) {
      for (int64_t i = 0; i < nt * W; ++i) {
        S slope;
        softplus(d[i], d[i], slope);
        if constexpr (kSlope) ds[i] = slope;
      }
    } else if constexpr (kSlope) {
      std::fill(ds, ds + nt * W, S(1));
    }
    const S* __restrict__ uu = u.data();
    S* __restrict__ du = dtu.data();
    for (int64_t i = 0; i < nt * W; ++i) du[i] = d[i] * uu[i];
  }

  // y[t][w] += D[w] u[t][w]: the output before the gate.
  void add_skip(const Channels<S>& ch, int64_t nt) {
    S* __restrict__ yy = y.data();
    const S* __restrict__ uu = u.data();
    for (int64_t t = 0; t < nt; ++t)
      for (int64_t w = 0; w < W; ++w) yy[t * W + w] += ch.D[w] * uu[t * W + w];
  }
};

// ---------------------------------------------------------------- prefetch queue

// The rows of one time block that a task reads or writes next, prefetched a few rows at a time (issue) while
// it computes the block before: one or two rows per step. Prefetched all at once (with 32-step blocks, up to
// 450 lines per channel block and time block), they stalled the core until enough of the misses had come
// back: with the tensors out of the cache before each call, spreading them took the forward from 2.4 to 2.1 ms
// and the backward from 6.1 to 5.7 ms at (8, 384, 197, 16), one thread (Zen 5 EPYC, 32-step blocks).
template <typename S>
struct RowPrefetch {
  static constexpr int64_t kCapacity = 16 * W;  // rows queued; more are prefetched at once
  struct Row {
    const S* start;
    int64_t len;
    bool write;
  };
  Row rows[kCapacity];
  int64_t count = 0, issued = 0;

  // Queues `n` rows of `len` values, `stride` apart, from `first` (nothing for a null tensor).
  void add(const S* first, int64_t stride, int64_t n, int64_t len, bool write = false) {
    if (first == nullptr) return;
    for (int64_t r = 0; r < n; ++r) {
      if (count < kCapacity) {
        rows[count++] = {first + r * stride, len, write};
      } else {
        prefetch_row(first + r * stride, len, write);
      }
    }
  }

  // Queues time block tb's columns of channel block cb of row b of the (B, E, L) tensor src.
  void add_channels(const Problem<S>& p, const S* src, int64_t b, int64_t cb, int64_t tb, bool write = false) {
    if (src == nullptr) return;
    add(src + (b * p.E + cb * W) * p.L + tb * T, p.L, p.valid(cb), std::min(T, p.L - tb * T), write);
  }

  // Queues time block tb's columns of B and C of row b.
  void add_bc(const Problem<S>& p, int64_t b, int64_t tb) {
    if (p.N == 0) return;  // (no rows; B and C may have null data pointers)
    for (const S* m : {p.Bm, p.Cm}) add(m + b * p.N * p.L + tb * T, p.L, p.N, std::min(T, p.L - tb * T));
  }

  // Rows to issue per step to have them all issued after `steps` steps.
  int64_t rows_per_step(int64_t steps) const { return (count + steps - 1) / steps; }

  [[gnu::always_inline]] void issue(int64_t n) {
    for (; n > 0 && issued < count; --n, ++issued) {
      const Row& r = rows[issued];
      prefetch_row(r.start, r.len, r.write);
    }
  }

  // Issues the rows not issued yet.
  void issue_rest() { issue(count - issued); }
};

// A task: batch row b, channel group g.
struct TaskAt {
  int64_t b, g;
};

// The task a thread most likely runs after its current one: the one the shared task counter hands out next,
// read when the current task reaches its last block. Another thread may take it first, which only wastes
// that block's prefetches; claiming it in advance instead left threads idle when there were few tasks.
struct NextTask {
  const std::atomic<int64_t>* counter;
  int64_t n_tasks, groups;

  std::optional<TaskAt> guess() const {
    const int64_t i = counter->load(std::memory_order_relaxed);
    if (i >= n_tasks) return std::nullopt;
    return TaskAt{i / groups, i % groups};
  }
};

// A block of work: batch row b, channel block cb, time block tb; first: the first block of its time block in
// the task's order (the one whose B and C rows are loaded before it).
struct BlockAt {
  int64_t b, cb, tb;
  bool first;
};

// The block a task works on after channel block cb of its group g in time block tb, or the likely next task's
// first block (time block `start`), or none. A task walks its time blocks from `start` by `step` (+1 in the
// forward, -1 in the backward) and, in each, its channel blocks in order.
template <typename S>
std::optional<BlockAt> block_after(const Problem<S>& p, int64_t b, int64_t g, int64_t cb, int64_t tb, int64_t start,
                                   int64_t step, const NextTask& next) {
  if (cb + 1 < p.cb_begin(g + 1)) return BlockAt{b, cb + 1, tb, false};
  if (tb + step >= 0 && tb + step < p.n_tb) return BlockAt{b, p.cb_begin(g), tb + step, true};
  if (const std::optional<TaskAt> task = next.guess()) return BlockAt{task->b, p.cb_begin(task->g), start, true};
  return std::nullopt;
}

// ---------------------------------------------------------------- forward

// The recurrence over one block, in place on the state slot of ch.ns; y[t] = C_t . h_t.
template <typename S, typename F>
void scan_forward(Channels<S>& ch, Block<S>& blk, int64_t N, int64_t nt, const F& each_step) {
  S* __restrict__ ns = ch.ns.data();
  const S* __restrict__ decay = ch.decay.data();
  const S* __restrict__ bt = blk.bt.data();
  const S* __restrict__ ct = blk.ct.data();
  const S* __restrict__ dt = blk.dt.data();
  const S* __restrict__ dtu = blk.dtu.data();
  for (int64_t t = 0; t < nt; ++t) {
    each_step();
    if constexpr (kVectorExp && std::is_same_v<S, float>) {
      // Whole registers, for exp2_lanes' AVX-512 form; the same arithmetic as the loop below.
      Floats16 acc = {}, dt16, dtu16;
      std::memcpy(&dt16, dt + t * W, sizeof dt16);
      std::memcpy(&dtu16, dtu + t * W, sizeof dtu16);
      for (int64_t n = 0; n < N; ++n) {
        Floats16 An, h;
        std::memcpy(&An, decay + n * W, sizeof An);
        std::memcpy(&h, ns + n * 3 * W + W, sizeof h);
        h = exp2_lanes(dt16 * An) * h + dtu16 * bt[t * N + n];
        std::memcpy(ns + n * 3 * W + W, &h, sizeof h);
        acc += ct[t * N + n] * h;
      }
      std::memcpy(blk.y.data() + t * W, &acc, sizeof acc);
      continue;
    }
    S acc[W] = {};
    for (int64_t n = 0; n < N; ++n) {
      const S bn = bt[t * N + n], cn = ct[t * N + n];
      const S* An = decay + n * W;
      S* hn = ns + n * 3 * W + W;
#pragma GCC ivdep
      for (int64_t w = 0; w < W; ++w) {
        const S a = exp_scaled(dt[t * W + w] * An[w]);
        const S hv = a * hn[w] + dtu[t * W + w] * bn;
        hn[w] = hv;
        acc[w] += cn * hv;
      }
    }
    std::copy(acc, acc + W, blk.y.data() + t * W);
  }
}

template <typename S>
struct Outputs {
  S* out;   // (B, E, L)
  S* last;  // (B, E, N)
  S* ckpt;  // (B, n_cb, n_tb, N, W) or nullptr when no backward will follow
};

// Forward task: batch row b, channel group g.
template <typename S>
void forward_task(const Problem<S>& p, const Outputs<S>& o, int64_t b, int64_t g, const NextTask& next,
                  Block<S>& blk) {
  const int64_t N = p.N;
  std::vector<Channels<S>> chans = group_channels(p, g);
  for (int64_t tb = 0; tb < p.n_tb; ++tb) {
    const int64_t t0 = tb * T, nt = std::min(T, p.L - t0);
    p.load_bc(b, t0, nt, blk.bt.data(), blk.ct.data());
    for (Channels<S>& ch : chans) {
      RowPrefetch<S> ahead;  // of the block after this one
      if (const std::optional<BlockAt> at = block_after(p, b, g, ch.e0 / W, tb, 0, 1, next)) {
        if (at->first) ahead.add_bc(p, at->b, at->tb);
        for (const S* src : {p.u, p.delta, p.z}) ahead.add_channels(p, src, at->b, at->cb, at->tb);
        ahead.add_channels(p, o.out, at->b, at->cb, at->tb, true);
      }
      if (o.ckpt != nullptr) {
        S* ck = p.ckpt_at(o.ckpt, b, ch.e0 / W, tb);
        for (int64_t n = 0; n < N; ++n) std::copy(ch.slot(n, 1), ch.slot(n, 1) + W, ck + n * W);
      }
      blk.template prepare<false>(p, ch, b, t0, nt);
      const int64_t per_step = ahead.rows_per_step(nt);
      scan_forward(ch, blk, N, nt, [&]() __attribute__((always_inline)) { ahead.issue(per_step); });
      ahead.issue_rest();
      blk.add_skip(ch, nt);
      if (p.z != nullptr) {
        S* __restrict__ y = blk.y.data();
        const S* __restrict__ z = blk.z.data();
        for (int64_t i = 0; i < nt * W; ++i) y[i] *= z[i] * sigmoid(z[i]);
      }
      p.store(blk.y.data(), b, ch.e0, ch.valid, t0, nt, o.out);
    }
  }
  for (Channels<S>& ch : chans)
    for (int64_t w = 0; w < ch.valid; ++w)
      for (int64_t n = 0; n < N; ++n) o.last[(b * p.E + ch.e0 + w) * N + n] = ch.slot(n, 1)[w];
}

// ---------------------------------------------------------------- backward

template <typename S>
struct Grads {
  const S* ckpt;   // (B, n_cb, n_tb, N, W) from the forward
  const S* dout;   // (B, E, L)
  const S* dlast;  // (B, E, N) or nullptr
  S* du;
  S* ddelta;
  S* dz;          // nullptr without z
  double* dA;     // (B, E, N) partial sums per batch row
  double* dB;     // (G, B, N, L) partial sums per channel group
  double* dC;     // (G, B, N, L)
  double* dD;     // (B, E)
  double* dbias;  // (B, E)
};

// Recomputes the block from the state in seg row 0: seg rows 1..nt get a_t and h_t, y[t] = C_t . h_t,
// and the dL/dC lanes of dC get dy_t h_t (kFirst, the task's first channel block: are set to it).
template <bool kFirst, typename S, typename F>
void scan_recompute(Channels<S>& ch, Block<S>& blk, int64_t N, int64_t nt, const F& each_step) {
  const S* __restrict__ decay = ch.decay.data();
  const S* __restrict__ bt = blk.bt.data();
  const S* __restrict__ ct = blk.ct.data();
  const S* __restrict__ dt = blk.dt.data();
  const S* __restrict__ dtu = blk.dtu.data();
  const S* __restrict__ dy = blk.dy.data();
  S* __restrict__ seg = blk.seg.data();
  S* __restrict__ dCl = blk.dC.data();
  for (int64_t t = 0; t < nt; ++t) {
    each_step();
    if constexpr (kVectorExp && std::is_same_v<S, float>) {
      // Whole registers, for exp2_lanes' AVX-512 form; the same arithmetic as the loop below.
      Floats16 acc = {}, dt16, dtu16, dy16;
      std::memcpy(&dt16, dt + t * W, sizeof dt16);
      std::memcpy(&dtu16, dtu + t * W, sizeof dtu16);
      std::memcpy(&dy16, dy + t * W, sizeof dy16);
      for (int64_t n = 0; n < N; ++n) {
        Floats16 An, h, dC;
        S* cur = seg + ((t + 1) * N + n) * 2 * W;
        S* dCn = dCl + (t * N + n) * W;
        std::memcpy(&An, decay + n * W, sizeof An);
        std::memcpy(&h, seg + (t * N + n) * 2 * W + W, sizeof h);
        const Floats16 a = exp2_lanes(dt16 * An);
        h = a * h + dtu16 * bt[t * N + n];
        std::memcpy(cur, &a, sizeof a);
        std::memcpy(cur + W, &h, sizeof h);
        acc += ct[t * N + n] * h;
        if constexpr (kFirst) {
          dC = dy16 * h;
        } else {
          std::memcpy(&dC, dCn, sizeof dC);
          dC += dy16 * h;
        }
        std::memcpy(dCn, &dC, sizeof dC);
      }
      std::memcpy(blk.y.data() + t * W, &acc, sizeof acc);
      continue;
    }
    S acc[W] = {};
    for (int64_t n = 0; n < N; ++n) {
      const S bn = bt[t * N + n], cn = ct[t * N + n];
      const S* An = decay + n * W;
      const S* hp = seg + (t * N + n) * 2 * W + W;
      S* cur = seg + ((t + 1) * N + n) * 2 * W;
      S* dC = dCl + (t * N + n) * W;
#pragma GCC ivdep
      for (int64_t w = 0; w < W; ++w) {
        const S a = exp_scaled(dt[t * W + w] * An[w]);
        const S hv = a * hp[w] + dtu[t * W + w] * bn;
        cur[w] = a;
        cur[W + w] = hv;
        acc[w] += cn * hv;
        dC[w] = (kFirst ? S(0) : dC[w]) + dy[t * W + w] * hv;
      }
    }
    std::copy(acc, acc + W, blk.y.data() + t * W);
  }
}

// scan_reverse for float lanes and N = kRegisterStates: the N rows of dL/dh stay in vector registers from step
// to step instead of being loaded from and stored to ns at every state; the arithmetic is scan_reverse's, term
// for term.
template <bool kFirst, typename F>
inline void scan_reverse_in_registers(Channels<float>& ch, Block<float>& blk, int64_t nt, const F& each_step) {
  constexpr int64_t N = kRegisterStates;
  float* __restrict__ ns = ch.ns.data();
  const float* __restrict__ bt = blk.bt.data();
  const float* __restrict__ ct = blk.ct.data();
  const float* __restrict__ seg = blk.seg.data();
  float* __restrict__ dBl = blk.dB.data();
  Floats16 carry[N];
  for (int64_t n = 0; n < N; ++n) std::memcpy(&carry[n], ns + n * 3 * W + W, sizeof(Floats16));
  for (int64_t t = nt - 1; t >= 0; --t) {
    each_step();
    Floats16 dd = {}, sb = {}, dy, dtu, dt;
    std::memcpy(&dy, blk.dy.data() + t * W, sizeof dy);
    std::memcpy(&dtu, blk.dtu.data() + t * W, sizeof dtu);
    std::memcpy(&dt, blk.dt.data() + t * W, sizeof dt);
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      Floats16 An, hp, at, dB, dA;
      std::memcpy(&An, ns + n * 3 * W, sizeof An);
      std::memcpy(&dA, ns + n * 3 * W + 2 * W, sizeof dA);
      std::memcpy(&hp, seg + (t * N + n) * 2 * W + W, sizeof hp);
      std::memcpy(&at, seg + ((t + 1) * N + n) * 2 * W, sizeof at);
      const Floats16 gh = carry[n] + dy * ct[t * N + n];
      const Floats16 next = at * gh;
      const Floats16 ga = next * hp;
      if constexpr (kFirst) {
        dB = gh * dtu;
      } else {
        std::memcpy(&dB, dBl + (t * N + n) * W, sizeof dB);
        dB += gh * dtu;
      }
      dA += ga * dt;
      dd += ga * An;
      sb += gh * bt[t * N + n];
      carry[n] = next;
      std::memcpy(dBl + (t * N + n) * W, &dB, sizeof dB);
      std::memcpy(ns + n * 3 * W + 2 * W, &dA, sizeof dA);
    }
    // As scan_reverse's lane loop, on whole registers (indexing sb, dd and dt lane by lane, gcc extracted each
    // lane: 5% of the backward's time).
    Floats16 du, u, dsp;
    std::memcpy(&du, blk.y.data() + t * W, sizeof du);
    std::memcpy(&u, blk.u.data() + t * W, sizeof u);
    std::memcpy(&dsp, blk.dsp.data() + t * W, sizeof dsp);
    du += sb * dt;
    const Floats16 ddt = (dd + sb * u) * dsp;
    std::memcpy(blk.y.data() + t * W, &du, sizeof du);
    std::memcpy(blk.dt.data() + t * W, &ddt, sizeof ddt);
  }
  for (int64_t n = 0; n < N; ++n) std::memcpy(ns + n * 3 * W + W, &carry[n], sizeof(Floats16));
}

// Reverse sweep over one block (after scan_recompute). Carries dL/dh in ns slot 1; adds the dL/dB
// lanes to blk.dB (kFirst: sets them) and dA to ns slot 2; leaves du (without the skip term) in y and dL/d(raw
// delta) in dt.
template <bool kFirst, typename S, typename F>
void scan_reverse(Channels<S>& ch, Block<S>& blk, int64_t N, int64_t nt, const F& each_step) {
  S* __restrict__ ns = ch.ns.data();
  const S* __restrict__ bt = blk.bt.data();
  const S* __restrict__ ct = blk.ct.data();
  const S* __restrict__ seg = blk.seg.data();
  S* __restrict__ dBl = blk.dB.data();
  const S* __restrict__ dy = blk.dy.data();
  const S* __restrict__ dtu = blk.dtu.data();
  S* __restrict__ dt = blk.dt.data();
  S* __restrict__ du = blk.y.data();
  const S* __restrict__ u = blk.u.data();
  const S* __restrict__ dsp = blk.dsp.data();
  if constexpr (kVectorExp && std::is_same_v<S, float>) {
    if (N == kRegisterStates) return scan_reverse_in_registers<kFirst>(ch, blk, nt, each_step);
  }
  for (int64_t t = nt - 1; t >= 0; --t) {
    each_step();
    S dd[W] = {};  // dL/d(delta_t) through the decays
    S sb[W] = {};  // sum_n dL/dh_t[n] B_t[n]
    for (int64_t n = 0; n < N; ++n) {
      const S bn = bt[t * N + n], cn = ct[t * N + n];
      S* An = ns + n * 3 * W;  // then the carry and the dA scratch
      const S* hp = seg + (t * N + n) * 2 * W + W;
      const S* at = seg + ((t + 1) * N + n) * 2 * W;
      S* dB = dBl + (t * N + n) * W;
#pragma GCC ivdep
      for (int64_t w = 0; w < W; ++w) {
        const S gh = An[W + w] + dy[t * W + w] * cn;  // dL/dh_t
        const S carry = at[w] * gh;                    // exp(delta_t A) dL/dh_t, for step t - 1
        const S ga = carry * hp[w];                    // dL/d(delta_t A) through the decay
        dB[w] = (kFirst ? S(0) : dB[w]) + gh * dtu[t * W + w];
        An[2 * W + w] += ga * dt[t * W + w];
        dd[w] += ga * An[w];
        sb[w] += gh * bn;
        An[W + w] = carry;
      }
    }
    for (int64_t w = 0; w < W; ++w) {
      du[t * W + w] += sb[w] * dt[t * W + w];
      dt[t * W + w] = (dd[w] + sb[w] * u[t * W + w]) * dsp[t * W + w];
    }
  }
}

// Backward through the skip term and the gate; needs y from scan_recompute. Leaves dz in z and the
// skip part of du in y; dy (dL/dy before the gate) and the gate were set by gate_dy.
template <typename S>
void gate_backward(const Problem<S>& p, Channels<S>& ch, Block<S>& blk, int64_t nt) {
  blk.add_skip(ch, nt);
  S* __restrict__ y = blk.y.data();
  S* __restrict__ z = blk.z.data();
  const S* __restrict__ g = blk.gout.data();
  const S* __restrict__ dy = blk.dy.data();
  const S* __restrict__ u = blk.u.data();
  const S* __restrict__ gate = blk.gate.data();
  if (p.z != nullptr) {
    for (int64_t i = 0; i < nt * W; ++i) {
      const S s = gate[i];
      z[i] = g[i] * y[i] * s * (S(1) + z[i] * (S(1) - s));
    }
  }
  S dD[W] = {};
  for (int64_t t = 0; t < nt; ++t) {
    for (int64_t w = 0; w < W; ++w) {
      dD[w] += dy[t * W + w] * u[t * W + w];
      y[t * W + w] = dy[t * W + w] * ch.D[w];
    }
  }
  for (int64_t w = 0; w < W; ++w) ch.dD[w] += double(dD[w]);
}

// dy = dout * silu(z) (or dout without a gate); keeps sigmoid(z) in blk.gate for gate_backward.
template <typename S>
void gate_dy(const Problem<S>& p, Block<S>& blk, int64_t nt) {
  const S* __restrict__ g = blk.gout.data();
  const S* __restrict__ z = blk.z.data();
  S* __restrict__ dy = blk.dy.data();
  S* __restrict__ gate = blk.gate.data();
  if (p.z != nullptr) {
    for (int64_t i = 0; i < nt * W; ++i) {
      const S s = sigmoid(z[i]);
      gate[i] = s;
      dy[i] = g[i] * (z[i] * s);  // dout silu(z), silu first as in torch: no inf * 0
    }
  } else {
    std::copy(g, g + nt * W, dy);
  }
}

// Folds the block's dA scratch and ddelta into the channel block's double sums.
template <typename S>
void flush_sums(Channels<S>& ch, const Block<S>& blk, int64_t N, int64_t nt) {
  for (int64_t n = 0; n < N; ++n) {
    S* scratch = ch.slot(n, 2);
    for (int64_t w = 0; w < W; ++w) ch.dA[n * W + w] += double(scratch[w]);
    std::fill(scratch, scratch + W, S(0));
  }
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t w = 0; w < W; ++w) ch.dbias[w] += double(blk.dt[t * W + w]);
}

// Backward task: batch row b, channel group g.
template <typename S>
void backward_task(const Problem<S>& p, const Grads<S>& gr, int64_t b, int64_t g, const NextTask& next,
                   Block<S>& blk) {
  const int64_t N = p.N;
  std::vector<Channels<S>> chans = group_channels(p, g);
  if (gr.dlast != nullptr)
    for (Channels<S>& ch : chans)
      for (int64_t w = 0; w < ch.valid; ++w)
        for (int64_t n = 0; n < N; ++n) ch.slot(n, 1)[w] = gr.dlast[(b * p.E + ch.e0 + w) * N + n];
  for (int64_t tb = p.n_tb - 1; tb >= 0; --tb) {
    const int64_t t0 = tb * T, nt = std::min(T, p.L - t0);
    p.load_bc(b, t0, nt, blk.bt.data(), blk.ct.data());
    for (Channels<S>& ch : chans) {
      RowPrefetch<S> ahead;  // of the block after this one
      if (const std::optional<BlockAt> at = block_after(p, b, g, ch.e0 / W, tb, p.n_tb - 1, -1, next)) {
        if (at->first) ahead.add_bc(p, at->b, at->tb);
        ahead.add(p.ckpt_at(gr.ckpt, at->b, at->cb, at->tb), 0, 1, N * W);
        for (const S* src : {p.u, p.delta, p.z, gr.dout}) ahead.add_channels(p, src, at->b, at->cb, at->tb);
        for (const S* dst : {gr.du, gr.ddelta, gr.dz}) ahead.add_channels(p, dst, at->b, at->cb, at->tb, true);
      }
      const int64_t per_step = ahead.rows_per_step(2 * nt);  // over the recompute's and the reverse sweep's steps
      const auto each_step = [&]() __attribute__((always_inline)) { ahead.issue(per_step); };
      const S* h0 = p.ckpt_at(gr.ckpt, b, ch.e0 / W, tb);
      for (int64_t n = 0; n < N; ++n) std::copy(h0 + n * W, h0 + (n + 1) * W, blk.seg.data() + (2 * n + 1) * W);
      blk.template prepare<true>(p, ch, b, t0, nt);
      p.load(gr.dout, b, ch.e0, ch.valid, t0, nt, blk.gout.data());
      gate_dy(p, blk, nt);
      // The first channel block sets the dL/dB and dL/dC lanes, the others add to them.
      const auto sweeps = [&]<bool kFirst>() {
        scan_recompute<kFirst>(ch, blk, N, nt, each_step);
        gate_backward(p, ch, blk, nt);
        scan_reverse<kFirst>(ch, blk, N, nt, each_step);
      };
      if (&ch == &chans.front()) {
        sweeps.template operator()<true>();
      } else {
        sweeps.template operator()<false>();
      }
      ahead.issue_rest();
      flush_sums(ch, blk, N, nt);
      p.store(blk.y.data(), b, ch.e0, ch.valid, t0, nt, gr.du);
      p.store(blk.dt.data(), b, ch.e0, ch.valid, t0, nt, gr.ddelta);
      if (gr.dz != nullptr) p.store(blk.z.data(), b, ch.e0, ch.valid, t0, nt, gr.dz);
    }
    double* dB = gr.dB + (g * p.batch + b) * N * p.L + t0;
    double* dC = gr.dC + (g * p.batch + b) * N * p.L + t0;
    for (int64_t t = 0; t < nt; ++t) {
      for (int64_t n = 0; n < N; ++n) {
        const S* lb = blk.dB.data() + (t * N + n) * W;
        const S* lc = blk.dC.data() + (t * N + n) * W;
        double sB = 0.0, sC = 0.0;
        for (int64_t w = 0; w < W; ++w) {
          sB += double(lb[w]);
          sC += double(lc[w]);
        }
        dB[n * p.L + t] = sB;
        dC[n * p.L + t] = sC;
      }
    }
  }
  for (const Channels<S>& ch : chans) {
    for (int64_t w = 0; w < ch.valid; ++w) {
      const int64_t be = b * p.E + ch.e0 + w;
      for (int64_t n = 0; n < N; ++n) gr.dA[be * N + n] = ch.dA[n * W + w];
      gr.dD[be] = ch.dD[w];
      gr.dbias[be] = ch.dbias[w];
    }
  }
}

// ---------------------------------------------------------------- torch bindings

void check_input(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

template <typename S>
Problem<S> make_problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                        const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                        const at::Tensor& bias, const std::optional<at::Tensor>& z, bool softplus,
                        int64_t groups) {
  const at::ScalarType dtype = u.scalar_type();
  check_input(u, dtype, "u");
  check_input(delta, dtype, "delta");
  check_input(A, dtype, "A");
  check_input(Bm, dtype, "B");
  check_input(Cm, dtype, "C");
  check_input(D, dtype, "D");
  check_input(bias, dtype, "delta_bias");
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "u and delta must be (B, E, L)");
  const int64_t batch = u.size(0), E = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == E, "A must be (E, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(Bm.dim() == 3 && Bm.size(0) == batch && Bm.size(1) == N && Bm.size(2) == L,
              "B must be (B, N, L)");
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), "C must be (B, N, L)");
  TORCH_CHECK(D.numel() == E && bias.numel() == E, "D and delta_bias must be (E,)");
  if (z.has_value()) {
    check_input(*z, dtype, "z");
    TORCH_CHECK(z->sizes() == u.sizes(), "z must be (B, E, L)");
  }
  const int64_t n_cb = (E + W - 1) / W;
  TORCH_CHECK(groups >= 1 && groups <= std::max<int64_t>(n_cb, 1), "groups must be in [1, channel blocks]");
  return Problem<S>{u.const_data_ptr<S>(), delta.const_data_ptr<S>(), A.const_data_ptr<S>(),
                    Bm.const_data_ptr<S>(), Cm.const_data_ptr<S>(), D.const_data_ptr<S>(),
                    bias.const_data_ptr<S>(), z.has_value() ? z->const_data_ptr<S>() : nullptr,
                    softplus, batch, E, L, N, n_cb, (L + T - 1) / T, groups};
}

// Runs task(b, g, next, scratch) for every batch row b and channel group g. The threads take tasks from a
// shared counter (a thread slowed down by other load simply takes fewer) and reuse one scratch Block; `next`
// lets a task's last block prefetch the rows of the first block of the task the thread likely runs next (each
// task's first block was read from memory with nothing in flight).
template <typename S, typename F>
void for_each_task(const Problem<S>& p, bool backward, const F& task) {
  const int64_t n_tasks = p.batch * p.groups;
  std::atomic<int64_t> counter{0};
  const NextTask next{&counter, n_tasks, p.groups};
  at::parallel_for(0, std::min<int64_t>(n_tasks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    Block<S> blk(p.N, backward);
    for (int64_t i = counter++; i < n_tasks; i = counter++) task(i / p.groups, i % p.groups, next, blk);
  });
}

void check_output(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
  check_input(t, dtype, name);
  TORCH_CHECK(t.numel() == numel, name, " has ", t.numel(), " elements, expected ", numel);
}

void scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
              const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& bias,
              const std::optional<at::Tensor>& z, bool softplus, int64_t groups, const at::Tensor& out,
              const at::Tensor& last, const std::optional<at::Tensor>& ckpt) {
  const at::ScalarType dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "selective_scan_cpu: float32 or float64 only");
  const auto run = [&](auto zero) {
    using S = decltype(zero);
    const Problem<S> p = make_problem<S>(u, delta, A, Bm, Cm, D, bias, z, softplus, groups);
    check_output(out, dtype, u.numel(), "out");
    check_output(last, dtype, p.batch * p.E * p.N, "last_state");
    if (ckpt.has_value()) check_output(*ckpt, dtype, p.batch * p.n_cb * p.n_tb * p.N * W, "checkpoints");
    const Outputs<S> o{out.mutable_data_ptr<S>(), last.mutable_data_ptr<S>(),
                       ckpt.has_value() ? ckpt->mutable_data_ptr<S>() : nullptr};
    for_each_task(p, false, [&](int64_t b, int64_t g, const NextTask& next, Block<S>& blk) {
      forward_task(p, o, b, g, next, blk);
    });
  };
  if (dtype == at::kFloat) {
    run(0.0f);
  } else {
    run(0.0);
  }
}

void scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
              const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& bias,
              const std::optional<at::Tensor>& z, bool softplus, int64_t groups, const at::Tensor& ckpt,
              const at::Tensor& dout, const std::optional<at::Tensor>& dlast, const at::Tensor& du,
              const at::Tensor& ddelta, const std::optional<at::Tensor>& dz, const at::Tensor& dA,
              const at::Tensor& dB, const at::Tensor& dC, const at::Tensor& dD, const at::Tensor& dbias) {
  const at::ScalarType dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "selective_scan_cpu: float32 or float64 only");
  TORCH_CHECK(z.has_value() == dz.has_value(), "dz must be given exactly when z is");
  const auto run = [&](auto zero) {
    using S = decltype(zero);
    const Problem<S> p = make_problem<S>(u, delta, A, Bm, Cm, D, bias, z, softplus, groups);
    const int64_t bel = u.numel(), be = p.batch * p.E;
    check_output(ckpt, dtype, p.batch * p.n_cb * p.n_tb * p.N * W, "checkpoints");
    check_output(dout, dtype, bel, "dout");
    if (dlast.has_value()) check_output(*dlast, dtype, be * p.N, "dlast");
    check_output(du, dtype, bel, "du");
    check_output(ddelta, dtype, bel, "ddelta");
    if (dz.has_value()) check_output(*dz, dtype, bel, "dz");
    check_output(dA, at::kDouble, p.E * p.N, "dA");
    check_output(dB, at::kDouble, p.batch * p.N * p.L, "dB");
    check_output(dC, at::kDouble, p.batch * p.N * p.L, "dC");
    check_output(dD, at::kDouble, p.E, "dD");
    check_output(dbias, at::kDouble, p.E, "ddelta_bias");
    // float64 partial sums: one slice per batch row (dA, dD, d delta_bias) or channel group (dB, dC), each
    // written by one task, then added up below.
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    const at::Tensor pA = at::empty({be * p.N}, f64), pD = at::empty({be}, f64), pbias = at::empty({be}, f64);
    const at::Tensor pB = at::empty({groups * p.batch * p.N * p.L}, f64), pC = at::empty_like(pB);
    const Grads<S> gr{ckpt.const_data_ptr<S>(), dout.const_data_ptr<S>(),
                      dlast.has_value() ? dlast->const_data_ptr<S>() : nullptr, du.mutable_data_ptr<S>(),
                      ddelta.mutable_data_ptr<S>(), dz.has_value() ? dz->mutable_data_ptr<S>() : nullptr,
                      pA.mutable_data_ptr<double>(), pB.mutable_data_ptr<double>(), pC.mutable_data_ptr<double>(),
                      pD.mutable_data_ptr<double>(), pbias.mutable_data_ptr<double>()};
    for_each_task(p, true, [&](int64_t b, int64_t g, const NextTask& next, Block<S>& blk) {
      backward_task(p, gr, b, g, next, blk);
    });
    const auto add_up = [](const double* parts, int64_t slices, int64_t n, const at::Tensor& out) {
      double* o = out.mutable_data_ptr<double>();
      add_slices(parts, slices, n, [o](int64_t i, double sum) { o[i] = sum; });
    };
    add_up(gr.dA, p.batch, p.E * p.N, dA);
    add_up(gr.dB, groups, p.batch * p.N * p.L, dB);
    add_up(gr.dC, groups, p.batch * p.N * p.L, dC);
    add_up(gr.dD, p.batch, p.E, dD);
    add_up(gr.dbias, p.batch, p.E, dbias);
  };
  if (dtype == at::kFloat) {
    run(0.0f);
  } else {
    run(0.0);
  }
}

std::vector<int64_t> scan_layout() { return {W, T}; }

}  // namespace

TORCH_LIBRARY(vimtune_scan_cpu, m) {
  m.def("layout() -> int[]", &scan_layout);
  m.def(
      "fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor delta_bias, Tensor? z, "
      "bool delta_softplus, int groups, Tensor(a!) out, Tensor(b!) last_state, Tensor(c!)? checkpoints) -> ()",
      &scan_fwd);
  m.def(
      "bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor delta_bias, Tensor? z, "
      "bool delta_softplus, int groups, Tensor checkpoints, Tensor dout, Tensor? dlast, Tensor(a!) du, "
      "Tensor(b!) ddelta, Tensor(c!)? dz, Tensor(d!) dA, Tensor(e!) dB, Tensor(f!) dC, Tensor(g!) dD, "
      "Tensor(h!) ddelta_bias) -> ()",
      &scan_bwd);
}
