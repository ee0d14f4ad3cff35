// Python binding of the Mish CUDA kernels (models/mish_cuda/mish_kernel.cu).
#include <torch/extension.h>

torch::Tensor mish_forward_cuda(torch::Tensor x);
torch::Tensor mish_backward_cuda(torch::Tensor dy, torch::Tensor x);

torch::Tensor mish_forward(torch::Tensor x) {
  TORCH_CHECK(x.is_cuda(), "mish_cuda: input must be a CUDA tensor");
  return mish_forward_cuda(x);
}

torch::Tensor mish_backward(torch::Tensor dy, torch::Tensor x) {
  TORCH_CHECK(x.is_cuda() && dy.is_cuda(), "mish_cuda: inputs must be CUDA tensors");
  TORCH_CHECK(x.sizes() == dy.sizes(), "mish_cuda: gradient and input shapes differ");
  return mish_backward_cuda(dy, x);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &mish_forward, "Mish forward (CUDA)");
  m.def("backward", &mish_backward, "Mish backward (CUDA)");
}
