// KVKEEP_HOST_DEVICE marks maths that both backends need: `__host__ __device__` under nvcc, nothing
// in the CPU build, so the CPU tests exercise exactly the code the CUDA kernels run.
//
//   KVKEEP_HOST_DEVICE inline float Square(float x) { return x * x; }
#ifndef KVKEEP_GPU_MATH_HOST_DEVICE_H_
#define KVKEEP_GPU_MATH_HOST_DEVICE_H_

#if defined(__CUDACC__)
#define KVKEEP_HOST_DEVICE __host__ __device__
#else
#define KVKEEP_HOST_DEVICE
#endif

#endif  // KVKEEP_GPU_MATH_HOST_DEVICE_H_
