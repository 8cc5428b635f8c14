// upfirdn2d: per channel, zero-insert upsample, pad/crop, FIR filter, downsample.
//
// The kernel receives the *correlation* filter g [fh, fw] (the Python side mirrors f unless
// flip_filter, and folds in the gain). Along one axis, with u = up, d = down, p0 = leading pad:
//   out[o] = sum_t g[t] * x[(o*d + t - p0) / u]   over taps t where o*d + t - p0 is a multiple of u
//                                                  and the quotient is a valid input index.
// Three kernels compute exactly this sum:
//   fixed   - for the 4x4 filters (outer products of 4-tap filters) with up=2, down=2 or neither that
//             every block of StyleGAN-style networks runs: factors and filter size are compile-time
//             constants, a block loads the input patch behind a 32x32 output tile into shared memory
//             with all of a thread's loads in flight at once, and each thread computes 4 outputs of
//             one column from input rows it reads once into registers;
//   tiled   - the same tiles for any up, down <= 2 and any filter whose patch fits (the 1-D passes of
//             longer separable filters, other small filters), with the sizes read at run time;
//   general - one thread per output pixel reading global memory; any up/down/filter size.
// All three step through only the taps that hit real (non-inserted) samples, so upsampling costs
// fh*fw/(ux*uy) multiply-adds per output. Accumulation is in float (double for double input).
//
// This header holds the kernels and everything the launch decides (output size, path, grid); the
// `launch` callback passed to upfirdn2d_run only issues the kernel. upfirdn2d_kernel.cu launches on
// the GPU; the test suite's CPU emulator (tests/torch_utils/ops/cuda_emulation) runs this same code.

#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <algorithm>

#include "kernel_common.cuh"

namespace {

constexpr int kTileW = 32, kTileH = 32;       // outputs per block (tiled path)
constexpr int kBlockW = 32, kBlockH = 8;      // threads per block (tiled path)
constexpr int kMaxSharedBytes = 48 * 1024;    // default dynamic shared-memory limit
constexpr int kLoadBatch = 8;                 // tiled path: patch loads a thread keeps in flight

struct Params {
  int64_t planes, channels;                   // planes = N * C
  int in_h, in_w, out_h, out_w;
  int upx, upy, downx, downy, padx0, pady0;
  int fw, fh;
  int64_t sx_n, sx_c, sx_h, sx_w;             // input strides (any layout); output is contiguous NCHW
  int tile_in_w, tile_in_h;                   // tiled path: input patch size per block
  FastDivmod by_tile_in_w;                    // tiled path: patch index -> row
  FastDivmod by_cpacks, by_out_w, by_out_h;   // channels-last path with 32-bit indices
};

__host__ __device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
__host__ __device__ __forceinline__ int pos_mod(int a, int b) { return ((a % b) + b) % b; }

template <typename scalar_t>
__global__ void upfirdn2d_general(scalar_t* __restrict__ y, const scalar_t* __restrict__ x,
                                  const float* __restrict__ g, Params p) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t total = p.planes * p.out_h * p.out_w;
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int ox = int(i % p.out_w), oy = int((i / p.out_w) % p.out_h);
    const int64_t plane = i / (int64_t(p.out_w) * p.out_h);
    const scalar_t* xp = x + (plane / p.channels) * p.sx_n + (plane % p.channels) * p.sx_c;
    const int mx = ox * p.downx - p.padx0, my = oy * p.downy - p.pady0;
    const int tx0 = pos_mod(-mx, p.upx), ty0 = pos_mod(-my, p.upy);
    const int ix0 = (mx + tx0) / p.upx, iy0 = (my + ty0) / p.upy;  // exact divisions
    acc_t sum = 0;
    for (int ty = ty0, iy = iy0; ty < p.fh && iy < p.in_h; ty += p.upy, ++iy) {
      if (iy < 0) continue;
      for (int tx = tx0, ix = ix0; tx < p.fw && ix < p.in_w; tx += p.upx, ++ix) {
        if (ix < 0) continue;
        sum += acc_t(g[ty * p.fw + tx]) * acc_t(xp[iy * p.sx_h + ix * p.sx_w]);
      }
    }
    y[i] = scalar_t(sum);
  }
}

