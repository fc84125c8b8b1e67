// merge_attention_states_ on CUDA: one warp per (batch, seq, head) row, its lanes striding over
// head_dim. Every lane computes the row's weights from the old lse, the warp syncs, then lane 0
// writes the new lse (a row never spans two warps, so no block-wide barrier is needed).
// Memory-bound: one read of out and block_out, one write of out, per element.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../kernel_math.h"
#include "kernels.h"

namespace odysseus::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // warps per block

template <typename acc_t, typename in_t>
__global__ void merge_kernel(MergeArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= a.B * a.S * a.H) {
    return;  // uniform across the warp: its lanes share the row
  }
  const int64_t h = row % a.H, s = (row / a.H) % a.S, b = row / (a.H * a.S);
  acc_t* lp = static_cast<acc_t*>(a.lse) + b * a.lse_stride[0] + h * a.lse_stride[1] + s * a.lse_stride[2];
  const acc_t bls = static_cast<const acc_t*>(a.block_lse)[b * a.block_lse_stride[0] + h * a.block_lse_stride[1] +
                                                           s * a.block_lse_stride[2]];
  acc_t w_old, w_new, new_lse;
  merge_weights<acc_t>(*lp, bls, w_old, w_new, new_lse);
  acc_t* o = static_cast<acc_t*>(a.out) + b * a.out_stride[0] + s * a.out_stride[1] + h * a.out_stride[2];
  const in_t* bo = static_cast<const in_t*>(a.block_out) + b * a.block_out_stride[0] + s * a.block_out_stride[1] +
                   h * a.block_out_stride[2];
  for (int64_t d = threadIdx.x; d < a.D; d += warpSize) {
    acc_t* od = o + d * a.out_stride[3];
    *od = merge_value<acc_t>(*od, static_cast<acc_t>(bo[d * a.block_out_stride[3]]), w_old, w_new);
  }
  __syncwarp();  // every lane has read *lp
  if (threadIdx.x == 0) {
    *lp = new_lse;
  }
}

template <typename acc_t, typename in_t>
cudaError_t launch(const MergeArgs& a, cudaStream_t stream) {
  const int64_t rows = a.B * a.S * a.H;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > INT32_MAX) {
    return cudaErrorInvalidConfiguration;
  }
  merge_kernel<acc_t, in_t><<<static_cast<unsigned>(blocks), dim3(32, kRowsPerBlock), 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t launch_acc(const MergeArgs& a, cudaStream_t stream) {
  switch (a.in) {
    case DType::kHalf:
      return launch<acc_t, c10::Half>(a, stream);
    case DType::kBFloat16:
      return launch<acc_t, c10::BFloat16>(a, stream);
    default:  // the wrapper checked: block_out has the accumulators' dtype
      return launch<acc_t, acc_t>(a, stream);
  }
}

}  // namespace

cudaError_t merge_attention_states(const MergeArgs& a, cudaStream_t stream) {
  if (a.B * a.S * a.H == 0) {
    return cudaSuccess;
  }
  return a.acc == DType::kDouble ? launch_acc<double>(a, stream) : launch_acc<float>(a, stream);
}

}  // namespace odysseus::cuda
