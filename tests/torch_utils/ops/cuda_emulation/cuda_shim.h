// Just enough of CUDA's execution model, in plain C++, to run this project's kernels on a CPU.
//
// Include after the torch headers and before a kernel .cuh. Kernel qualifiers become no-ops, the
// built-in index variables become globals, and `cuda_emulation::Launch` runs a grid block by block.
// A launch with dynamic shared memory runs each of a block's threads as a ucontext fiber on one OS
// thread: `__syncthreads()` switches to the next fiber, and a block's fibers are resumed round by
// round until all have finished, so every thread reaches a barrier before any passes it - CUDA's
// semantics, deterministically. Launches without shared memory call the kernel once per thread
// index in turn (our kernels without shared memory never synchronise; one that does aborts).
// Shared memory is filled with 0xFF bytes (a NaN pattern) before each block, so a kernel that reads
// what it never wrote produces NaNs instead of passing by luck.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((static_cast<unsigned long long>(a) * b) >> 32); }

namespace {
// What the kernels declare as `extern __shared__ unsigned char smem_raw[]` (same unnamed namespace).
alignas(16) unsigned char smem_raw[48 * 1024];
}  // namespace

namespace cuda_emulation {

inline dim3 thread_idx, block_idx, block_dim, grid_dim;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_emulation: %s\n", what);
  std::abort();
}

// The fiber scheduler of one block (null while a launch without shared memory runs).
struct Block {
  struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    dim3 idx;
    bool done = false;
  };
  static constexpr size_t kStackBytes = 64 * 1024;  // kernels keep a few hundred bytes of locals
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  std::function<void()> body;
};
inline Block* active_block = nullptr;

inline void fiber_main() {
  active_block->body();
  active_block->current->done = true;  // returning resumes uc_link (the scheduler)
}

inline void syncthreads() {
  Block* blk = active_block;
  if (blk == nullptr) fail("__syncthreads() in a launch without shared memory (not emulated)");
  if (swapcontext(&blk->current->ctx, &blk->scheduler) != 0) fail("swapcontext failed");
}

struct Launch {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, dim3 grid, dim3 block, size_t smem, Args... args) const {
    const unsigned nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024) fail("block size must be 1..1024 threads");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) fail("bad grid size");
    if (smem > sizeof(smem_raw)) fail("dynamic shared memory over 48 KiB");
    grid_dim = grid;
    block_dim = block;
    Block blk;
    blk.body = [&] { kernel(args...); };
    if (smem > 0) {
      blk.fibers.resize(nthreads);
      for (auto& f : blk.fibers) f.stack.reset(new char[Block::kStackBytes]);
    }
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          block_idx = dim3(bx, by, bz);
          if (smem == 0) {
            for (unsigned t = 0; t < nthreads; ++t) {
              thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              kernel(args...);
            }
          } else {
            run_fibers(blk, smem);
          }
        }
  }

 private:
  static void run_fibers(Block& blk, size_t smem) {
    std::memset(smem_raw, 0xFF, smem);
    const dim3 b = block_dim;
    for (unsigned t = 0; t < blk.fibers.size(); ++t) {
      Block::Fiber& f = blk.fibers[t];
      f.idx = dim3(t % b.x, (t / b.x) % b.y, t / (b.x * b.y));
      f.done = false;
      if (getcontext(&f.ctx) != 0) fail("getcontext failed");
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = Block::kStackBytes;
      f.ctx.uc_link = &blk.scheduler;
      makecontext(&f.ctx, fiber_main, 0);
    }
    active_block = &blk;
    for (bool running = true; running;) {  // one round = every live thread up to its next barrier
      running = false;
      for (auto& f : blk.fibers) {
        if (f.done) continue;
        blk.current = &f;
        thread_idx = f.idx;
        if (swapcontext(&blk.scheduler, &f.ctx) != 0) fail("swapcontext failed");
        running = running || !f.done;
      }
    }
    active_block = nullptr;
  }
};

}  // namespace cuda_emulation

#define threadIdx (cuda_emulation::thread_idx)
#define blockIdx (cuda_emulation::block_idx)
#define blockDim (cuda_emulation::block_dim)
#define gridDim (cuda_emulation::grid_dim)
#define __syncthreads() cuda_emulation::syncthreads()
