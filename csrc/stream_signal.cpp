// Stream-ordered 32-bit flags, for overlap pipelines: a producer stream (communication) writes
// "chunk i arrived", a consumer stream (a GEMM) waits for it, and the host is never involved.
//
// CUDA (driver stream memory operations; host code only, so no .cu file):
//   stream_write_value32_ -> cuStreamWriteValue32 with default flags: a memory barrier orders all
//                            earlier work of the stream (the received chunk) before the store;
//   stream_wait_value32   -> cuStreamWaitValue32, GEQ in wrap-around order ((int32)(*flag - value)
//                            >= 0) or EQ: later work of the stream waits until the flag satisfies it.
// Both are capturable in CUDA graphs. The driver entry points come from cudaGetDriverEntryPoint*
// (in the CUDA runtime torch already loads): the module never links libcuda, so it imports on
// machines without a driver.
//
// CPU: ops run in program order on the calling thread, the CPU's only "stream". A write is a release
// store. A wait is an acquire load that returns when the flag has reached the value and otherwise
// raises: nothing earlier in program order can still write the flag, so blocking would hang forever
// (a flag written by another thread must be synchronised by that thread's join or a barrier).
#include <torch/library.h>

#include "odysseus.h"

#ifdef ODYSSEUS_WITH_CUDA
#include <cuda.h>  // driver API types and enums only; nothing from libcuda is linked
#include <cuda_runtime_api.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace odysseus {

void check_flag_args(const at::Tensor& flag, int64_t value, const char* op) {
  TORCH_CHECK_TYPE(flag.scalar_type() == at::kInt, op, ": flag must be int32, got ", flag.scalar_type());
  TORCH_CHECK_VALUE(flag.numel() == 1, op, ": flag must have exactly one element (index a flags tensor, e.g. "
                    "flags[i]), got shape ", flag.sizes());
  TORCH_CHECK_VALUE(value >= INT32_MIN && value <= INT32_MAX, op, ": value must fit in int32, got ", value);
}

namespace {

void stream_write_value32_cpu(at::Tensor& flag, int64_t value) {
  check_flag_args(flag, value, "stream_write_value32_");
  __atomic_store_n(flag.data_ptr<int32_t>(), static_cast<int32_t>(value), __ATOMIC_RELEASE);
}

void stream_wait_value32_cpu(const at::Tensor& flag, int64_t value, bool equal) {
  check_flag_args(flag, value, "stream_wait_value32");
  const int32_t current = __atomic_load_n(flag.const_data_ptr<int32_t>(), __ATOMIC_ACQUIRE);
  TORCH_CHECK(flag_reached(current, static_cast<int32_t>(value), equal),
              "stream_wait_value32: on CPU the wait for flag ", equal ? "== " : ">= ", value,
              " would never return (the flag is ", current,
              " and CPU ops run in program order: signal before you wait)");
}

#ifdef ODYSSEUS_WITH_CUDA
// CUresult cuStreamWriteValue32(CUstream, CUdeviceptr, cuuint32_t, unsigned int); Wait has the same.
using StreamValue32Fn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using GetErrorStringFn = CUresult (*)(CUresult, const char**);

void* driver_entry_point(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  // The symbols' ABI as of CUDA 12.0 (when the v2 stream memory operations became the default).
  C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &status));
#else
  C10_CUDA_CHECK(cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &status));
#endif
  TORCH_CHECK(status == cudaDriverEntryPointSuccess && fn != nullptr, "odysseus_kernels: the CUDA driver has no ",
              name, " (driver older than CUDA 12?), query status ", static_cast<int>(status));
  return fn;
}

void check_cu(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) {
    return;
  }
  static const auto error_string = reinterpret_cast<GetErrorStringFn>(driver_entry_point("cuGetErrorString"));
  const char* msg = nullptr;
  error_string(result, &msg);
  TORCH_CHECK(false, what, " failed: ", msg ? msg : "unknown error", " (CUresult ", static_cast<int>(result), ")");
}

void stream_value32_cuda(const at::Tensor& flag, int64_t value, const char* op, StreamValue32Fn fn,
                         const char* symbol, unsigned int flags) {
  TORCH_CHECK_VALUE(flag.device().is_cuda(), op, ": CUDA kernel got flag on ", flag.device());
  const c10::cuda::CUDAGuard guard(flag.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  check_cu(fn(reinterpret_cast<CUstream>(stream), reinterpret_cast<CUdeviceptr>(flag.const_data_ptr<int32_t>()),
              static_cast<cuuint32_t>(static_cast<int32_t>(value)), flags),
           symbol);
}

void stream_write_value32_cuda(at::Tensor& flag, int64_t value) {
  check_flag_args(flag, value, "stream_write_value32_");
  static const auto fn = reinterpret_cast<StreamValue32Fn>(driver_entry_point("cuStreamWriteValue32"));
  stream_value32_cuda(flag, value, "stream_write_value32_", fn, "cuStreamWriteValue32", CU_STREAM_WRITE_VALUE_DEFAULT);
}

void stream_wait_value32_cuda(const at::Tensor& flag, int64_t value, bool equal) {
  check_flag_args(flag, value, "stream_wait_value32");
  static const auto fn = reinterpret_cast<StreamValue32Fn>(driver_entry_point("cuStreamWaitValue32"));
  stream_value32_cuda(flag, value, "stream_wait_value32", fn, "cuStreamWaitValue32",
                      equal ? CU_STREAM_WAIT_VALUE_EQ : CU_STREAM_WAIT_VALUE_GEQ);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(odysseus_kernels, CPU, m) {
  m.impl("stream_write_value32_", &stream_write_value32_cpu);
  m.impl("stream_wait_value32", &stream_wait_value32_cpu);
}

#ifdef ODYSSEUS_WITH_CUDA
TORCH_LIBRARY_IMPL(odysseus_kernels, CUDA, m) {
  m.impl("stream_write_value32_", &stream_write_value32_cuda);
  m.impl("stream_wait_value32", &stream_wait_value32_cuda);
}
#endif

}  // namespace odysseus
