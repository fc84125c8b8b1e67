// Launchers of the CUDA kernels in csrc/cuda/*.cu, called from the op wrappers in csrc/<op>.cpp
// (which check the arguments, pick the device and pass at::cuda::getCurrentCUDAStream()).
//
// Why plain structs instead of at::Tensor here: the .cu files then include no ATen/torch headers,
// and nvcc (which parses its inputs once per target architecture plus once for the host) compiles
// them in seconds instead of about a minute each: the whole extension builds within CI's budget.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace odysseus::cuda {

enum class DType { kFloat, kDouble, kHalf, kBFloat16 };

struct MergeArgs {
  void* out;              // [B, S, H, D] acc
  void* lse;              // [B, H, S] acc
  const void* block_out;  // [B, S, H, D] in
  const void* block_lse;  // [B, H, S] acc
  int64_t B, S, H, D;
  int64_t out_stride[4], block_out_stride[4], lse_stride[3], block_lse_stride[3];  // in elements
  DType acc, in;  // acc: kFloat/kDouble; in: acc, kHalf or kBFloat16
};

struct ScanArgs {
  const void* states;     // [W, B, H, d_k, d_v] contiguous, dtype
  const void* log_decay;  // [H] contiguous, dtype
  void* out;              // like states
  int64_t W, B, H, KV;    // KV = d_k * d_v
  bool reverse;
  DType dtype;  // kFloat or kDouble
};

// Enqueue on `stream`; return the launch error (cudaSuccess when nothing had to run).
cudaError_t merge_attention_states(const MergeArgs& args, cudaStream_t stream);
cudaError_t linear_attention_state_scan(const ScanArgs& args, cudaStream_t stream);

}  // namespace odysseus::cuda
