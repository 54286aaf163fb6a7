// TKFAC's input-side sum of one float32 convolution on the CPU, as one fused kernel.
//
//   phi_sum = sum_{n,t} r[n,t] a[n,t] a[n,t]^T        (d x d, d = C*kh*kw, +1 with a bias)
//
// a[n,t] is the im2col patch of output location t of sample n (zero padding, stride and
// dilation as the layer applies them, (c, i, j) order, a trailing 1 with a bias) and r the
// per-location weight (||u[n,t]||^2 for TKFAC, 1 for KFAC). This is docs/math.md's phi_sum
// and equals the MindSpore-op path B B^T with B = sqrt(r) a; it exists because MindSpore's CPU
// ops need an im2col, a weighting and a transpose pass over the d x N*T patch matrix plus a
// full (non-symmetric) product for it (docs/performance.md).
//
// How: the locations are cut into chunks of whole output rows. For each chunk the weighted
// patch panel P = sqrt(r) a ([d(+1)] x [chunk], row-major, rows padded to a multiple of 4 and
// columns to a multiple of 16 with zeros) is built in cache, and the upper triangle of P P^T is
// accumulated in 4 x 4 tiles of 16-lane vectors (GCC vector extensions: AVX-512 or AVX2 code
// from -march=native). Every chunk's tile sums are added to a float64 accumulator, so
// the float32 rounding is that of a sum over one chunk (<= 1024 terms per lane-sum of 64).
// Threads split the locations (private accumulators, added at the end) when there are many
// chunks, else each chunk (its panel's channels, then its tile rows; one shared accumulator);
// they then write the symmetric output in blocks.
//
// MindSpore AOT signature (ops.Custom(func_type="aot")): inputs x [N, C, H, W] float32,
// r [N, Ho, Wo] float32, geom [10] int32 = (kh, kw, sh, sw, dh, dw, pad_top, pad_left,
// has_bias, threads) (a pad of -1: pad_mode "same", derived from the sizes); output phi [dd, dd] float32, dd = C*kh*kw + has_bias.

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

