// int8 weight-only matmul for XLA:CPU, called through the XLA FFI (avjax/nn/native).
//
//   y[m, o] = (sum_i x[m, i] * q[i, o]) * scale[o]
//
// x float32 [M, K], q int8 [K, N] row-major (the layout `convert_params` stores), scale
// float32 [N], y float32 [M, N]. Each int8 weight is read from memory once per call and
// widened to float32 in registers; sums accumulate in float32 in row order of i.
//
// Loop order: axpy rows. The output columns are cut into tiles whose float32
// accumulators [M, T] fit in 32 KiB (T = all columns of the thread's chunk at M = 1).
// Per tile, q is read in blocks of 4 rows (AVX-512 at M = 1: 8, the next block
// prefetched): each 16- (AVX-512) or 8-column (AVX2) group of the block is widened to
// float32 in registers and added into the accumulators of every row of x, the rows of x
// in groups of 4 (AVX-512) or 2 (AVX2) whose broadcasts stay in registers.
// The columns are split into contiguous chunks (whole cache lines) run on XLA's intra-op
// thread pool (pool_chunks.h).
//
// The instruction set is picked at run time (AVX-512F+BW+VL, AVX2+FMA, or portable C++),
// so one build serves every x86-64 machine (and other targets use the portable loop).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "pool_chunks.h"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define AVJAX_X86 1
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRows = 4;  // rows of q per block (weight vectors converted at once)

struct Problem {
  const float* x;
  const int8_t* q;
  const float* scale;
  float* y;
  int64_t m, k, n;
};

// Accumulators of one column tile: [M, T] floats (at most kTileFloats, 32 KiB), rows
// `stride` apart, padded so they never lie a multiple of 4 KiB apart (rows of y itself
// often do, N = 1024 or 4096 floats: accumulating in y made a 16-row call 4x slower).
constexpr int64_t kTileFloats = 8192;
constexpr int64_t kLine = 64;  // int8 columns per cache line of q

struct Tile {
  int64_t width, stride;  // columns; floats between rows of acc
  float* acc;             // [M, stride]
};

int64_t TileWidth(int64_t m, int64_t width) {
  const int64_t t = std::max<int64_t>(kLine, kTileFloats / m / kLine * kLine);
  return std::min(t, width);
}

// y[:, c0:c0+T] = (x @ q[:, c0:c0+T]) * scale[c0:c0+T], accumulating in `acc`. Portable C++.
void TileGeneric(const Problem& p, int64_t c0, const Tile& t) {
  for (int64_t r = 0; r < p.m; ++r) std::fill_n(t.acc + r * t.stride, t.width, 0.0f);
  for (int64_t i = 0; i < p.k; ++i) {
    const int8_t* qi = p.q + i * p.n + c0;
    for (int64_t r = 0; r < p.m; ++r) {
      const float xv = p.x[r * p.k + i];
      float* a = t.acc + r * t.stride;
      for (int64_t o = 0; o < t.width; ++o) a[o] += xv * static_cast<float>(qi[o]);
    }
  }
  for (int64_t r = 0; r < p.m; ++r)
    for (int64_t o = 0; o < t.width; ++o)
      p.y[r * p.n + c0 + o] = t.acc[r * t.stride + o] * p.scale[c0 + o];
}

#ifdef AVJAX_X86
#define AVJAX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define AVJAX_AVX2 __attribute__((target("avx2,fma")))

AVJAX_AVX512 inline __m512 Widen512(const int8_t* q, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, q)));
}

// acc[r0 .. r0+RB) += x[r0 .. r0+RB, i .. i+KR) @ q[i .. i+KR, c0 .. c0+T): KR rows of q
// widened in registers, the RB x KR broadcasts of x held in registers, and each cache line
// of the next KR rows of q prefetched (the hardware prefetchers alone reached 8 GB/s on
// 1024-column rows from one core, 10 with this).
template <int RB, int KR>
AVJAX_AVX512 void DirectAvx512(const Problem& p, const Tile& t, int64_t i, int64_t c0,
                               int64_t r0, __mmask16 tail) {
  __m512 xs[RB][KR];
  for (int rr = 0; rr < RB; ++rr)
    for (int kk = 0; kk < KR; ++kk) xs[rr][kk] = _mm512_set1_ps(p.x[(r0 + rr) * p.k + i + kk]);
  const int8_t* q = p.q + i * p.n + c0;
  const bool prefetch = i + 2 * KR <= p.k;
  for (int64_t o = 0; o < t.width; o += 16) {
    const __mmask16 mask = o + 16 <= t.width ? static_cast<__mmask16>(0xFFFF) : tail;
    if (prefetch && o % kLine == 0) {
#pragma GCC unroll 8
      for (int kk = 0; kk < KR; ++kk)
        _mm_prefetch(reinterpret_cast<const char*>(q + (KR + kk) * p.n + o), _MM_HINT_T0);
    }
    __m512 v[KR];
#pragma GCC unroll 8
    for (int kk = 0; kk < KR; ++kk) v[kk] = Widen512(q + kk * p.n + o, mask);
#pragma GCC unroll 4
    for (int rr = 0; rr < RB; ++rr) {
      float* a = t.acc + (r0 + rr) * t.stride + o;
      __m512 acc = _mm512_maskz_loadu_ps(mask, a);
#pragma GCC unroll 8
      for (int kk = 0; kk < KR; ++kk) acc = _mm512_fmadd_ps(v[kk], xs[rr][kk], acc);
      _mm512_mask_storeu_ps(a, mask, acc);
    }
  }
}

