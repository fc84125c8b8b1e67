// linear_attention_state_scan: LASP-2's combination of the AllGathered per-rank memory states.
// With a = exp(log_decay[h]) and M_t = states[t]:
//   forward  (reverse=False): out[t] = sum_{j<t} a^(t-1-j) M_j  (out[0] = 0,   out[t] = a out[t-1] + M[t-1])
//   backward (reverse=True):  out[t] = sum_{j>t} a^(j-1-t) M_j  (out[W-1] = 0, out[t] = a out[t+1] + M[t+1])
// Argument checks, the CPU kernel, and the CUDA wrapper around csrc/cuda/state_scan.cu.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "odysseus.h"

#ifdef ODYSSEUS_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace odysseus {

void check_state_scan_args(const at::Tensor& states, const at::Tensor& log_decay) {
  TORCH_CHECK_VALUE(states.dim() == 5,
                    "linear_attention_state_scan: states must be [world, batch, heads, d_k, d_v], got ", states.dim(),
                    " dims ", states.sizes());
  TORCH_CHECK_TYPE(states.scalar_type() == at::kFloat || states.scalar_type() == at::kDouble,
                   "linear_attention_state_scan: states must be float32 (or float64), got ", states.scalar_type());
  TORCH_CHECK_VALUE(log_decay.dim() == 1 && log_decay.size(0) == states.size(2),
                    "linear_attention_state_scan: log_decay must be [heads] = [", states.size(2), "], got ",
                    log_decay.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(log_decay.scalar_type()),
                   "linear_attention_state_scan: log_decay must be floating point, got ", log_decay.scalar_type());
  TORCH_CHECK_VALUE(log_decay.device() == states.device(),
                    "linear_attention_state_scan: log_decay must be on states' device ", states.device(), ", got ",
                    log_decay.device());
}

namespace {

template <typename T>
void scan_cpu_kernel(const at::Tensor& states, const at::Tensor& log_decay, const at::Tensor& out, bool reverse) {
  const int64_t W = states.size(0), H = states.size(2);
  const int64_t KV = states.size(3) * states.size(4);
  const int64_t N = states.size(1) * H * KV;  // elements of one rank's state
  const T* m = states.const_data_ptr<T>();
  const T* ld = log_decay.const_data_ptr<T>();
  T* o = out.data_ptr<T>();
  // Parallel over (batch, head) blocks of d_k*d_v contiguous elements; the recurrence over the
  // world runs inside, reading back the previous output (the inner loop vectorises).
  at::parallel_for(0, N / std::max<int64_t>(KV, 1), 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const T a = exp_(ld[bh % H]);
      const int64_t base = bh * KV;
      for (int64_t i = 0; i < W; ++i) {
        const int64_t t = reverse ? W - 1 - i : i;
        T* ot = o + t * N + base;
        if (i == 0) {
          std::fill(ot, ot + KV, T(0));
          continue;
        }
        const int64_t p = reverse ? t + 1 : t - 1;  // the previous step
        const T* op = o + p * N + base;
        const T* mp = m + p * N + base;
        for (int64_t e = 0; e < KV; ++e) {
          ot[e] = a * op[e] + mp[e];
        }
      }
    }
  });
}

// The kernels' view of the arguments: contiguous states, log_decay in states' dtype, a fresh output.
struct ScanTensors {
  at::Tensor states, log_decay, out;
};

ScanTensors prepare_scan(const at::Tensor& states, const at::Tensor& log_decay, bool cuda) {
  check_state_scan_args(states, log_decay);
  TORCH_CHECK_VALUE(states.device().is_cuda() == cuda, "linear_attention_state_scan: ", cuda ? "CUDA" : "CPU",
                    " kernel got tensors on ", states.device());
  return {states.contiguous(), log_decay.to(states.scalar_type()).contiguous(),
          at::empty(states.sizes(), states.options().memory_format(at::MemoryFormat::Contiguous))};
}

at::Tensor state_scan_cpu(const at::Tensor& states, const at::Tensor& log_decay, bool reverse) {
  const ScanTensors t = prepare_scan(states, log_decay, /*cuda=*/false);
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "linear_attention_state_scan",
                             [&] { scan_cpu_kernel<scalar_t>(t.states, t.log_decay, t.out, reverse); });
  return t.out;
}

#ifdef ODYSSEUS_WITH_CUDA
// The kernel is in csrc/cuda/state_scan.cu (see csrc/cuda/kernels.h for why it takes a struct).
at::Tensor state_scan_cuda(const at::Tensor& states, const at::Tensor& log_decay, bool reverse) {
  const c10::cuda::CUDAGuard guard(states.device());
  const ScanTensors t = prepare_scan(states, log_decay, /*cuda=*/true);
  cuda::ScanArgs a{};
  a.states = t.states.const_data_ptr();
  a.log_decay = t.log_decay.const_data_ptr();
  a.out = t.out.data_ptr();
  a.W = states.size(0);
  a.B = states.size(1);
  a.H = states.size(2);
  a.KV = states.size(3) * states.size(4);
  a.reverse = reverse;
  a.dtype = cuda_dtype(states.scalar_type());
  C10_CUDA_CHECK(cuda::linear_attention_state_scan(a, at::cuda::getCurrentCUDAStream()));
  return t.out;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(odysseus_kernels, CPU, m) {
  m.impl("linear_attention_state_scan", &state_scan_cpu);
}

#ifdef ODYSSEUS_WITH_CUDA
TORCH_LIBRARY_IMPL(odysseus_kernels, CUDA, m) {
  m.impl("linear_attention_state_scan", &state_scan_cuda);
}
#endif

}  // namespace odysseus