// One SIMD register of floats: 16 lanes with AVX-512, else 8 (AVX2 and older get 8-lane code).
#if defined(__AVX512F__)
#define VLANES 16
#else
#define VLANES 8
#endif
typedef float vf __attribute__((vector_size(VLANES * 4), aligned(VLANES * 4)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

struct Geom {
  int64_t n, c, h, w, ho, wo;
  int64_t kh, kw, sh, sw, dh, dw, pt, pl;
  int64_t has_bias;
  int64_t d;   // rows of P: c*kh*kw + has_bias
  int64_t d4;  // d rounded up to a multiple of 4
};

// Sums of four vectors, as one 4-vector: halving adds, then two pairwise-add levels.
inline v4 hsum4(vf a, vf b, vf c, vf e) {
#if VLANES == 16
  v8 a8 = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  v8 b8 = __builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15);
  v8 c8 = __builtin_shufflevector(c, c, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(c, c, 8, 9, 10, 11, 12, 13, 14, 15);
  v8 e8 = __builtin_shufflevector(e, e, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(e, e, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  v8 a8 = a, b8 = b, c8 = c, e8 = e;
#endif
  v4 a4 = __builtin_shufflevector(a8, a8, 0, 1, 2, 3) + __builtin_shufflevector(a8, a8, 4, 5, 6, 7);
  v4 b4 = __builtin_shufflevector(b8, b8, 0, 1, 2, 3) + __builtin_shufflevector(b8, b8, 4, 5, 6, 7);
  v4 c4 = __builtin_shufflevector(c8, c8, 0, 1, 2, 3) + __builtin_shufflevector(c8, c8, 4, 5, 6, 7);
  v4 e4 = __builtin_shufflevector(e8, e8, 0, 1, 2, 3) + __builtin_shufflevector(e8, e8, 4, 5, 6, 7);
  // [a0+a1, a2+a3, b0+b1, b2+b3] and the same for c, e; then once more
  v4 ab = __builtin_shufflevector(a4, b4, 0, 2, 4, 6) + __builtin_shufflevector(a4, b4, 1, 3, 5, 7);
  v4 ce = __builtin_shufflevector(c4, e4, 0, 2, 4, 6) + __builtin_shufflevector(c4, e4, 1, 3, 5, 7);
  return __builtin_shufflevector(ab, ce, 0, 2, 4, 6) + __builtin_shufflevector(ab, ce, 1, 3, 5, 7);
}

inline void add4(double* o, v4 s) {
  o[0] += s[0];
  o[1] += s[1];
  o[2] += s[2];
  o[3] += s[3];
}

// Fills the rows of P (stride ld floats) of input channels [c0, c1) (and, if `extra`, the bias
// row and the zero rows up to d4) for output rows [row0, row1) of the flattened (n, ty) index:
// `cols` = (row1 - row0) * wo columns; returns cols rounded up to 16 (zero padded). `wbuf`
// receives sqrt(r) of those locations.
int64_t fill_panel(const Geom& g, const float* x, const float* r, int64_t row0, int64_t row1,
                   int64_t c0, int64_t c1, bool extra, float* P, int64_t ld, float* wbuf) {
  const int64_t wo = g.wo;
  const int64_t cols = (row1 - row0) * wo;
  const int64_t cols16 = (cols + 15) / 16 * 16;
  for (int64_t q = 0; q < cols; ++q) {
    const int64_t nr = row0 + q / wo;  // n * ho + ty
    wbuf[q] = std::sqrt(std::max(r[nr * wo + q % wo], 0.0f));
  }
  for (int64_t q = cols; q < cols16; ++q) wbuf[q] = 0.f;
  const int64_t hw = g.h * g.w;
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        float* dst = P + ((c * g.kh + ky) * g.kw + kx) * ld;
        const int64_t xoff = kx * g.dw - g.pl;
        // tx range with 0 <= tx*sw + xoff < w
        int64_t lo = xoff >= 0 ? 0 : (-xoff + g.sw - 1) / g.sw;
        int64_t hi = g.w - xoff <= 0 ? 0 : (g.w - xoff + g.sw - 1) / g.sw;
        lo = std::min(lo, wo);
        hi = std::min(std::max(hi, lo), wo);
        for (int64_t nr = row0; nr < row1; ++nr) {
          const int64_t n = nr / g.ho, ty = nr % g.ho;
          const int64_t iy = ty * g.sh - g.pt + ky * g.dh;
          float* out = dst + (nr - row0) * wo;
          const float* wr = wbuf + (nr - row0) * wo;
          if (iy < 0 || iy >= g.h) {
            std::memset(out, 0, sizeof(float) * wo);
            continue;
          }
          const float* src = x + n * g.c * hw + c * hw + iy * g.w + xoff;
          for (int64_t tx = 0; tx < lo; ++tx) out[tx] = 0.f;
          if (g.sw == 1) {
            for (int64_t tx = lo; tx < hi; ++tx) out[tx] = wr[tx] * src[tx];
          } else {
            for (int64_t tx = lo; tx < hi; ++tx) out[tx] = wr[tx] * src[tx * g.sw];
          }
          for (int64_t tx = hi; tx < wo; ++tx) out[tx] = 0.f;
        }
        for (int64_t q = cols; q < cols16; ++q) dst[q] = 0.f;
      }
    }
  }
  if (!extra) return cols16;
  int64_t row = g.c * g.kh * g.kw;
  if (g.has_bias) {
    std::memcpy(P + row * ld, wbuf, sizeof(float) * cols16);
    ++row;
  }
  for (; row < g.d4; ++row) std::memset(P + row * ld, 0, sizeof(float) * cols16);
  return cols16;
}

// acc[i * d4 + k] += sum_q P[i, q] P[k, q] for the 4x4 tiles with k-tile >= i-tile, of the
// tile rows ib = 4 * (tid + j * threads) (interleaved: the rows shorten along the triangle).
// kStore: the panel is the only chunk; the sums go straight into the d x d output `out`
// (entries inside it only) instead of being added to `acc`.
template <bool kStore>
void syrk_upper(const float* P, int64_t ld, int64_t cols16, int64_t d4, double* acc, float* out,
                int64_t d, int64_t tid, int64_t threads) {
  const int64_t nv = cols16 / VLANES;
  for (int64_t ib = 4 * tid; ib < d4; ib += 4 * threads) {
    const vf* a0 = reinterpret_cast<const vf*>(P + (ib + 0) * ld);
    const vf* a1 = reinterpret_cast<const vf*>(P + (ib + 1) * ld);
    const vf* a2 = reinterpret_cast<const vf*>(P + (ib + 2) * ld);
    const vf* a3 = reinterpret_cast<const vf*>(P + (ib + 3) * ld);
    for (int64_t kb = ib; kb < d4; kb += 4) {
      const vf* b0 = reinterpret_cast<const vf*>(P + (kb + 0) * ld);
      const vf* b1 = reinterpret_cast<const vf*>(P + (kb + 1) * ld);
      const vf* b2 = reinterpret_cast<const vf*>(P + (kb + 2) * ld);
      const vf* b3 = reinterpret_cast<const vf*>(P + (kb + 3) * ld);
      vf c00 = {}, c01 = {}, c02 = {}, c03 = {};
      vf c10 = {}, c11 = {}, c12 = {}, c13 = {};
      vf c20 = {}, c21 = {}, c22 = {}, c23 = {};
      vf c30 = {}, c31 = {}, c32 = {}, c33 = {};
      for (int64_t v = 0; v < nv; ++v) {
        const vf x0 = a0[v], x1 = a1[v], x2 = a2[v], x3 = a3[v];
        const vf y0 = b0[v], y1 = b1[v], y2 = b2[v], y3 = b3[v];
        c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3;
        c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3;
        c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3;
        c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3;
      }
      const v4 rows4[4] = {hsum4(c00, c01, c02, c03), hsum4(c10, c11, c12, c13),
                           hsum4(c20, c21, c22, c23), hsum4(c30, c31, c32, c33)};
      if constexpr (kStore) {
        for (int64_t ii = 0; ii < 4 && ib + ii < d; ++ii)
          for (int64_t kk = 0; kk < 4 && kb + kk < d; ++kk) out[(ib + ii) * d + kb + kk] = rows4[ii][kk];
      } else {
        for (int64_t ii = 0; ii < 4; ++ii) add4(acc + (ib + ii) * d4 + kb, rows4[ii]);
      }
    }
  }
}

struct Job {
  Geom g;
  const float* x;
  const float* r;
  float* P;         // the shared panel, d4 x ld
  int64_t ld;
  int64_t rows_per;  // output rows per chunk
  double* acc;      // d4 x d4, upper tiles used
  float* out;       // d x d
  int64_t threads;
  std::barrier<>* sync;
};

// Splitting the locations (each thread its own rows, panel and float64 accumulator, added at
// the end): no synchronisation, for many chunks and small d.
void worker_rows(const Job* job, int64_t tid, double* acc) {
  const Geom& g = job->g;
  const int64_t rows = g.n * g.ho;
  float* P = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * job->ld * g.d4));
  float* wbuf = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * job->ld));
  const int64_t a = rows * tid / job->threads, b = rows * (tid + 1) / job->threads;
  for (int64_t r0 = a; r0 < b; r0 += job->rows_per) {
    const int64_t r1 = std::min(b, r0 + job->rows_per);
    const int64_t cols16 = fill_panel(g, job->x, job->r, r0, r1, 0, g.c, true, P, job->ld, wbuf);
    syrk_upper<false>(P, job->ld, cols16, g.d4, acc, nullptr, g.d, 0, 1);
  }
  std::free(P);
  std::free(wbuf);
}

