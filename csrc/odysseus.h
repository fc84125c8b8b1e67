// Argument checks shared by the op wrappers in csrc/*.cpp (CPU and CUDA). They throw c10::ValueError /
// c10::TypeError (Python ValueError / TypeError) naming the argument, the expected and the actual value.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernel_math.h"

#ifdef ODYSSEUS_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace odysseus {

// merge_attention_states_: out [B, S, H, D] and lse [B, H, S] (fp32 or fp64, same dtype), block_out
// like out (its dtype, fp16 or bf16), block_lse like lse; all on one device.
void check_merge_args(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& block_out,
                      const at::Tensor& block_lse);

// linear_attention_state_scan: states [W, B, H, d_k, d_v] fp32/fp64, log_decay [H] floating.
void check_state_scan_args(const at::Tensor& states, const at::Tensor& log_decay);

// stream_*_value32: flag is a one-element int32 tensor; value fits in int32.
void check_flag_args(const at::Tensor& flag, int64_t value, const char* op);

// True when `current` has reached `value` in the wrap-around order cuStreamWaitValue32 uses for
// CU_STREAM_WAIT_VALUE_GEQ: (int32)(current - value) >= 0.
inline bool flag_reached(int32_t current, int32_t value, bool equal) {
  if (equal) {
    return current == value;
  }
  return static_cast<int32_t>(static_cast<uint32_t>(current) - static_cast<uint32_t>(value)) >= 0;
}

#ifdef ODYSSEUS_WITH_CUDA
// dtype of a tensor already checked to be one of the kernels' dtypes.
inline cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return cuda::DType::kDouble;
    case at::kHalf:
      return cuda::DType::kHalf;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    default:
      return cuda::DType::kFloat;
  }
}
#endif

}  // namespace odysseus