AVJAX_AVX512 void TileAvx512(const Problem& p, int64_t c0, const Tile& t) {
  const int64_t w = t.width;
  const __mmask16 tail = static_cast<__mmask16>((1u << (w % 16)) - 1u);
  auto mask_at = [&](int64_t o) { return o + 16 <= w ? static_cast<__mmask16>(0xFFFF) : tail; };
  for (int64_t r = 0; r < p.m; ++r) std::fill_n(t.acc + r * t.stride, w, 0.0f);
  int64_t i = 0;
  if (p.m == 1)  // one row of x: blocks of 8 rows of q (fewer passes over acc)
    for (; i + 8 <= p.k; i += 8) DirectAvx512<1, 8>(p, t, i, c0, 0, tail);
  for (; i + kRows <= p.k; i += kRows) {
    // Rows of x in groups of 4: their broadcasts stay in registers; q's block is widened
    // once per group (from L1 after the first).
    int64_t r = 0;
    for (; r + 4 <= p.m; r += 4) DirectAvx512<4, kRows>(p, t, i, c0, r, tail);
    switch (p.m - r) {
      case 3: DirectAvx512<3, kRows>(p, t, i, c0, r, tail); break;
      case 2: DirectAvx512<2, kRows>(p, t, i, c0, r, tail); break;
      case 1: DirectAvx512<1, kRows>(p, t, i, c0, r, tail); break;
    }
  }
  for (; i < p.k; ++i) {  // the last k % kRows rows, one at a time
    const int8_t* qi = p.q + i * p.n + c0;
    for (int64_t o = 0; o < w; o += 16) {
      const __mmask16 mask = mask_at(o);
      const __m512 wv = Widen512(qi + o, mask);
      for (int64_t r = 0; r < p.m; ++r) {
        float* a = t.acc + r * t.stride + o;
        __m512 acc = _mm512_maskz_loadu_ps(mask, a);
        acc = _mm512_fmadd_ps(wv, _mm512_set1_ps(p.x[r * p.k + i]), acc);
        _mm512_mask_storeu_ps(a, mask, acc);
      }
    }
  }
  for (int64_t o = 0; o < w; o += 16) {
    const __mmask16 mask = mask_at(o);
    const __m512 s = _mm512_maskz_loadu_ps(mask, p.scale + c0 + o);
    for (int64_t r = 0; r < p.m; ++r) {
      const __m512 a = _mm512_maskz_loadu_ps(mask, t.acc + r * t.stride + o);
      _mm512_mask_storeu_ps(p.y + r * p.n + c0 + o, mask, _mm512_mul_ps(a, s));
    }
  }
}

AVJAX_AVX2 inline __m256 Widen256(const int8_t* q) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

// acc[r0 .. r0+RB, 0 .. full) += x[r0 .. r0+RB, i .. i+4) @ q[i .. i+4, tile] (q0: row i).
template <int RB>
AVJAX_AVX2 void DirectAvx2(const Problem& p, const Tile& t, const int8_t* q0, int64_t i,
                           int64_t r0, int64_t full) {
  __m256 xs[RB][kRows];
  for (int rr = 0; rr < RB; ++rr)
    for (int kk = 0; kk < kRows; ++kk) xs[rr][kk] = _mm256_set1_ps(p.x[(r0 + rr) * p.k + i + kk]);
  const int8_t* q1 = q0 + p.n;
  const int8_t* q2 = q1 + p.n;
  const int8_t* q3 = q2 + p.n;
  for (int64_t o = 0; o < full; o += 8) {
    const __m256 w0 = Widen256(q0 + o), w1 = Widen256(q1 + o);
    const __m256 w2 = Widen256(q2 + o), w3 = Widen256(q3 + o);
    for (int rr = 0; rr < RB; ++rr) {
      float* a = t.acc + (r0 + rr) * t.stride + o;
      __m256 acc = _mm256_loadu_ps(a);
      acc = _mm256_fmadd_ps(w0, xs[rr][0], acc);
      acc = _mm256_fmadd_ps(w1, xs[rr][1], acc);
      acc = _mm256_fmadd_ps(w2, xs[rr][2], acc);
      acc = _mm256_fmadd_ps(w3, xs[rr][3], acc);
      _mm256_storeu_ps(a, acc);
    }
  }
}

