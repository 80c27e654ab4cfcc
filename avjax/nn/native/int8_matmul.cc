// int8 weight-only matmul for XLA:CPU, called through the XLA FFI (avjax/nn/native).
//
//   y[m, o] = (sum_i x[m, i] * q[i, o]) * scale[o]
//
// x float32 [M, K], q int8 [K, N] row-major (the layout `convert_params` stores), scale
// float32 [N], y float32 [M, N]. Each int8 weight is read from memory once per call and
// widened to float32 in registers; sums accumulate in float32 in row order of i.
//
// Loop order: axpy rows. For a block of R rows of q (i .. i+R-1) and a 16- (AVX-512) or
// 8-wide (AVX2) group of columns, the R weight vectors are converted once and added into
// y[m, group] for every row m of x (y stays in L1 / L2; q streams through once, R
// sequential streams at a time). The columns are split into contiguous chunks (whole
// cache lines) run on XLA's intra-op thread pool; the calling thread takes chunks too and
// also takes any chunk no pool thread has started, so a busy or one-thread pool never
// stalls the call.
//
// The instruction set is picked at run time (AVX-512F+BW+VL, AVX2+FMA, or portable C++),
// so one build serves every x86-64 machine (and other targets use the portable loop).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

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

// Accumulators of one column tile: [M, T] floats, rows `stride` apart. T is chosen so the
// tile stays in L1 (kTileFloats), and rows are padded so they never lie a multiple of 4 KiB
// apart (rows of y itself often do: N = 1024 or 4096 floats; the aliasing made a 16-row
// call 4x slower).
constexpr int64_t kTileFloats = 4096;
constexpr int64_t kLine = 64;  // int8 columns per cache line of q

struct Tile {
  int64_t width, stride;
  float* acc;
};

int64_t TileWidth(int64_t m, int64_t width) {
  const int64_t t = std::max<int64_t>(kLine, kTileFloats / m / kLine * kLine);
  return std::min(t, width);
}

float* Scratch(int64_t floats) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t size = 0;
  if (size < floats) {
    buf.reset(new float[floats]);
    size = floats;
  }
  return buf.get();
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

