// linear_attention_state_scan on CUDA: one thread per element of a rank's state
// (batch * heads * d_k * d_v, coalesced), the recurrence over the world in a register:
//   out[t] = acc; acc = a * acc + states[t]   for t in scan order (see csrc/state_scan.cpp).
#include <algorithm>

#include "../kernel_math.h"
#include "kernels.h"

namespace odysseus::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void scan_kernel(ScanArgs a) {
  const T* states = static_cast<const T*>(a.states);
  const T* log_decay = static_cast<const T*>(a.log_decay);
  T* out = static_cast<T*>(a.out);
  const int64_t n = a.B * a.H * a.KV;  // elements of one rank's state
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const T decay = exp_(log_decay[(e / a.KV) % a.H]);
    T acc = T(0);  // the states already passed, decayed to the current step
    for (int64_t i = 0; i < a.W; ++i) {
      const int64_t t = a.reverse ? a.W - 1 - i : i;
      out[t * n + e] = acc;
      acc = decay * acc + states[t * n + e];
    }
  }
}

}  // namespace

cudaError_t linear_attention_state_scan(const ScanArgs& a, cudaStream_t stream) {
  const int64_t n = a.B * a.H * a.KV;
  if (n == 0 || a.W == 0) {
    return cudaSuccess;
  }
  // Grid-stride loop: a bounded grid of 256-thread blocks already saturates bandwidth.
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  if (a.dtype == DType::kDouble) {
    scan_kernel<double><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    scan_kernel<float><<<blocks, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace odysseus::cuda