// Splitting each chunk (the panel's channels, then the tile rows; two barriers per chunk) with
// one shared accumulator: for few chunks or large d.
void worker_tiles(const Job* job, int64_t tid) {
  const Geom& g = job->g;
  float* wbuf = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * job->ld));
  const int64_t rows = g.n * g.ho;
  const int64_t c0 = g.c * tid / job->threads, c1 = g.c * (tid + 1) / job->threads;
  for (int64_t r0 = 0; r0 < rows; r0 += job->rows_per) {
    const int64_t r1 = std::min(rows, r0 + job->rows_per);
    const int64_t cols16 =
        fill_panel(g, job->x, job->r, r0, r1, c0, c1, tid == 0, job->P, job->ld, wbuf);
    job->sync->arrive_and_wait();
    if (job->acc == nullptr)
      syrk_upper<true>(job->P, job->ld, cols16, g.d4, nullptr, job->out, g.d, tid, job->threads);
    else
      syrk_upper<false>(job->P, job->ld, cols16, g.d4, job->acc, nullptr, g.d, tid, job->threads);
    job->sync->arrive_and_wait();
  }
  std::free(wbuf);
}

// The output from the upper triangle of the accumulator, mirrored, in 64 x 64 blocks (block
// rows interleaved over the threads).
void write_out(const Job* job, int64_t tid) {
  const Geom& g = job->g;
  const int64_t B = 64;
  for (int64_t bi = B * tid; bi < g.d; bi += B * job->threads) {
    for (int64_t bk = bi; bk < g.d; bk += B) {
      for (int64_t i = bi; i < std::min(bi + B, g.d); ++i) {
        for (int64_t k = std::max(i, bk); k < std::min(bk + B, g.d); ++k) {
          const float v = job->acc ? static_cast<float>(job->acc[i * g.d4 + k]) : job->out[i * g.d + k];
          job->out[i * g.d + k] = v;
          job->out[k * g.d + i] = v;
        }
      }
    }
  }
}