AVJAX_AVX512 void TileAvx512(const Problem& p, int64_t c0, const Tile& t) {
  const int64_t w = t.width;
  const __mmask16 tail = static_cast<__mmask16>((1u << (w % 16)) - 1u);
  auto mask_at = [&](int64_t o) { return o + 16 <= w ? static_cast<__mmask16>(0xFFFF) : tail; };
  for (int64_t r = 0; r < p.m; ++r) std::fill_n(t.acc + r * t.stride, w, 0.0f);
  int64_t i = 0;
  for (; i + kRows <= p.k; i += kRows) {
    const int8_t* q0 = p.q + i * p.n + c0;
    const int8_t* q1 = q0 + p.n;
    const int8_t* q2 = q1 + p.n;
    const int8_t* q3 = q2 + p.n;
    if (p.m == 1) {  // the broadcasts of x stay in registers across the row
      const __m512 x0 = _mm512_set1_ps(p.x[i]), x1 = _mm512_set1_ps(p.x[i + 1]);
      const __m512 x2 = _mm512_set1_ps(p.x[i + 2]), x3 = _mm512_set1_ps(p.x[i + 3]);
      for (int64_t o = 0; o < w; o += 16) {
        const __mmask16 mask = mask_at(o);
        __m512 acc = _mm512_maskz_loadu_ps(mask, t.acc + o);
        acc = _mm512_fmadd_ps(Widen512(q0 + o, mask), x0, acc);
        acc = _mm512_fmadd_ps(Widen512(q1 + o, mask), x1, acc);
        acc = _mm512_fmadd_ps(Widen512(q2 + o, mask), x2, acc);
        acc = _mm512_fmadd_ps(Widen512(q3 + o, mask), x3, acc);
        _mm512_mask_storeu_ps(t.acc + o, mask, acc);
      }
      continue;
    }
    for (int64_t o = 0; o < w; o += 16) {
      const __mmask16 mask = mask_at(o);
      const __m512 w0 = Widen512(q0 + o, mask), w1 = Widen512(q1 + o, mask);
      const __m512 w2 = Widen512(q2 + o, mask), w3 = Widen512(q3 + o, mask);
      for (int64_t r = 0; r < p.m; ++r) {
        const float* xr = p.x + r * p.k + i;
        float* a = t.acc + r * t.stride + o;
        __m512 acc = _mm512_maskz_loadu_ps(mask, a);
        acc = _mm512_fmadd_ps(w0, _mm512_set1_ps(xr[0]), acc);
        acc = _mm512_fmadd_ps(w1, _mm512_set1_ps(xr[1]), acc);
        acc = _mm512_fmadd_ps(w2, _mm512_set1_ps(xr[2]), acc);
        acc = _mm512_fmadd_ps(w3, _mm512_set1_ps(xr[3]), acc);
        _mm512_mask_storeu_ps(a, mask, acc);
      }
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

// AVX2 + FMA: whole 8-column groups vectorised, the last width % 8 columns in scalar code.
AVJAX_AVX2 void TileAvx2(const Problem& p, int64_t c0, const Tile& t) {
  const int64_t w = t.width, full = w / 8 * 8;
  for (int64_t r = 0; r < p.m; ++r) std::fill_n(t.acc + r * t.stride, w, 0.0f);
  int64_t i = 0;
  for (; i + kRows <= p.k; i += kRows) {
    const int8_t* q0 = p.q + i * p.n + c0;
    const int8_t* q1 = q0 + p.n;
    const int8_t* q2 = q1 + p.n;
    const int8_t* q3 = q2 + p.n;
    for (int64_t o = 0; o < full; o += 8) {
      const __m256 w0 = Widen256(q0 + o), w1 = Widen256(q1 + o);
      const __m256 w2 = Widen256(q2 + o), w3 = Widen256(q3 + o);
      for (int64_t r = 0; r < p.m; ++r) {
        const float* xr = p.x + r * p.k + i;
        float* a = t.acc + r * t.stride + o;
        __m256 acc = _mm256_loadu_ps(a);
        acc = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(xr), acc);
        acc = _mm256_fmadd_ps(w1, _mm256_broadcast_ss(xr + 1), acc);
        acc = _mm256_fmadd_ps(w2, _mm256_broadcast_ss(xr + 2), acc);
        acc = _mm256_fmadd_ps(w3, _mm256_broadcast_ss(xr + 3), acc);
        _mm256_storeu_ps(a, acc);
      }
    }
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
  float* acc = Scratch(p.m * stride);
  for (int64_t c0 = n0; c0 < n1; c0 += tw) fn(p, c0, Tile{std::min(tw, n1 - c0), stride, acc});
}

constexpr int64_t kChunkAlign = kLine;
constexpr int64_t kMinWorkPerChunk = 1 << 18;  // int8 weights (x rows) per thread, at least

// Column chunks shared by the calling thread and pool tasks. Held by shared_ptr: a pool
// task that starts after the call has returned finds no chunk left and touches only this.
struct Shared {
  Problem p;
  TileFn fn;
  int64_t chunks, per_chunk;
  std::atomic<int64_t> next{0}, done{0};

  void Work() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const int64_t n0 = c * per_chunk;
      const int64_t n1 = std::min(p.n, n0 + per_chunk);
      Range(p, fn, n0, n1);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

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

  int64_t threads = pool.num_threads();
  if (threads < 1) threads = 1;
  if (max_threads > 0 && threads > max_threads) threads = max_threads;
  const int64_t lines = (n + kChunkAlign - 1) / kChunkAlign;
  const int64_t by_work = std::max<int64_t>(1, k * n * m / kMinWorkPerChunk);
  const int64_t chunks = std::min({threads, lines, by_work});
  if (chunks <= 1) {
    Range(p, fn, 0, n);
    return ffi::Error::Success();
  }
  auto shared = std::make_shared<Shared>();
  shared->p = p;
  shared->fn = fn;
  shared->chunks = chunks;
  shared->per_chunk = (lines + chunks - 1) / chunks * kChunkAlign;
  for (int64_t t = 1; t < chunks; ++t) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  for (int spins = 0; shared->done.load(std::memory_order_acquire) < chunks; ++spins) {
    if (spins < 4096) {
#ifdef AVJAX_X86
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
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