// Any up, down <= 2 and any filter whose patch fits in shared memory: each thread computes the outputs
// (lx, ly), (lx, ly + kBlockH), ... of the tile, stepping through the taps of each output's phase.
// (The patch index fits FastDivmod's 32 bits: the patch fits in 48 KiB.)
template <typename scalar_t>
__global__ void upfirdn2d_tiled(scalar_t* __restrict__ y, const scalar_t* __restrict__ x,
                                const float* __restrict__ g, Params p) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* s_x = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* s_g = s_x + p.tile_in_w * p.tile_in_h;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nthreads = blockDim.x * blockDim.y;
  for (int k = tid; k < p.fw * p.fh; k += nthreads) s_g[k] = acc_t(g[k]);

  // Input patch behind this output tile: rows/cols [iy_base, iy_base + tile_in_h), zero outside.
  const int ox_base = blockIdx.x * kTileW, oy_base = blockIdx.y * kTileH;
  const int ix_base = floor_div(ox_base * p.downx - p.padx0, p.upx);
  const int iy_base = floor_div(oy_base * p.downy - p.pady0, p.upy);

  const int n_in = p.tile_in_w * p.tile_in_h;
  for (int64_t plane = blockIdx.z; plane < p.planes; plane += gridDim.z) {
    const scalar_t* xp = x + (plane / p.channels) * p.sx_n + (plane % p.channels) * p.sx_c;
    __syncthreads();  // the previous plane's reads of s_x are done
    // kLoadBatch loads in flight per thread before any is stored (see the fixed variant below);
    // consecutive threads read consecutive samples of a row.
    for (int k0 = tid; k0 < n_in; k0 += nthreads * kLoadBatch) {
      acc_t loaded[kLoadBatch];
#pragma unroll
      for (int j = 0; j < kLoadBatch; ++j) {
        const int k = k0 + j * nthreads, ky = int(p.by_tile_in_w.div(uint32_t(k))), kx = k - ky * p.tile_in_w;
        const int iy = iy_base + ky, ix = ix_base + kx;
        const bool inside = k < n_in && iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w;
        loaded[j] = inside ? acc_t(xp[int64_t(iy) * p.sx_h + int64_t(ix) * p.sx_w]) : acc_t(0);
      }
#pragma unroll
      for (int j = 0; j < kLoadBatch; ++j)
        if (k0 + j * nthreads < n_in) s_x[k0 + j * nthreads] = loaded[j];
    }
    __syncthreads();
    scalar_t* yp = y + plane * p.out_h * p.out_w;
    for (int ly = threadIdx.y; ly < kTileH && oy_base + ly < p.out_h; ly += blockDim.y) {
      const int oy = oy_base + ly, my = oy * p.downy - p.pady0;
      const int ty0 = pos_mod(-my, p.upy), sy0 = (my + ty0) / p.upy - iy_base;
      for (int lx = threadIdx.x; lx < kTileW && ox_base + lx < p.out_w; lx += blockDim.x) {
        const int ox = ox_base + lx, mx = ox * p.downx - p.padx0;
        const int tx0 = pos_mod(-mx, p.upx), sx0 = (mx + tx0) / p.upx - ix_base;
        acc_t sum = 0;
        for (int ty = ty0, sy = sy0; ty < p.fh; ty += p.upy, ++sy) {
          const acc_t* row = s_x + sy * p.tile_in_w;
          const acc_t* grow = s_g + ty * p.fw;
          for (int tx = tx0, sx = sx0; tx < p.fw; tx += p.upx, ++sx) sum += grow[tx] * row[sx];
        }
        yp[int64_t(oy) * p.out_w + ox] = scalar_t(sum);
      }
    }
  }
}

// The fixed variant: up = UP and down = DOWN along both axes and a TAPS x TAPS filter (the 4x4 filters,
// outer products of 4-tap filters, with up=2, down=2 or neither, that every block of StyleGAN-style
// networks runs). With the sizes known at compile time every loop unrolls:
// - loading: each thread issues all of its patch loads before it stores any, so many loads are in
//   flight at once (a thread that waits on one 2-byte load at a time leaves the memory system idle);
// - computing: each thread computes kRows consecutive outputs of one column, so neighbouring outputs
//   share the input rows it reads from shared memory once into registers, and keeps the filter taps
//   of its column's phase in registers.
constexpr int kThreads = kBlockW * kBlockH;
constexpr int kRows = kTileH / kBlockH;  // outputs per thread, consecutive rows of one column

