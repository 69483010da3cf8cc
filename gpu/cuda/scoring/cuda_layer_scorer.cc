#include "gpu/cuda/scoring/cuda_layer_scorer.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_status.h"
#include "gpu/cuda/scoring/blas_status.h"
#include "gpu/cuda/scoring/layer_plan.h"
#include "gpu/cuda/scoring/scoring_kernels.h"

namespace kvkeep {
namespace {

namespace cs = ::kvkeep::cuda_scoring;
using Kind = DeviceScorerKind;

// Byte offsets of the buffers of one call inside one allocation (device) or its upload image
// (pinned host, same offsets).
class Plan {
 public:
  template <typename T>
  size_t Add(int64_t count) {
    const size_t offset = (size_ + 255) / 256 * 256;
    size_ = offset + sizeof(T) * static_cast<size_t>(std::max<int64_t>(count, 0));
    return offset;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

constexpr size_t kNone = ~size_t{0};

bool WindowScorer(Kind k) { return cuda_scoring::IsWindowScorer(k); }
bool CapScorer(Kind k) { return cuda_scoring::IsCapScorer(k); }

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
    scores->resize(request.kv_heads);
    int64_t total = 0;
    for (int g = 0; g < request.kv_heads; ++g) {
      (*scores)[g].resize(request.heads[g].n);
      total += request.heads[g].n;
    }
    if (total == 0) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(Init());
    absl::Status status = Run(request, total, scores);
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

  absl::Status Run(const DeviceLayerRequest& r, int64_t N, std::vector<std::vector<float>>* scores)
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

absl::Status CudaLayerScorer::Run(const DeviceLayerRequest& r, int64_t N,
                                  std::vector<std::vector<float>>* scores) {
  const DeviceScorerParams& p = r.scorer;
  const Kind kind = p.kind;
  const DeviceScorerNeeds needs = DeviceNeeds(kind);
  const cs::LayerPlan lp = cs::PlanLayer(r);
  const int Hk = r.kv_heads, H = r.q_heads, G = H / Hk, d = r.head_dim;
  const int rd = lp.rotary_dim;
  const float inv_sqrt_d = lp.inv_sqrt_d;
  const std::vector<cs::HeadSpan>& spans = lp.spans;
  const std::vector<int64_t>& starts = lp.starts;
  const std::vector<cs::SoftmaxRow>& softmax_rows = lp.softmax_rows;
  const std::vector<cs::GatherRun>& runs = lp.runs;
  const std::vector<int64_t>& p_offset = lp.p_offset;
  const int rows = lp.rows, max_n = lp.max_n, max_m = lp.max_m, chol_batch = lp.chol_batch;
  const int64_t p_floats = lp.p_floats, next = lp.next;

  // ---- plan: upload image first (same offsets on both sides), then device-only scratch.
  Plan plan;
  const size_t o_spans = plan.Add<cs::HeadSpan>(Hk);
  const size_t o_starts = plan.Add<int64_t>(Hk + 1);
  const size_t o_pos = plan.Add<int32_t>(N);
  const size_t o_runs = plan.Add<cs::GatherRun>(static_cast<int64_t>(runs.size()));
  const size_t o_rows = plan.Add<cs::SoftmaxRow>(static_cast<int64_t>(softmax_rows.size()));
  const size_t o_poff = plan.Add<int64_t>(Hk);
  const bool with_mass = kind == Kind::kH2o || kind == Kind::kObserved;
  const size_t o_mass = with_mass ? plan.Add<float>(G * N) : kNone;
  const int64_t qd = static_cast<int64_t>(H) * d;
  const size_t o_wq = WindowScorer(kind) ? plan.Add<float>(qd * r.window) : kNone;
  const bool with_gram = kind == Kind::kLaProx && r.wo_gram != nullptr;
  const size_t o_gram_in = with_gram ? plan.Add<float>(qd * d) : kNone;
  const bool expected = kind == Kind::kExpected;
  const size_t o_mu = expected ? plan.Add<float>(qd) : kNone;
  const bool with_var = expected && r.query_sq_sum != nullptr;
  const size_t o_var = with_var ? plan.Add<float>(qd) : kNone;
  const size_t o_cos = expected ? plan.Add<float>(rd / 2) : kNone;
  const size_t o_sin = expected ? plan.Add<float>(rd / 2) : kNone;
  const size_t o_anchor = CapScorer(kind) ? plan.Add<float>(qd) : kNone;
  const size_t o_anorm = CapScorer(kind) ? plan.Add<float>(H) : kNone;
  const bool capkv = kind == Kind::kCapKv || kind == Kind::kCapKvDot;
  const size_t o_chol_ptrs = capkv ? plan.Add<double*>(chol_batch) : kNone;
  const size_t o_trsm_a = capkv ? plan.Add<double*>(static_cast<int64_t>(Hk) * G) : kNone;
  const size_t o_trsm_b = capkv ? plan.Add<double*>(static_cast<int64_t>(Hk) * G) : kNone;
  const size_t upload_bytes = plan.size();
  // Download region: scores [N], then the Cholesky infos.
  const size_t o_scores = plan.Add<float>(N);
  const size_t o_info = plan.Add<int>(chol_batch);
  const size_t download_bytes = plan.size() - o_scores;
  const size_t o_keys = needs.keys ? plan.Add<float>(N * d) : kNone;
  const size_t o_values = needs.values ? plan.Add<float>(N * d) : kNone;
  const size_t o_p = WindowScorer(kind) ? plan.Add<float>(p_floats) : kNone;
  const size_t o_col = WindowScorer(kind) ? plan.Add<float>(G * N) : kNone;
  const size_t o_vnorm = (kind == Kind::kLaProx || expected) ? plan.Add<float>(G * N) : kNone;
  const size_t o_vm = with_gram ? plan.Add<float>(static_cast<int64_t>(G) * max_n * d) : kNone;
  const size_t o_logits = (expected || CapScorer(kind)) ? plan.Add<float>(G * N) : kNone;
  const size_t o_scaled = capkv ? plan.Add<float>(static_cast<int64_t>(G) * max_m * d) : kNone;
  const size_t o_gram = capkv ? plan.Add<float>(static_cast<int64_t>(G) * d * d) : kNone;
  const size_t o_a = capkv ? plan.Add<double>(qd * d) : kNone;
  const size_t o_y = capkv ? plan.Add<double>(static_cast<int64_t>(G) * max_m * d) : kNone;
  const bool greedy = kind == Kind::kCapKvGreedy;
  const size_t o_q = greedy ? plan.Add<double>(G * N) : kNone;
  const size_t o_b = greedy ? plan.Add<double>(qd * d) : kNone;
  const size_t o_z = greedy ? plan.Add<double>(qd) : kNone;
  const size_t o_invd = greedy ? plan.Add<double>(H) : kNone;
  const size_t o_add = greedy ? plan.Add<int>(Hk) : kNone;
  RETURN_IF_ERROR(Grow(plan.size(), upload_bytes, download_bytes));

  auto U = [&](size_t offset) { return up_ + offset; };
  auto D = [&](size_t offset) { return dev_ + offset; };
  auto DF = [&](size_t offset) { return reinterpret_cast<float*>(D(offset)); };
  auto DD = [&](size_t offset) { return reinterpret_cast<double*>(D(offset)); };

  // ---- pack the upload image.
  std::memcpy(U(o_spans), spans.data(), sizeof(cs::HeadSpan) * Hk);
  std::memcpy(U(o_starts), starts.data(), sizeof(int64_t) * (Hk + 1));
  std::memcpy(U(o_pos), lp.positions.data(), sizeof(int32_t) * N);
  if (!runs.empty()) std::memcpy(U(o_runs), runs.data(), sizeof(cs::GatherRun) * runs.size());
  if (!softmax_rows.empty()) {
    std::memcpy(U(o_rows), softmax_rows.data(), sizeof(cs::SoftmaxRow) * softmax_rows.size());
  }
  std::memcpy(U(o_poff), p_offset.data(), sizeof(int64_t) * Hk);
  if (with_mass) cs::PackMass(r, lp, reinterpret_cast<float*>(U(o_mass)));
  if (o_wq != kNone) std::memcpy(U(o_wq), r.window_queries, sizeof(float) * qd * r.window);
  if (with_gram) std::memcpy(U(o_gram_in), r.wo_gram, sizeof(float) * qd * d);
  if (expected) {
    cs::ExpectedTerms(r, lp, reinterpret_cast<float*>(U(o_mu)),
                      with_var ? reinterpret_cast<float*>(U(o_var)) : nullptr,
                      reinterpret_cast<float*>(U(o_cos)), reinterpret_cast<float*>(U(o_sin)));
  }
  if (CapScorer(kind)) {
    cs::CapAnchors(r, lp, reinterpret_cast<float*>(U(o_anchor)),
                   reinterpret_cast<float*>(U(o_anorm)));
  }
  if (capkv) {
    double** chol = reinterpret_cast<double**>(U(o_chol_ptrs));
    double** ta = reinterpret_cast<double**>(U(o_trsm_a));
    double** tb = reinterpret_cast<double**>(U(o_trsm_b));
    int b = 0;
    for (int g = 0; g < Hk; ++g) {
      for (int q = 0; q < G; ++q) {
        double* a = DD(o_a) + (static_cast<int64_t>(g) * G + q) * d * d;
        if (spans[g].m > 0) chol[b++] = a;
        ta[g * G + q] = a;
        tb[g * G + q] = DD(o_y) + static_cast<int64_t>(q) * spans[g].m * d;
      }
    }
  }

  // ---- device work, all on stream_, no synchronisation until the download.
  RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(dev_, up_, upload_bytes, cudaMemcpyHostToDevice, stream_),
                 "uploading the layer's statistics"));
  const cs::Heads heads{reinterpret_cast<const cs::HeadSpan*>(D(o_spans)),
                        reinterpret_cast<const int64_t*>(D(o_starts)), Hk, N};
  const int32_t* positions = reinterpret_cast<const int32_t*>(D(o_pos));
  float* out = DF(o_scores);
  const float* keys = needs.keys ? DF(o_keys) : nullptr;
  const float* values = needs.values ? DF(o_values) : nullptr;
  auto launch = [](cudaError_t e, const char* what) { return CudaStatus(e, what); };
  if (!runs.empty()) {
    const int dtype =
        r.dtype == DevicePageDType::kFp32 ? 0 : (r.dtype == DevicePageDType::kFp16 ? 1 : 2);
    RETURN_IF_ERROR(launch(
        cs::LaunchGather(
            {reinterpret_cast<const cs::GatherRun*>(D(o_runs)), static_cast<int>(runs.size()), d,
             dtype, needs.keys ? DF(o_keys) : nullptr, needs.values ? DF(o_values) : nullptr},
            stream_),
        "gather kernel"));
  }
  const cs::SoftmaxRow* rows_dev = reinterpret_cast<const cs::SoftmaxRow*>(D(o_rows));
  const int num_rows = static_cast<int>(softmax_rows.size());
  const float one = 1.0f, zero = 0.0f;