template <class F>
void run_threads(int64_t threads, F fn) {
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(fn, t);
  fn(0);
  for (auto& th : pool) th.join();
}

}  // namespace

extern "C" int TkfacConvPhi(int nparam, void** params, int* ndims, int64_t** shapes,
                            const char** dtypes, void* stream, void* extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 3 || ndims[3] != 2) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[1], "float32") != 0) return 2;
  const float* x = static_cast<const float*>(params[0]);
  const float* r = static_cast<const float*>(params[1]);
  const int32_t* gi = static_cast<const int32_t*>(params[2]);
  float* out = static_cast<float*>(params[3]);
  Geom g{};
  g.n = shapes[0][0];
  g.c = shapes[0][1];
  g.h = shapes[0][2];
  g.w = shapes[0][3];
  g.ho = shapes[1][1];
  g.wo = shapes[1][2];
  g.kh = gi[0]; g.kw = gi[1]; g.sh = gi[2]; g.sw = gi[3]; g.dh = gi[4]; g.dw = gi[5];
  g.pt = gi[6]; g.pl = gi[7]; g.has_bias = gi[8];
  // pad_mode "same": the layer's top/left pads follow from the sizes (total // 2, as MindSpore)
  if (g.pt < 0) g.pt = std::max<int64_t>((g.ho - 1) * g.sh + g.dh * (g.kh - 1) + 1 - g.h, 0) / 2;
  if (g.pl < 0) g.pl = std::max<int64_t>((g.wo - 1) * g.sw + g.dw * (g.kw - 1) + 1 - g.w, 0) / 2;
  int64_t threads = gi[9];
  g.d = g.c * g.kh * g.kw + g.has_bias;
  g.d4 = (g.d + 3) / 4 * 4;
  if (shapes[1][0] != g.n || shapes[3][0] != g.d || shapes[3][1] != g.d) return 3;
  // output rows per chunk: about 1024 columns, fewer when the panel would leave L2
  const int64_t target = std::max<int64_t>(128, std::min<int64_t>(1024, (1 << 18) / g.d4));
  Job job{};
  job.g = g;
  job.x = x;
  job.r = r;
  job.out = out;
  job.rows_per = std::max<int64_t>(1, target / g.wo);
  job.ld = (job.rows_per * g.wo + 15) / 16 * 16;
  const int64_t rows = g.n * g.ho;
  const int64_t chunks = (rows + job.rows_per - 1) / job.rows_per;
  const int64_t d2 = g.d4 * g.d4;
  std::vector<double> acc(chunks > 1 ? d2 : 0, 0.0);  // one chunk: sums stored into `out`
  job.acc = chunks > 1 ? acc.data() : nullptr;
  if (chunks >= 4 * threads && threads * d2 * 8 <= (int64_t{256} << 20)) {
    job.threads = std::max<int64_t>(1, std::min<int64_t>(threads, rows));
    std::vector<std::vector<double>> extra(job.threads - 1, std::vector<double>(d2, 0.0));
    run_threads(job.threads, [&](int64_t t) {
      worker_rows(&job, t, t == 0 ? acc.data() : extra[t - 1].data());
    });
    for (auto& e : extra)
      for (int64_t i = 0; i < d2; ++i) acc[i] += e[i];
  } else {
    job.threads = std::max<int64_t>(1, std::min<int64_t>({threads, g.c, g.d4 / 4}));
    job.P = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * job.ld * g.d4));
    std::barrier<> sync(job.threads);
    job.sync = &sync;
    run_threads(job.threads, [&](int64_t t) { worker_tiles(&job, t); });
    std::free(job.P);
  }
  job.threads = std::max<int64_t>(1, threads);
  run_threads(job.threads, [&](int64_t t) { write_out(&job, t); });
  return 0;
}
