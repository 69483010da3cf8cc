#include "gpu/cuda/batch_copy.cuh"

namespace kvkeep {
namespace {

template <typename Word>
cudaError_t Launch(const BatchCopyView& view, cudaStream_t stream) {
  const uint64_t blocks = view.num_chunks < kBatchCopyMaxBlocks ? view.num_chunks
                                                                : kBatchCopyMaxBlocks;
  // A failed runtime call earlier on this thread (already reported as a Status) leaves its error
  // as the "last error"; clear it so the check below reports this launch only.
  (void)cudaGetLastError();
  BatchCopyKernel<Word><<<static_cast<unsigned>(blocks), kBatchCopyThreads, 0, stream>>>(view);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchBatchCopy(const BatchCopyView& view, cudaStream_t stream) {
  if (view.num_chunks == 0) return cudaSuccess;
  if (view.ops == nullptr || view.num_ops == 0) return cudaErrorInvalidValue;
  switch (view.alignment) {
    case 16: return Launch<uint4>(view, stream);
    case 8: return Launch<uint2>(view, stream);
    case 4: return Launch<uint32_t>(view, stream);
    case 2: return Launch<uint16_t>(view, stream);
    case 1: return Launch<uint8_t>(view, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kvkeep
