// What the native kernels share: chunks of work run on XLA's intra-op thread pool, and a
// per-thread scratch buffer (avjax/nn/native).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace avjax_native {

// Threads a call may use: the pool's (at least 1), capped by `max_threads` when > 0.
inline int64_t Threads(xla::ffi::ThreadPool& pool, int64_t max_threads) {
  int64_t threads = pool.num_threads();
  if (threads < 1) threads = 1;
  if (max_threads > 0 && threads > max_threads) threads = max_threads;
  return threads;
}

// A float buffer of at least `floats` for this thread, reused across calls.
inline float* ThreadScratch(int64_t floats) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t size = 0;
  if (size < floats) {
    buf.reset(new float[floats]);
    size = floats;
  }
  return buf.get();
}

// Runs chunk(c) for every c in [0, chunks), returning when all have run. The calling
// thread takes chunks too, including any no pool thread has started, so a busy or
// one-thread pool never stalls the call. The state is held by shared_ptr: a pool task
// that starts after the call has returned finds no chunk left and touches only it.
template <typename Chunk>
void RunChunks(xla::ffi::ThreadPool& pool, int64_t chunks, Chunk chunk) {
  if (chunks <= 1) {
    if (chunks == 1) chunk(0);
    return;
  }
  struct Shared {
    Shared(Chunk c, int64_t n) : chunk(std::move(c)), chunks(n) {}
    Chunk chunk;
    int64_t chunks;
    std::atomic<int64_t> next{0}, done{0};

    void Work() {
      for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
        chunk(c);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto shared = std::make_shared<Shared>(std::move(chunk), chunks);
  for (int64_t t = 1; t < chunks; ++t) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  for (int spins = 0; shared->done.load(std::memory_order_acquire) < chunks; ++spins) {
    if (spins < 4096) {
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// Runs range(lo, hi) over [0, units) cut into at most `max_chunks` contiguous ranges, none
// empty, each starting on a multiple of `align` (cache lines of a row, say).
template <typename Range>
void RunRanges(xla::ffi::ThreadPool& pool, int64_t units, int64_t align, int64_t max_chunks,
               Range range) {
  const int64_t blocks = (units + align - 1) / align;
  const int64_t wanted = std::max<int64_t>(1, std::min(max_chunks, blocks));
  const int64_t per_chunk = (blocks + wanted - 1) / wanted * align;
  const int64_t chunks = (units + per_chunk - 1) / per_chunk;
  RunChunks(pool, chunks, [&range, per_chunk, units](int64_t c) {
    const int64_t lo = c * per_chunk;
    range(lo, std::min(units, lo + per_chunk));
  });
}

}  // namespace avjax_native
