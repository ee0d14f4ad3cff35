// Python binding of the Mish CUDA kernels (models/mish_cuda/mish_kernel.cu).
// Only the headers it uses (pybind11 with PyTorch's Tensor casters), not <torch/extension.h>: a faster build.
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

at::Tensor mish_forward_cuda(at::Tensor x);
at::Tensor mish_backward_cuda(at::Tensor dy, at::Tensor x);

at::Tensor mish_forward(at::Tensor x) {
  TORCH_CHECK(x.is_cuda(), "mish_cuda: input must be a CUDA tensor");
  return mish_forward_cuda(x);
}

at::Tensor mish_backward(at::Tensor dy, at::Tensor x) {
  TORCH_CHECK(x.is_cuda() && dy.is_cuda(), "mish_cuda: inputs must be CUDA tensors");
  TORCH_CHECK(x.sizes() == dy.sizes(), "mish_cuda: gradient and input shapes differ");
  return mish_backward_cuda(dy, x);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &mish_forward, "Mish forward (CUDA)");
  m.def("backward", &mish_backward, "Mish backward (CUDA)");
}
