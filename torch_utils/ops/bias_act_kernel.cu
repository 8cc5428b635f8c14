// GPU launch of the bias_act kernel (the kernel and the launch decisions: bias_act_kernel.cuh).

#include "bias_act_kernel.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

at::Tensor bias_act_launch(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g1, const at::Tensor& g2,
                           int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  return bias_act_run(x, b, g1, g2, dim, act, mode, alpha, gain, clamp,
                      [&](auto kernel, dim3 grid, dim3 block, size_t smem, auto... args) {
                        kernel<<<grid, block, smem, stream>>>(args...);
                        C10_CUDA_KERNEL_LAUNCH_CHECK();
                      });
}