// Input samples (per axis) behind `tile` outputs: the last output's taps reach
// ((tile - 1) * down + taps - 1) / up past the first one's, +1 for the first itself, +1 for rounding.
__host__ __device__ constexpr int tile_in(int tile, int up, int down, int taps) {
  return ((tile - 1) * down + taps - 1) / up + 2;
}

// Row offset and filter phase of output row r when the thread's first output row sits at position
// C (mod UP) of the zero-inserted grid: output r reads input rows base + row_offset + ky, taps
// phase + ky * UP.
__host__ __device__ constexpr int row_offset(int r, int c, int up, int down) { return (c + r * down + up - 1) / up; }
__host__ __device__ constexpr int row_phase(int r, int c, int up, int down) { return (up - (c + r * down) % up) % up; }

// Streams the thread's input rows top to bottom: each row is read from shared memory once and added,
// with the right taps, to every output of the thread that it reaches (the loops unroll completely,
// so which outputs and taps those are is settled at compile time).
template <typename acc_t, int UP, int DOWN, int TAPS, int C>
__device__ __forceinline__ void fixed_rows(acc_t (&sum)[kRows], const acc_t* s_row,
                                           const acc_t (&gq)[UP][TAPS / UP][TAPS / UP]) {
  constexpr int kPT = TAPS / UP, kInW = tile_in(kTileW, UP, DOWN, TAPS);
  constexpr int kSpan = row_offset(kRows - 1, C, UP, DOWN) + kPT;  // input rows this thread reads
#pragma unroll
  for (int r = 0; r < kRows; ++r) sum[r] = 0;
#pragma unroll
  for (int s = 0; s < kSpan; ++s) {
    acc_t v[kPT];
#pragma unroll
    for (int kx = 0; kx < kPT; ++kx) v[kx] = s_row[s * kInW + kx];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int ky = s - row_offset(r, C, UP, DOWN);
      if (ky < 0 || ky >= kPT) continue;
#pragma unroll
      for (int kx = 0; kx < kPT; ++kx) sum[r] += gq[row_phase(r, C, UP, DOWN)][ky][kx] * v[kx];
    }
  }
}

