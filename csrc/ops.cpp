// The odysseus_kernels operator library: every schema, in one TORCH_LIBRARY block, plus the empty
// Python module `odysseus_kernels._C` whose import loads this shared library (and so runs the
// registrations). Kernels register per device in csrc/<op>.cpp (CPU) and csrc/cuda/ (CUDA);
// fake kernels and autograd are registered from Python (odysseus_kernels/kernels/extension_ops.py).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// No pybind11: the module only has to exist; the ops live in torch.ops.odysseus_kernels.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(odysseus_kernels, m) {
  // Where the fake kernels and autograd are registered (odysseus_kernels.extension imports it; torch
  // names it in its error when the library was loaded some other way and a fake kernel is missing).
  m.set_python_module("odysseus_kernels.kernels.extension_ops");
  // In place: (out, lse) <- online-softmax merge of (out, lse) with (block_out, block_lse).
  m.def("merge_attention_states_(Tensor(a!) out, Tensor(b!) lse, Tensor block_out, Tensor block_lse) -> ()");
  // Exclusive prefix (reverse=False) or suffix (reverse=True) of per-rank states with per-head decay.
  m.def("linear_attention_state_scan(Tensor states, Tensor log_decay, bool reverse) -> Tensor");
  // Stream-ordered 32-bit flags: a store at this point of the current stream, and a wait of the
  // current stream until the flag reaches `value` (wrap-around >=) or equals it.
  m.def("stream_write_value32_(Tensor(a!) flag, int value) -> ()");
  m.def("stream_wait_value32(Tensor flag, int value, bool equal=False) -> ()");
}