  switch (kind) {
    case Kind::kStreaming:
    case Kind::kRandom:
    case Kind::kH2o:
    case Kind::kObserved: {
      cs::TokenScoresView v;
      v.heads = heads;
      v.mode = kind == Kind::kStreaming ? cs::TokenMode::kStreaming
               : kind == Kind::kRandom  ? cs::TokenMode::kRandom
               : kind == Kind::kH2o     ? cs::TokenMode::kH2o
                                        : cs::TokenMode::kObserved;
      v.positions = positions;
      v.seed = p.seed;
      v.layer = static_cast<uint64_t>(r.layer_index);
      v.mass = with_mass ? DF(o_mass) : nullptr;
      v.group = G;
      v.next_position = next;
      v.scores = out;
      RETURN_IF_ERROR(launch(cs::LaunchTokenScores(v, stream_), "token scores kernel"));
      break;
    }
    case Kind::kKnorm:
      RETURN_IF_ERROR(launch(cs::LaunchNorms({N, keys, d, true, out}, stream_), "knorm kernel"));
      break;
    case Kind::kTova:
    case Kind::kSnapKv:
    case Kind::kLaProx: {
      const float* wq = DF(o_wq);
      float* pbuf = DF(o_p);
      for (int g = 0; g < Hk; ++g) {
        const int n = r.heads[g].n;
        if (n == 0) continue;
        const int64_t q0 = static_cast<int64_t>(g) * G * r.window * d;
        const float* qptr =
            kind == Kind::kTova ? wq + q0 + static_cast<int64_t>(r.window - 1) * d : wq + q0;
        const int ldq = kind == Kind::kTova ? r.window * d : d;
        RETURN_IF_ERROR(CublasStatus(
            cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, n, G * rows, d, &inv_sqrt_d,
                        keys + starts[g] * d, d, qptr, ldq, &zero, pbuf + p_offset[g], n),
            "window logits GEMM"));
      }
      RETURN_IF_ERROR(launch(cs::LaunchSoftmaxRows({rows_dev, num_rows, pbuf, false}, stream_),
                             "softmax kernel"));
      cs::WindowColumnsView wc;
      wc.heads = heads;
      wc.p_offset = reinterpret_cast<const int64_t*>(D(o_poff));
      wc.p = pbuf;
      wc.group = G;
      wc.rows = rows;
      wc.window_keep = p.window;
      wc.mode = kind == Kind::kTova     ? cs::WindowMode::kTova
                : kind == Kind::kSnapKv ? cs::WindowMode::kSnapKv
                                        : cs::WindowMode::kLaProx;
      wc.col = DF(o_col);
      RETURN_IF_ERROR(launch(cs::LaunchWindowColumns(wc, stream_), "window columns kernel"));
      if (kind == Kind::kTova) {
        RETURN_IF_ERROR(launch(cs::LaunchTovaAlign({heads, positions, DF(o_col), H, out}, stream_),
                               "tova kernel"));
      } else if (kind == Kind::kSnapKv) {
        RETURN_IF_ERROR(
            launch(cs::LaunchSnapPool(
                       {heads, DF(o_col), G, p.window, p.pool_kernel, p.pool_max, out}, stream_),
                   "pooling kernel"));
        RETURN_IF_ERROR(launch(cs::LaunchFillUndefined(heads, out, stream_), "fill kernel"));
      } else {
        float* vnorm = DF(o_vnorm);
        if (with_gram) {
          float* vm = DF(o_vm);
          for (int g = 0; g < Hk; ++g) {
            const int n = r.heads[g].n;
            if (n == 0) continue;
            // vm_q = V_g · M_{gG+q} (row-major [n][d]) for every q of the group.
            RETURN_IF_ERROR(CublasStatus(
                cublasSgemmStridedBatched(blas_, CUBLAS_OP_N, CUBLAS_OP_N, d, n, d, &one,
                                          DF(o_gram_in) + static_cast<int64_t>(g) * G * d * d, d,
                                          static_cast<long long>(d) * d, values + starts[g] * d, d,
                                          0, &zero, vm, d, static_cast<long long>(n) * d, G),
                "W_O Gram GEMM"));
            RETURN_IF_ERROR(
                launch(cs::LaunchQuadForm(
                           {vm, values + starts[g] * d, n, d, G, starts[g], N, vnorm}, stream_),
                       "quadratic form kernel"));
          }
        } else {
          RETURN_IF_ERROR(
              launch(cs::LaunchNorms({N, values, d, false, vnorm}, stream_), "norms kernel"));
        }
        RETURN_IF_ERROR(
            launch(cs::LaunchLaProxCombine({heads, DF(o_col), vnorm, with_gram, G, out}, stream_),
                   "laprox kernel"));
      }
      break;
    }
    case Kind::kExpected: {
      float* logits = DF(o_logits);
      float* vnorm = DF(o_vnorm);
      cs::ExpectedLogitsView v;
      v.heads = heads;
      v.keys = keys;
      v.mu = DF(o_mu);
      v.var = with_var ? DF(o_var) : nullptr;
      v.cos_f = DF(o_cos);
      v.minus_sin_f = DF(o_sin);
      v.d = d;
      v.rotary_dim = rd;
      v.interleaved = r.rope.interleaved;
      v.group = G;
      v.logits = logits;
      RETURN_IF_ERROR(launch(cs::LaunchExpectedLogits(v, stream_), "expected logits kernel"));
      RETURN_IF_ERROR(launch(cs::LaunchSoftmaxRows({rows_dev, num_rows, logits, false}, stream_),
                             "softmax kernel"));
      RETURN_IF_ERROR(
          launch(cs::LaunchNorms({N, values, d, false, vnorm}, stream_), "norms kernel"));
      RETURN_IF_ERROR(
          launch(cs::LaunchGroupSum({heads, logits, vnorm, G, out}, stream_), "group sum kernel"));
      RETURN_IF_ERROR(launch(cs::LaunchFillUndefined(heads, out, stream_), "fill kernel"));
      break;
    }
    case Kind::kCapKv:
    case Kind::kCapKvDot:
    case Kind::kCapKvGreedy: {
      float* w = DF(o_logits);
      cs::CapLogitsView cl;
      cl.heads = heads;
      cl.keys = keys;
      cl.anchor = DF(o_anchor);
      cl.anchor_norm = DF(o_anorm);
      cl.d = d;
      cl.group = G;
      cl.dot_form = kind == Kind::kCapKvDot;
      cl.tau = static_cast<float>(p.capkv_tau);
      cl.inv_sqrt_d = inv_sqrt_d;
      cl.w = w;
      RETURN_IF_ERROR(launch(cs::LaunchCapLogits(cl, stream_), "capkv logits kernel"));
      RETURN_IF_ERROR(launch(cs::LaunchSoftmaxRows({rows_dev, num_rows, w, true}, stream_),
                             "capkv weights kernel"));
      if (greedy) {
        cs::GreedyView gv;
        gv.heads = heads;
        gv.values = values;
        gv.w = w;
        gv.q = DD(o_q);
        gv.b = DD(o_b);
        gv.z = DD(o_z);
        gv.inv_denom = DD(o_invd);
        gv.add = reinterpret_cast<int*>(D(o_add));
        gv.scores = out;
        gv.d = d;
        gv.group = G;
        RETURN_IF_ERROR(launch(cs::LaunchGreedyInit(gv, stream_), "greedy init kernel"));
        for (int k = 0; k < lp.max_window_adds; ++k) {  // the window is kept anyway
          RETURN_IF_ERROR(launch(cs::LaunchGreedyAdd(gv, k, stream_), "greedy add kernels"));
        }
        for (int64_t step = 0; step < lp.max_picks; ++step) {
          RETURN_IF_ERROR(
              launch(cs::LaunchGreedySelect(gv, step, stream_), "greedy select kernel"));
          RETURN_IF_ERROR(launch(cs::LaunchGreedyAdd(gv, -1, stream_), "greedy add kernels"));
        }
        RETURN_IF_ERROR(launch(cs::LaunchGreedyFinish(gv, stream_), "greedy finish kernel"));
        RETURN_IF_ERROR(launch(cs::LaunchFillUndefined(heads, out, stream_), "fill kernel"));
        break;
      }
      float* scaled = DF(o_scaled);
      float* gram = DF(o_gram);
      for (int g = 0; g < Hk; ++g) {
        const int m = spans[g].m;
        if (m == 0) continue;
        const int64_t first = starts[g] + spans[g].s0;
        RETURN_IF_ERROR(launch(
            cs::LaunchScaleValues({values + first * d, w + first, N, m, d, G, scaled}, stream_),
            "scale values kernel"));
        RETURN_IF_ERROR(
            CublasStatus(cublasSgemmStridedBatched(blas_, CUBLAS_OP_N, CUBLAS_OP_T, d, d, m, &one,
                                                   scaled, d, static_cast<long long>(m) * d, scaled,
                                                   d, static_cast<long long>(m) * d, &zero, gram, d,
                                                   static_cast<long long>(d) * d, G),
                         "capkv Gram GEMM"));
        RETURN_IF_ERROR(
            launch(cs::LaunchGramToDouble(
                       {gram, DD(o_a) + static_cast<int64_t>(g) * G * d * d, d, G}, stream_),
                   "Gram conversion kernel"));
      }
      if (chol_batch > 0) {
        RETURN_IF_ERROR(
            CusolverStatus(cusolverDnDpotrfBatched(solver_, CUBLAS_FILL_MODE_LOWER, d,
                                                   reinterpret_cast<double**>(D(o_chol_ptrs)), d,
                                                   reinterpret_cast<int*>(D(o_info)), chol_batch),
                           "batched Cholesky (cusolverDnDpotrfBatched)"));
      }
      const double one_d = 1.0;
      for (int g = 0; g < Hk; ++g) {
        const int m = spans[g].m;
        if (m == 0) continue;
        const int64_t first = starts[g] + spans[g].s0;
        RETURN_IF_ERROR(
            launch(cs::LaunchValuesToDouble(
                       {values + first * d, static_cast<int64_t>(m) * d, G, DD(o_y)}, stream_),
                   "values conversion kernel"));
        RETURN_IF_ERROR(CublasStatus(
            cublasDtrsmBatched(blas_, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                               CUBLAS_DIAG_NON_UNIT, d, m, &one_d,
                               reinterpret_cast<const double* const*>(D(o_trsm_a)) + g * G, d,
                               reinterpret_cast<double* const*>(D(o_trsm_b)) + g * G, d, G),
            "batched triangular solve (cublasDtrsmBatched)"));
        RETURN_IF_ERROR(
            launch(cs::LaunchLeverage({DD(o_y), w + first, N, m, d, G, out + first}, stream_),
                   "leverage kernel"));
      }
      RETURN_IF_ERROR(launch(cs::LaunchFillUndefined(heads, out, stream_), "fill kernel"));
      break;
    }
  }

  // ---- one download, one synchronisation.
  RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(down_, D(o_scores), download_bytes, cudaMemcpyDeviceToHost, stream_),
      "downloading the scores"));
  RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "scoring the layer"));
  const float* host_scores = reinterpret_cast<const float*>(down_);
  const int* info = reinterpret_cast<const int*>(down_ + (o_info - o_scores));
  for (int b = 0; b < (capkv ? chol_batch : 0); ++b) {
    if (info[b] != 0) {
      return absl::InternalError(absl::StrCat("capkv: batched Cholesky failed for matrix ", b,
                                              " (info ", info[b], "): not positive definite"));
    }
  }
  for (int g = 0; g < Hk; ++g) {
    std::vector<float>& s = (*scores)[g];
    std::memcpy(s.data(), host_scores + starts[g], sizeof(float) * s.size());
    for (size_t j = 0; j < s.size(); ++j) {
      if (!std::isfinite(s[j])) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", r.layer_index, " KV head ", g, " token ", j, " scored ", s[j],
                         " on the device: the keys or values hold a non-finite value"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<DeviceLayerScorer> CreateCudaLayerScorer(int device_ordinal) {
  return std::make_unique<CudaLayerScorer>(device_ordinal);
}

}  // namespace kvkeep
