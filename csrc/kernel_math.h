// Per-element math shared by the CPU kernels (csrc/*.cpp) and the CUDA kernels (csrc/cuda/*.cu).
// No ATen includes: the .cu files stay cheap to compile (see csrc/cuda/kernels.h).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace odysseus {

// expf/log1pf exist both in the C library (host) and in CUDA device code, so one spelling serves both.
C10_HOST_DEVICE inline float exp_(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double exp_(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float log1p_(float x) { return ::log1pf(x); }
C10_HOST_DEVICE inline double log1p_(double x) { return ::log1p(x); }

// Online-softmax merge weights of one row: new_lse = logaddexp(lse, block_lse),
// w_old = exp(lse - new_lse), w_new = exp(block_lse - new_lse).
// A side at -inf gets weight exactly 0 and the other exactly 1 (exp(-inf) = 0, log1p(0) = 0), and
// both at -inf give (1, 0, -inf) so the row is left as it is: never NaN from -inf - -inf.
// NaN inputs propagate (comparisons with NaN are false, so NaN reaches log1p/exp).
template <typename T>
C10_HOST_DEVICE inline void merge_weights(T lse, T block_lse, T& w_old, T& w_new, T& new_lse) {
  const T ninf = -static_cast<T>(INFINITY);
  if (lse == ninf && block_lse == ninf) {
    w_old = T(1);
    w_new = T(0);
    new_lse = ninf;
    return;
  }
  const T hi = lse > block_lse ? lse : block_lse;
  const T lo = lse > block_lse ? block_lse : lse;
  new_lse = hi + log1p_(exp_(lo - hi));
  w_old = exp_(lse - new_lse);
  w_new = exp_(block_lse - new_lse);
}

// One output element of the merge. A zero weight means "that side saw no keys": its value is not
// used (not even as 0 * x), so an uninitialised out or block_out row behind lse = -inf cannot turn
// the result into NaN.
template <typename T>
C10_HOST_DEVICE inline T merge_value(T out, T block_out, T w_old, T w_new) {
  if (w_new == T(0)) {
    return w_old == T(1) ? out : w_old * out;
  }
  if (w_old == T(0)) {
    return w_new * block_out;
  }
  return w_old * out + w_new * block_out;
}

}  // namespace odysseus