// Register caps (no spills in fp16/fp32): down=2 keeps ~18 loads in flight per thread and would take
// 128 registers, i.e. 2 blocks per SM; capped at 80 it runs 3. The others fit 4 blocks at <= 64.
template <typename scalar_t, int UP, int DOWN, int TAPS>
__global__ void __launch_bounds__(kThreads, DOWN > 1 ? 3 : 4)
    upfirdn2d_fixed(scalar_t* __restrict__ y, const scalar_t* __restrict__ x, const float* __restrict__ g, Params p) {
  using acc_t = at::acc_type<scalar_t, true>;
  static_assert(UP >= 1 && DOWN >= 1 && TAPS % UP == 0, "fixed variant: TAPS must be a multiple of UP");
  static_assert(kTileH % kBlockH == 0 && (kRows * DOWN) % UP == 0 && (kTileH * DOWN) % UP == 0,
                "fixed variant: every thread's first output row must sit at the same phase");
  constexpr int kPT = TAPS / UP;
  constexpr int kInW = tile_in(kTileW, UP, DOWN, TAPS), kInH = tile_in(kTileH, UP, DOWN, TAPS);
  constexpr int kLoads = (kInW * kInH + kThreads - 1) / kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* s_x = reinterpret_cast<acc_t*>(smem_raw);  // [kInH][kInW]
  const int tid = threadIdx.y * kBlockW + threadIdx.x;

  const int ox_base = blockIdx.x * kTileW, oy_base = blockIdx.y * kTileH;
  const int ix_base = floor_div(ox_base * DOWN - p.padx0, UP);
  const int iy_base = floor_div(oy_base * DOWN - p.pady0, UP);
  // This thread: column lx and rows ly0 .. ly0 + kRows - 1 of the tile.
  const int lx = threadIdx.x, ly0 = threadIdx.y * kRows;
  const int ox = ox_base + lx, mx = ox * DOWN - p.padx0;
  const int tx0 = pos_mod(-mx, UP), sx0 = (mx + tx0) / UP - ix_base;
  const int oy0 = oy_base + ly0, my0 = oy0 * DOWN - p.pady0;
  const int c = pos_mod(my0, UP);  // the same for every thread of the launch (static_assert above)
  const int sy_base = (my0 - c) / UP - iy_base;
  acc_t gq[UP][kPT][kPT];  // gq[phase][ky][kx]: the taps of this column's phase, for every row phase
#pragma unroll
  for (int ph = 0; ph < UP; ++ph)
#pragma unroll
    for (int ky = 0; ky < kPT; ++ky)
#pragma unroll
      for (int kx = 0; kx < kPT; ++kx) gq[ph][ky][kx] = acc_t(g[(ph + ky * UP) * TAPS + tx0 + kx * UP]);

  for (int64_t plane = blockIdx.z; plane < p.planes; plane += gridDim.z) {
    const scalar_t* xp = x + (plane / p.channels) * p.sx_n + (plane % p.channels) * p.sx_c;
    acc_t loaded[kLoads];
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int k = tid + j * kThreads, ky = k / kInW, kx = k % kInW;
      const int iy = iy_base + ky, ix = ix_base + kx;
      const bool inside = k < kInW * kInH && iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w;
      loaded[j] = inside ? acc_t(xp[int64_t(iy) * p.sx_h + int64_t(ix) * p.sx_w]) : acc_t(0);
    }
    __syncthreads();  // the previous plane's reads of s_x are done
#pragma unroll
    for (int j = 0; j < kLoads; ++j)
      if (tid + j * kThreads < kInW * kInH) s_x[tid + j * kThreads] = loaded[j];
    __syncthreads();

    acc_t sum[kRows];
    const acc_t* s_row = s_x + sy_base * kInW + sx0;
    if constexpr (UP == 1) {
      fixed_rows<acc_t, UP, DOWN, TAPS, 0>(sum, s_row, gq);
    } else {
      static_assert(UP == 2, "fixed variant: up must be 1 or 2");
      if (c == 0)
        fixed_rows<acc_t, UP, DOWN, TAPS, 0>(sum, s_row, gq);
      else
        fixed_rows<acc_t, UP, DOWN, TAPS, 1>(sum, s_row, gq);
    }
    if (ox < p.out_w) {
      scalar_t* yp = y + plane * p.out_h * p.out_w + ox;
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (oy0 + r < p.out_h) yp[int64_t(oy0 + r) * p.out_w] = scalar_t(sum[r]);
    }
  }
}

// Channels-last: x with unit channel stride (any other strides), y channels-last. A thread computes VEC
// consecutive channels of one output pixel, reading each tap as one VEC-wide pack: a warp reads whole
// runs of channels (coalesced), and the neighbouring pixels' taps come from L1. The planar kernels
// above would read such an x with a stride of C elements, one memory transaction per element.
// index_t: uint32_t when N * oh * ow * C / VEC < 2^31 (FastDivmod splits the index), else int64_t.
__device__ __forceinline__ void split_nhwc(uint32_t i, const Params& p, uint32_t& cp, uint32_t& ox, uint32_t& oy,
                                           uint32_t& n) {
  const uint32_t pix = p.by_cpacks.div(i), row = p.by_out_w.div(pix);
  cp = i - pix * p.by_cpacks.d, ox = pix - row * p.by_out_w.d, oy = p.by_out_h.mod(row), n = p.by_out_h.div(row);
}
__device__ __forceinline__ void split_nhwc(int64_t i, const Params& p, int64_t& cp, int64_t& ox, int64_t& oy,
                                           int64_t& n) {
  const int64_t cpacks = p.by_cpacks.d, pix = i / cpacks, row = pix / p.out_w;
  cp = i % cpacks, ox = pix % p.out_w, oy = row % p.out_h, n = row / p.out_h;
}

