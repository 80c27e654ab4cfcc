// One decode step of attention over a KV cache for XLA:CPU, through the XLA FFI
// (avjax/nn/native), reading only the cache's filled slots.
//
// For each row r (batch x heads), with the first n slots of the cache filled:
//   s_j   = (q[r] . kc[r, :, j]) * scale    for j < n
//   s_new = (q[r] . kn[r]) * scale           (the step's own key)
//   p     = softmax([s_0 .. s_{n-1}, s_new])
//   y[r]  = sum_j p_j vc[r, j, :] + p_new vn[r]
// q, kn, vn float32 [R, D]; kc float32 [R, D, S] (keys transposed, the GPT's cache
// layout); vc float32 [R, S, D]; n int32 [] (clamped to [0, S]); y float32 [R, D].
//
// XLA's dots read all S slots of both caches at every step (masking the unfilled ones);
// this reads the n filled ones, each key row and value row front to back. Sums
// accumulate in float32 in slot order. Rows are split into chunks on XLA's intra-op
// thread pool (pool_chunks.h).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "pool_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Attention {
  const float *q, *kn, *vn, *kc, *vc;
  float* y;
  int64_t rows, d, s, n;
  float scale;
};

void Row(const Attention& a, int64_t r) {
  const int64_t d = a.d, s = a.s, n = a.n;
  const float* q = a.q + r * d;
  const float* kc = a.kc + r * d * s;
  const float* vc = a.vc + r * s * d;
  const float* kn = a.kn + r * d;
  const float* vn = a.vn + r * d;
  float* y = a.y + r * d;
  float* sc = avjax_native::ThreadScratch(n > 0 ? n : 1);

  std::fill_n(sc, n, 0.0f);
  for (int64_t i = 0; i < d; ++i) {  // q . k_j for all j at once: key rows are contiguous
    const float qi = q[i];
    const float* row = kc + i * s;
    for (int64_t j = 0; j < n; ++j) sc[j] += qi * row[j];
  }
  float s_new = 0.0f;
  for (int64_t i = 0; i < d; ++i) s_new += q[i] * kn[i];
  s_new *= a.scale;
  float m = s_new;
  for (int64_t j = 0; j < n; ++j) {
    sc[j] *= a.scale;
    m = std::max(m, sc[j]);
  }
  const float p_new = std::exp(s_new - m);
  float sum = p_new;
  for (int64_t j = 0; j < n; ++j) {
    sc[j] = std::exp(sc[j] - m);
    sum += sc[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < d; ++i) y[i] = p_new * vn[i];
  for (int64_t j = 0; j < n; ++j) {
    const float p = sc[j];
    const float* row = vc + j * d;
    for (int64_t i = 0; i < d; ++i) y[i] += p * row[i];
  }
  for (int64_t i = 0; i < d; ++i) y[i] *= inv;
}

constexpr int64_t kMinFloatsPerChunk = 1 << 16;  // cache floats read per thread, at least

ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                               ffi::Buffer<ffi::F32> kn, ffi::Buffer<ffi::F32> vn,
                               ffi::Buffer<ffi::F32> kc, ffi::Buffer<ffi::F32> vc,
                               ffi::Buffer<ffi::S32> filled, ffi::ResultBuffer<ffi::F32> y,
                               float scale, int64_t max_threads) {
  const auto qd = q.dimensions(), kd = kc.dimensions(), vd = vc.dimensions();
  if (qd.size() != 2 || kd.size() != 3 || vd.size() != 3 || kn.dimensions().size() != 2 ||
      vn.dimensions().size() != 2 || filled.dimensions().size() != 0)
    return ffi::Error::InvalidArgument(
        "avjax_decode_attention: q, kn, vn [R, D], kc [R, D, S], vc [R, S, D], n []");
  const int64_t rows = qd[0], d = qd[1], s = kd[2];
  if (kd[0] != rows || kd[1] != d || vd[0] != rows || vd[1] != s || vd[2] != d ||
      kn.dimensions()[0] != rows || kn.dimensions()[1] != d || vn.dimensions()[0] != rows ||
      vn.dimensions()[1] != d || y->dimensions()[0] != rows || y->dimensions()[1] != d)
    return ffi::Error::InvalidArgument("avjax_decode_attention: shapes do not match");
  const int64_t n = std::clamp<int64_t>(filled.typed_data()[0], 0, s);
  Attention a{q.typed_data(), kn.typed_data(), vn.typed_data(), kc.typed_data(),
              vc.typed_data(), y->typed_data(), rows, d, s, n, scale};
  if (rows == 0 || d == 0) return ffi::Error::Success();

  const int64_t threads = avjax_native::Threads(pool, max_threads);
  const int64_t by_work = std::max<int64_t>(1, rows * 2 * (n + 1) * d / kMinFloatsPerChunk);
  avjax_native::RunRanges(pool, rows, 1, std::min(threads, by_work), [&a](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) Row(a, r);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvjaxDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("max_threads"));
