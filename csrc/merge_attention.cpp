// merge_attention_states_: the online-softmax merge of a block's partial attention into running
// fp32 accumulators (every ring-attention step): argument checks, the CPU kernel, and the CUDA
// wrapper around csrc/cuda/merge_attention.cu.
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "odysseus.h"

#ifdef ODYSSEUS_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace odysseus {

void check_merge_args(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& block_out,
                      const at::Tensor& block_lse) {
  TORCH_CHECK_VALUE(out.dim() == 4, "merge_attention_states_: out must be [batch, seq, heads, head_dim], got ",
                    out.dim(), " dims ", out.sizes());
  const auto B = out.size(0), S = out.size(1), H = out.size(2);
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == H && lse.size(2) == S,
                    "merge_attention_states_: lse must be [batch, heads, seq] = [", B, ", ", H, ", ", S,
                    "], got ", lse.sizes());
  TORCH_CHECK_VALUE(block_out.sizes() == out.sizes(), "merge_attention_states_: block_out must have out's shape ",
                    out.sizes(), ", got ", block_out.sizes());
  TORCH_CHECK_VALUE(block_lse.sizes() == lse.sizes(), "merge_attention_states_: block_lse must have lse's shape ",
                    lse.sizes(), ", got ", block_lse.sizes());
  const auto acc = out.scalar_type();
  TORCH_CHECK_TYPE(acc == at::kFloat || acc == at::kDouble,
                   "merge_attention_states_: out must be float32 (or float64), got ", acc);
  TORCH_CHECK_TYPE(lse.scalar_type() == acc, "merge_attention_states_: lse must have out's dtype ", acc, ", got ",
                   lse.scalar_type());
  TORCH_CHECK_TYPE(block_lse.scalar_type() == acc, "merge_attention_states_: block_lse must have out's dtype ",
                   acc, ", got ", block_lse.scalar_type());
  const auto bt = block_out.scalar_type();
  TORCH_CHECK_TYPE(bt == acc || bt == at::kHalf || bt == at::kBFloat16,
                   "merge_attention_states_: block_out must be ", acc, ", float16 or bfloat16, got ", bt);
  for (const at::Tensor* t : {&lse, &block_out, &block_lse}) {
    TORCH_CHECK_VALUE(t->device() == out.device(), "merge_attention_states_: all tensors must be on out's device ",
                      out.device(), ", got ", t->device());
  }
  // Written tensors: an expanded (stride-0) dimension would make rows race on one element.
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes,
                    "merge_attention_states_: out must not have overlapping elements (expanded strides ",
                    out.strides(), ")");
  TORCH_CHECK_VALUE(at::has_internal_overlap(lse) != at::MemOverlap::Yes,
                    "merge_attention_states_: lse must not have overlapping elements (expanded strides ",
                    lse.strides(), ")");
}

namespace {

template <typename acc_t, typename in_t>
void merge_cpu_kernel(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& block_out,
                      const at::Tensor& block_lse) {
  const int64_t S = out.size(1), H = out.size(2), D = out.size(3);
  const int64_t rows = out.size(0) * S * H;
  acc_t* o = out.data_ptr<acc_t>();
  acc_t* l = lse.data_ptr<acc_t>();
  const in_t* bo = block_out.const_data_ptr<in_t>();
  const acc_t* bl = block_lse.const_data_ptr<acc_t>();
  const auto so = out.strides(), sb = block_out.strides(), sl = lse.strides(), sbl = block_lse.strides();
  // A row is D contiguous-ish elements: give each task enough rows to amortise the scheduling.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r % H, s = (r / H) % S, b = r / (H * S);
      acc_t* lp = l + b * sl[0] + h * sl[1] + s * sl[2];
      const acc_t bls = bl[b * sbl[0] + h * sbl[1] + s * sbl[2]];
      acc_t w_old, w_new, new_lse;
      merge_weights<acc_t>(*lp, bls, w_old, w_new, new_lse);
      acc_t* orow = o + b * so[0] + s * so[1] + h * so[2];
      const in_t* brow = bo + b * sb[0] + s * sb[1] + h * sb[2];
      for (int64_t d = 0; d < D; ++d) {
        acc_t& od = orow[d * so[3]];
        od = merge_value<acc_t>(od, static_cast<acc_t>(brow[d * sb[3]]), w_old, w_new);
      }
      *lp = new_lse;
    }
  });
}

void merge_attention_states_cpu(at::Tensor& out, at::Tensor& lse, const at::Tensor& block_out,
                                const at::Tensor& block_lse) {
  check_merge_args(out, lse, block_out, block_lse);
  TORCH_CHECK_VALUE(out.device().is_cpu(), "merge_attention_states_: CPU kernel got tensors on ", out.device());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "merge_attention_states_", [&] {
    using acc_t = scalar_t;
    switch (block_out.scalar_type()) {
      case at::kHalf:
        merge_cpu_kernel<acc_t, at::Half>(out, lse, block_out, block_lse);
        break;
      case at::kBFloat16:
        merge_cpu_kernel<acc_t, at::BFloat16>(out, lse, block_out, block_lse);
        break;
      default:  // checked: block_out has out's dtype
        merge_cpu_kernel<acc_t, acc_t>(out, lse, block_out, block_lse);
    }
  });
}

#ifdef ODYSSEUS_WITH_CUDA
// The kernel is in csrc/cuda/merge_attention.cu (see csrc/cuda/kernels.h for why it takes a struct).
void merge_attention_states_cuda(at::Tensor& out, at::Tensor& lse, const at::Tensor& block_out,
                                 const at::Tensor& block_lse) {
  check_merge_args(out, lse, block_out, block_lse);
  TORCH_CHECK_VALUE(out.device().is_cuda(), "merge_attention_states_: CUDA kernel got tensors on ", out.device());
  const c10::cuda::CUDAGuard guard(out.device());
  cuda::MergeArgs a{};
  a.out = out.data_ptr();
  a.lse = lse.data_ptr();
  a.block_out = block_out.const_data_ptr();
  a.block_lse = block_lse.const_data_ptr();
  a.B = out.size(0);
  a.S = out.size(1);
  a.H = out.size(2);
  a.D = out.size(3);
  for (int i = 0; i < 4; ++i) {
    a.out_stride[i] = out.stride(i);
    a.block_out_stride[i] = block_out.stride(i);
  }
  for (int i = 0; i < 3; ++i) {
    a.lse_stride[i] = lse.stride(i);
    a.block_lse_stride[i] = block_lse.stride(i);
  }
  a.acc = cuda_dtype(out.scalar_type());
  a.in = cuda_dtype(block_out.scalar_type());
  C10_CUDA_CHECK(cuda::merge_attention_states(a, at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(odysseus_kernels, CPU, m) {
  m.impl("merge_attention_states_", &merge_attention_states_cpu);
}

#ifdef ODYSSEUS_WITH_CUDA
TORCH_LIBRARY_IMPL(odysseus_kernels, CUDA, m) {
  m.impl("merge_attention_states_", &merge_attention_states_cuda);
}
#endif

}  // namespace odysseus