template <typename scalar_t, typename index_t, int VEC>
__global__ void upfirdn2d_nhwc(scalar_t* __restrict__ y, const scalar_t* __restrict__ x,
                               const float* __restrict__ g, Params p) {
  using acc_t = at::acc_type<scalar_t, true>;
  using pack_t = Pack<scalar_t, VEC>;
  const index_t total = index_t(p.planes / VEC) * p.out_h * p.out_w, step = index_t(blockDim.x) * gridDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    index_t cp, ox, oy, n;
    split_nhwc(i, p, cp, ox, oy, n);
    const int mx = int(ox) * p.downx - p.padx0, my = int(oy) * p.downy - p.pady0;
    const int tx0 = pos_mod(-mx, p.upx), ty0 = pos_mod(-my, p.upy);
    const int ix0 = (mx + tx0) / p.upx, iy0 = (my + ty0) / p.upy;  // exact divisions
    const scalar_t* xp = x + int64_t(n) * p.sx_n + int64_t(cp) * VEC;
    acc_t acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0;
    for (int ty = ty0, iy = iy0; ty < p.fh && iy < p.in_h; ty += p.upy, ++iy) {
      if (iy < 0) continue;
      for (int tx = tx0, ix = ix0; tx < p.fw && ix < p.in_w; tx += p.upx, ++ix) {
        if (ix < 0) continue;
        const pack_t v = *reinterpret_cast<const pack_t*>(xp + int64_t(iy) * p.sx_h + int64_t(ix) * p.sx_w);
        const acc_t w = acc_t(g[ty * p.fw + tx]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += w * acc_t(v.v[j]);
      }
    }
    pack_t out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) out.v[j] = scalar_t(acc[j]);
    reinterpret_cast<pack_t*>(y)[((int64_t(n) * p.out_h + oy) * p.out_w + ox) * (p.channels / VEC) + cp] = out;
  }
}