// AVX2 + FMA: whole 8-column groups vectorised (rows of x in pairs, broadcasts in
// registers), the last width % 8 columns in scalar code.
AVJAX_AVX2 void TileAvx2(const Problem& p, int64_t c0, const Tile& t) {
  const int64_t w = t.width, full = w / 8 * 8;
  for (int64_t r = 0; r < p.m; ++r) std::fill_n(t.acc + r * t.stride, w, 0.0f);
  int64_t i = 0;
  for (; i + kRows <= p.k; i += kRows) {
    const int8_t* q0 = p.q + i * p.n + c0;
    const int8_t* q1 = q0 + p.n;
    const int8_t* q2 = q1 + p.n;
    const int8_t* q3 = q2 + p.n;
    int64_t r = 0;
    for (; r + 2 <= p.m; r += 2) DirectAvx2<2>(p, t, q0, i, r, full);
    if (r < p.m) DirectAvx2<1>(p, t, q0, i, r, full);
    for (int64_t o = full; o < w; ++o) {
      for (int64_t r = 0; r < p.m; ++r) {
        const float* xr = p.x + r * p.k + i;
        float& a = t.acc[r * t.stride + o];
        a = std::fma(static_cast<float>(q0[o]), xr[0], a);
        a = std::fma(static_cast<float>(q1[o]), xr[1], a);
        a = std::fma(static_cast<float>(q2[o]), xr[2], a);
        a = std::fma(static_cast<float>(q3[o]), xr[3], a);
      }
    }
  }
  for (; i < p.k; ++i) {
    const int8_t* qi = p.q + i * p.n + c0;
    for (int64_t r = 0; r < p.m; ++r) {
      const float xv = p.x[r * p.k + i];
      float* a = t.acc + r * t.stride;
      for (int64_t o = 0; o < w; ++o) a[o] = std::fma(static_cast<float>(qi[o]), xv, a[o]);
    }
  }
  for (int64_t r = 0; r < p.m; ++r)
    for (int64_t o = 0; o < w; ++o)
      p.y[r * p.n + c0 + o] = t.acc[r * t.stride + o] * p.scale[c0 + o];
}
#endif  // AVJAX_X86

using TileFn = void (*)(const Problem&, int64_t, const Tile&);

TileFn PickTile() {
#ifdef AVJAX_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return TileAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return TileAvx2;
#endif
  return TileGeneric;
}

// 0: picked at run time; 1: portable; 2: AVX2; 3: AVX-512 (tests force the narrower ones;
// a forced set the CPU lacks falls back to the run-time pick).
TileFn Pick(int64_t isa) {
  static const TileFn best = PickTile();
  if (isa == 1) return TileGeneric;
#ifdef AVJAX_X86
  if (isa == 2 && best != TileGeneric) return TileAvx2;
#endif
  return best;
}

// Columns [n0, n1) of y, tile by tile.
void Range(const Problem& p, TileFn fn, int64_t n0, int64_t n1) {
  const int64_t tw = TileWidth(p.m, n1 - n0);
  const int64_t stride = p.m == 1 ? tw : tw + 16;  // rows never 4 KiB apart
  float* acc = avjax_native::ThreadScratch(p.m * stride);
  for (int64_t c0 = n0; c0 < n1; c0 += tw) fn(p, c0, Tile{std::min(tw, n1 - c0), stride, acc});
}

constexpr int64_t kChunkAlign = kLine;          // chunks start on a cache line of each row
constexpr int64_t kMinWorkPerChunk = 1 << 18;  // weights x rows per thread, at least

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> q,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y,
                          int64_t max_threads, int64_t isa) {
  const auto xd = x.dimensions(), qd = q.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || qd.size() != 2 || yd.size() != 2 || scale.dimensions().size() != 1)
    return ffi::Error::InvalidArgument("avjax_int8_matmul: x [M, K], q [K, N], scale [N]");
  const int64_t m = xd[0], k = xd[1], n = qd[1];
  if (qd[0] != k || scale.dimensions()[0] != n || yd[0] != m || yd[1] != n)
    return ffi::Error::InvalidArgument("avjax_int8_matmul: shapes do not match");
  Problem p{x.typed_data(), q.typed_data(), scale.typed_data(), y->typed_data(), m, k, n};
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::memset(p.y, 0, m * n * sizeof(float));
    return ffi::Error::Success();
  }
  const TileFn fn = Pick(isa);

  const int64_t threads = avjax_native::Threads(pool, max_threads);
  const int64_t by_work = std::max<int64_t>(1, k * n * m / kMinWorkPerChunk);
  avjax_native::RunRanges(pool, n, kChunkAlign, std::min(threads, by_work),
                          [&p, fn](int64_t n0, int64_t n1) { Range(p, fn, n0, n1); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvjaxInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("max_threads")
                                  .Attr<int64_t>("isa"));
