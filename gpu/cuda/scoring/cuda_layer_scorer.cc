#include "gpu/cuda/scoring/cuda_layer_scorer.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_status.h"
#include "gpu/cuda/scoring/blas_status.h"
#include "gpu/cuda/scoring/cuda_scoring_steps.h"
#include "gpu/cuda/scoring/layer_plan.h"
#include "gpu/cuda/scoring/scorer_steps.h"
#include "gpu/cuda/scoring/scratch_layout.h"

namespace kvkeep {
namespace {

namespace cs = ::kvkeep::cuda_scoring;

class CudaLayerScorer final : public DeviceLayerScorer {
 public:
  explicit CudaLayerScorer(int device) : device_(device) {}
  ~CudaLayerScorer() override {
    if (!initialised_) return;
    cudaSetDevice(device_);
    if (solver_ != nullptr) cusolverDnDestroy(solver_);
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (dev_ != nullptr) cudaFree(dev_);
    if (up_ != nullptr) cudaFreeHost(up_);
    if (down_ != nullptr) cudaFreeHost(down_);
  }

  absl::Status ScoreLayer(const DeviceLayerRequest& request,
                          std::vector<std::vector<float>>* scores) override {
    RETURN_IF_ERROR(ValidateDeviceLayerRequest(request));
    if (cs::SizeScores(request, scores) == 0) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(Init());
    absl::Status status = Run(request, scores);
    if (!status.ok()) cudaStreamSynchronize(stream_);  // nothing stays in flight on our buffers
    return status;
  }

  size_t scratch_bytes() const override {
    absl::MutexLock lock(&mu_);
    return dev_bytes_ + up_bytes_ + down_bytes_;
  }

 private:
  // Creates what is missing: a failure leaves the handles made so far (the destructor frees them)
  // and the next layer retries the rest, so a transient failure (e.g. out of memory when cuBLAS
  // allocates its workspace) never leaves a null handle that later layers would use.
  absl::Status Init() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    RETURN_IF_ERROR(
        CudaStatus(cudaSetDevice(device_), absl::StrCat("cudaSetDevice(", device_, ")")));
    if (stream_ == nullptr) {
      cudaStream_t stream = nullptr;
      RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                                 "creating the scoring stream"));
      stream_ = stream;
      initialised_ = true;  // the destructor releases what exists from here on
    }
    if (blas_ == nullptr) {
      cublasHandle_t blas = nullptr;
      RETURN_IF_ERROR(CublasStatus(cublasCreate(&blas), "cublasCreate"));
      // Plain fp32 arithmetic (no TF32), whatever NVIDIA_TF32_OVERRIDE says: results are compared
      // with the CPU scorers.
      absl::Status configured = CublasStatus(cublasSetStream(blas, stream_), "cublasSetStream");
      if (configured.ok()) {
        configured = CublasStatus(cublasSetMathMode(blas, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
      }
      if (!configured.ok()) {
        cublasDestroy(blas);
        return configured;
      }
      blas_ = blas;
    }
    if (solver_ == nullptr) {
      cusolverDnHandle_t solver = nullptr;
      RETURN_IF_ERROR(CusolverStatus(cusolverDnCreate(&solver), "cusolverDnCreate"));
      absl::Status configured =
          CusolverStatus(cusolverDnSetStream(solver, stream_), "cusolverDnSetStream");
      if (!configured.ok()) {
        cusolverDnDestroy(solver);
        return configured;
      }
      solver_ = solver;
    }
    return absl::OkStatus();
  }

  // Grows (never shrinks) the device scratch and the pinned staging buffers. Called only between
  // layers, when nothing is in flight.
  absl::Status Grow(size_t dev, size_t up, size_t down) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto round = [](size_t b) { return (b + (1u << 20) - 1) / (1u << 20) * (1u << 20); };
    if (dev > dev_bytes_) {
      if (dev_ != nullptr) cudaFree(dev_);
      dev_ = nullptr;
      dev_bytes_ = 0;
      RETURN_IF_ERROR(
          CudaStatus(cudaMalloc(reinterpret_cast<void**>(&dev_), round(dev)),
                     absl::StrCat("cudaMalloc of ", round(dev), " bytes of scoring scratch")));
      dev_bytes_ = round(dev);
    }
    if (up > up_bytes_) {
      if (up_ != nullptr) cudaFreeHost(up_);
      up_ = nullptr;
      up_bytes_ = 0;
      RETURN_IF_ERROR(CudaStatus(cudaMallocHost(reinterpret_cast<void**>(&up_), round(up)),
                                 "cudaMallocHost of the upload staging"));
      up_bytes_ = round(up);
    }
    if (down > down_bytes_) {
      if (down_ != nullptr) cudaFreeHost(down_);
      down_ = nullptr;
      down_bytes_ = 0;
      RETURN_IF_ERROR(CudaStatus(cudaMallocHost(reinterpret_cast<void**>(&down_), round(down)),
                                 "cudaMallocHost of the download staging"));
      down_bytes_ = round(down);
    }
    return absl::OkStatus();
  }

  absl::Status Run(const DeviceLayerRequest& r, std::vector<std::vector<float>>* scores)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int device_;
  mutable absl::Mutex mu_;
  bool initialised_ ABSL_GUARDED_BY(mu_) = false;
  cudaStream_t stream_ ABSL_GUARDED_BY(mu_) = nullptr;
  cublasHandle_t blas_ ABSL_GUARDED_BY(mu_) = nullptr;
  cusolverDnHandle_t solver_ ABSL_GUARDED_BY(mu_) = nullptr;
  char* dev_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t dev_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  char* up_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t up_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  char* down_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t down_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// Plan, layout and upload image on the host; one upload, the scorer's steps on the stream, one
// download and one synchronisation.
absl::Status CudaLayerScorer::Run(const DeviceLayerRequest& r,
                                  std::vector<std::vector<float>>* scores) {
  const cs::LayerPlan plan = cs::PlanLayer(r);
  const cs::ScratchLayout layout = cs::LayoutScratch(r, plan);
  RETURN_IF_ERROR(Grow(layout.total_bytes, layout.upload_bytes, layout.download_bytes));
  cs::PackUpload(r, plan, layout, dev_, up_);
  RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(dev_, up_, layout.upload_bytes, cudaMemcpyHostToDevice, stream_),
                 "uploading the layer's statistics"));
  cs::CudaScoringSteps steps(stream_, blas_, solver_);
  RETURN_IF_ERROR(cs::RunScorerSteps(r, plan, layout, dev_, steps));
  RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(down_, dev_ + layout.scores, layout.download_bytes,
                                             cudaMemcpyDeviceToHost, stream_),
                             "downloading the scores"));
  RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "scoring the layer"));
  return cs::ReadScores(r, plan, layout, down_, scores);
}

}  // namespace

std::unique_ptr<DeviceLayerScorer> CreateCudaLayerScorer(int device_ordinal) {
  return std::make_unique<CudaLayerScorer>(device_ordinal);
}

}  // namespace kvkeep