// x [N, C, H, W] (any strides), g [fh, fw] float32 contiguous on x's device; returns y [N, C, oh, ow],
// channels-last when the channels-last kernel runs, else contiguous. path: 0 = choose (channels-last
// kernel for an x whose channels are its innermost dimension, else fixed, tiled or general), 1 = force
// general, 2 = force tiled, 3 = force the tiled fixed variant, 4 = force channels-last (2 to 4 error if
// they cannot run).
// launch(kernel, grid, block, shared_bytes, kernel arguments...) issues one kernel.
template <typename Launch>
at::Tensor upfirdn2d_run(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, int64_t path,
                         Launch&& launch) {
  Params p;
  p.channels = x.size(1);
  p.planes = x.size(0) * x.size(1);
  p.in_h = int(x.size(2)), p.in_w = int(x.size(3));
  p.upx = int(upx), p.upy = int(upy), p.downx = int(downx), p.downy = int(downy);
  p.padx0 = int(padx0), p.pady0 = int(pady0);
  p.fh = int(g.size(0)), p.fw = int(g.size(1));
  p.out_w = int((int64_t(p.in_w) * upx + padx0 + padx1 - p.fw) / downx + 1);
  p.out_h = int((int64_t(p.in_h) * upy + pady0 + pady1 - p.fh) / downy + 1);
  TORCH_CHECK(p.out_w >= 1 && p.out_h >= 1, "upfirdn2d: empty output");
  p.sx_n = x.stride(0), p.sx_c = x.stride(1), p.sx_h = x.stride(2), p.sx_w = x.stride(3);
  p.tile_in_w = tile_in(kTileW, p.upx, p.downx, p.fw);
  p.tile_in_h = tile_in(kTileH, p.upy, p.downy, p.fh);
  p.by_tile_in_w = FastDivmod(uint32_t(std::max(p.tile_in_w, 1)));

  // Channels innermost: channels-last, or any layout with unit channel stride (not a plain NCHW tensor
  // whose H and W are 1, which is both).
  const bool nhwc_ok = x.stride(1) == 1 && x.size(1) > 1 && x.size(2) * x.size(3) > 1;
  TORCH_CHECK(path != 4 || nhwc_ok, "upfirdn2d: channels-last path needs an x whose channels are innermost");
  const bool nhwc = path == 4 || (path == 0 && nhwc_ok);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options().memory_format(format));
  if (y.numel() == 0) return y;
  if (nhwc) {
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "upfirdn2d_nhwc", [&] {
      constexpr int kVec = 16 / sizeof(scalar_t);
      // Packs need every pack's address 16-byte aligned: the base, C, and the strides that move.
      bool packed = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && p.channels % kVec == 0;
      for (int d : {0, 2, 3}) packed = packed && (x.size(d) == 1 || x.stride(d) % kVec == 0);
      const int vec = packed ? kVec : 1;
      const int64_t total = p.planes / vec * p.out_h * p.out_w;
      const bool narrow = total < (int64_t(1) << 31);
      p.by_cpacks = FastDivmod(uint32_t(p.channels / vec));  // channels < 2^31 (a dense tensor's size)
      if (narrow) p.by_out_w = FastDivmod(uint32_t(p.out_w)), p.by_out_h = FastDivmod(uint32_t(p.out_h));
      const int threads = 256;
      const dim3 grid(unsigned(std::min<int64_t>((total + threads - 1) / threads, 65536)));
      scalar_t* out = y.data_ptr<scalar_t>();
      const scalar_t* in = x.data_ptr<scalar_t>();
      const float* filter = g.data_ptr<float>();
      if (packed && narrow)
        launch(upfirdn2d_nhwc<scalar_t, uint32_t, kVec>, grid, dim3(threads), size_t(0), out, in, filter, p);
      else if (packed)
        launch(upfirdn2d_nhwc<scalar_t, int64_t, kVec>, grid, dim3(threads), size_t(0), out, in, filter, p);
      else if (narrow)
        launch(upfirdn2d_nhwc<scalar_t, uint32_t, 1>, grid, dim3(threads), size_t(0), out, in, filter, p);
      else
        launch(upfirdn2d_nhwc<scalar_t, int64_t, 1>, grid, dim3(threads), size_t(0), out, in, filter, p);
    });
    return y;
  }
  const size_t acc_size = x.scalar_type() == at::kDouble ? sizeof(double) : sizeof(float);
  const size_t smem = acc_size * (size_t(p.tile_in_w) * p.tile_in_h + size_t(p.fw) * p.fh);
  const bool tiled_ok = p.upx <= 2 && p.upy <= 2 && p.downx <= 2 && p.downy <= 2 && smem <= kMaxSharedBytes;
  const int fixed_up = p.upx == p.upy && p.downx == p.downy && p.upx * p.downx <= 2 ? p.upx : 0;
  const bool fixed_ok = tiled_ok && p.fw == 4 && p.fh == 4 && fixed_up > 0;
  TORCH_CHECK(path != 2 || tiled_ok, "upfirdn2d: tiled path unavailable for these arguments");
  TORCH_CHECK(path != 3 || fixed_ok, "upfirdn2d: fixed tiled variant unavailable for these arguments");
  const bool fixed = path == 3 || (path == 0 && fixed_ok);
  const bool tiled = fixed || path == 2 || (path == 0 && tiled_ok);
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "upfirdn2d", [&] {
    scalar_t* out = y.data_ptr<scalar_t>();
    const scalar_t* in = x.data_ptr<scalar_t>();
    const float* filter = g.data_ptr<float>();
    if (tiled) {
      const dim3 grid((p.out_w + kTileW - 1) / kTileW, (p.out_h + kTileH - 1) / kTileH,
                      unsigned(std::min<int64_t>(p.planes, 65535)));
      const dim3 block(kBlockW, kBlockH);
      if (!fixed)
        launch(upfirdn2d_tiled<scalar_t>, grid, block, smem, out, in, filter, p);
      else if (fixed_up == 2)
        launch(upfirdn2d_fixed<scalar_t, 2, 1, 4>, grid, block, smem, out, in, filter, p);
      else if (p.downx == 2)
        launch(upfirdn2d_fixed<scalar_t, 1, 2, 4>, grid, block, smem, out, in, filter, p);
      else
        launch(upfirdn2d_fixed<scalar_t, 1, 1, 4>, grid, block, smem, out, in, filter, p);
    } else {
      const int threads = 256;
      const int64_t blocks = std::min<int64_t>((y.numel() + threads - 1) / threads, 65536);
      launch(upfirdn2d_general<scalar_t>, dim3(unsigned(blocks)), dim3(threads), size_t(0), out, in, filter, p);
    }
  });
  return y;
}

}  // namespace
