// gpu_bandwidth: device query and a STREAM-like copy/triad bandwidth test for one NVIDIA GPU.
// Written for eessi-pipeline.  Every result is one JSON object on stdout, so that checks and
// scripts read it without a parser for free text.
//
//   gpu_bandwidth --query                 the device: name, compute capability, memory, versions
//   gpu_bandwidth [--elements N] [--reps R] [--device D]
//                                         copy (c = a) and triad (a = b + s*c), best of R runs, GB/s
//
// Exit codes: 0 ok; 1 usage; 2 no usable GPU (no device, or a driver older than the runtime needs);
// 3 a CUDA call failed; 4 the kernels computed wrong values.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

const int kBlock = 256;

__global__ void copy_kernel(const double* __restrict__ a, double* __restrict__ c, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    c[i] = a[i];
}

__global__ void triad_kernel(double* __restrict__ a, const double* __restrict__ b,
                             const double* __restrict__ c, double s, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    a[i] = b[i] + s * c[i];
}

__global__ void fill_kernel(double* __restrict__ x, double v, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    x[i] = v;
}

// A JSON string body: quotes, backslashes and control characters escaped.
void print_json_string(const char* s) {
  putchar('"');
  for (; *s; ++s) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      putchar('\\');
      putchar(ch);
    } else if (ch < 0x20) {
      printf("\\u%04x", ch);
    } else {
      putchar(ch);
    }
  }
  putchar('"');
}

int fail(cudaError_t err, const char* what) {
  bool no_gpu = err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver ||
                err == cudaErrorCompatNotSupportedOnDevice || err == cudaErrorSystemDriverMismatch;
  printf("{\"ok\": false, \"no_gpu\": %s, \"call\": ", no_gpu ? "true" : "false");
  print_json_string(what);
  printf(", \"error\": ");
  print_json_string(cudaGetErrorName(err));
  printf(", \"message\": ");
  print_json_string(cudaGetErrorString(err));
  printf("}\n");
  return no_gpu ? 2 : 3;
}

#define CHECK(call)                              \
  do {                                           \
    cudaError_t err_ = (call);                   \
    if (err_ != cudaSuccess) return fail(err_, #call); \
  } while (0)

int usage(const char* prog) {
  fprintf(stderr, "usage: %s [--query] [--elements N] [--reps R] [--device D]\n", prog);
  return 1;
}

int versions(int* runtime, int* driver) {
  CHECK(cudaRuntimeGetVersion(runtime));
  CHECK(cudaDriverGetVersion(driver));
  return 0;
}

int query(int device) {
  int runtime = 0, driver = 0, count = 0;
  CHECK(cudaRuntimeGetVersion(&runtime));
  CHECK(cudaDriverGetVersion(&driver));
  CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    printf("{\"ok\": false, \"no_gpu\": true, \"error\": \"no such device\", \"device\": %d, \"count\": %d}\n",
           device, count);
    return 2;
  }
  cudaDeviceProp p;
  CHECK(cudaGetDeviceProperties(&p, device));
  printf("{\"ok\": true, \"device\": %d, \"count\": %d, \"name\": ", device, count);
  print_json_string(p.name);
  printf(", \"compute_capability\": \"%d.%d\", \"cc\": \"cc%d%d\", \"memory_bytes\": %zu, "
         "\"multiprocessors\": %d, \"memory_bus_width_bits\": %d, \"runtime_version\": %d, "
         "\"driver_version\": %d}\n",
         p.major, p.minor, p.major, p.minor, p.totalGlobalMem, p.multiProcessorCount, p.memoryBusWidth, runtime,
         driver);
  return 0;
}

int bandwidth(int device, size_t n, int reps) {
  int runtime = 0, driver = 0;
  int rc = versions(&runtime, &driver);
  if (rc != 0) return rc;
  CHECK(cudaSetDevice(device));
  cudaDeviceProp p;
  CHECK(cudaGetDeviceProperties(&p, device));
  double *a = nullptr, *b = nullptr, *c = nullptr;
  size_t bytes = n * sizeof(double);
  CHECK(cudaMalloc(&a, bytes));
  CHECK(cudaMalloc(&b, bytes));
  CHECK(cudaMalloc(&c, bytes));
  int grid = p.multiProcessorCount * 8;
  fill_kernel<<<grid, kBlock>>>(a, 1.0, n);
  fill_kernel<<<grid, kBlock>>>(b, 2.0, n);
  fill_kernel<<<grid, kBlock>>>(c, 0.0, n);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());

  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  float best_copy = 1e30f, best_triad = 1e30f;
  const double s = 3.0;
  for (int r = 0; r < reps + 1; ++r) {  // the first round warms up and is not counted
    float ms = 0.0f;
    CHECK(cudaEventRecord(start));
    copy_kernel<<<grid, kBlock>>>(a, c, n);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    CHECK(cudaGetLastError());
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (r > 0 && ms < best_copy) best_copy = ms;
    CHECK(cudaEventRecord(start));
    triad_kernel<<<grid, kBlock>>>(a, b, c, s, n);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    CHECK(cudaGetLastError());
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (r > 0 && ms < best_triad) best_triad = ms;
  }
  // After the loop: c = a (from the last copy, a as left by the triad before), a = b + s*c.
  // Check a few elements on the host against the same recurrence.
  double expect_a = 1.0, expect_c = 0.0;
  for (int r = 0; r < reps + 1; ++r) {
    expect_c = expect_a;
    expect_a = 2.0 + s * expect_c;
  }
  double host_a[4], host_c[4];
  size_t probe[4] = {0, n / 3, n / 2, n - 1};
  bool correct = true;
  for (int i = 0; i < 4; ++i) {
    CHECK(cudaMemcpy(&host_a[i], a + probe[i], sizeof(double), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(&host_c[i], c + probe[i], sizeof(double), cudaMemcpyDeviceToHost));
    double ea = host_a[i] - expect_a, ec = host_c[i] - expect_c;
    if (ea * ea > 1e-12 * expect_a * expect_a || ec * ec > 1e-12 * expect_c * expect_c) correct = false;
  }
  CHECK(cudaFree(a));
  CHECK(cudaFree(b));
  CHECK(cudaFree(c));
  double copy_gbs = 2.0 * bytes / (best_copy * 1e-3) / 1e9;
  double triad_gbs = 3.0 * bytes / (best_triad * 1e-3) / 1e9;
  printf("{\"ok\": %s, \"name\": ", correct ? "true" : "false");
  print_json_string(p.name);
  printf(", \"cc\": \"cc%d%d\", \"elements\": %zu, \"bytes_per_array\": %zu, \"reps\": %d, "
         "\"copy_GBps\": %.1f, \"triad_GBps\": %.1f, \"copy_ms\": %.4f, \"triad_ms\": %.4f, "
         "\"correct\": %s, \"runtime_version\": %d, \"driver_version\": %d}\n",
         p.major, p.minor, n, bytes, reps, copy_gbs, triad_gbs, best_copy, best_triad,
         correct ? "true" : "false", runtime, driver);
  return correct ? 0 : 4;
}

}  // namespace

int main(int argc, char** argv) {
  bool want_query = false;
  size_t n = (size_t)1 << 27;  // 1 GiB per array of doubles: far beyond any cache
  int reps = 20, device = 0;
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    if (strcmp(arg, "--query") == 0) {
      want_query = true;
    } else if (strcmp(arg, "--elements") == 0 && i + 1 < argc) {
      char* end = nullptr;
      unsigned long long v = strtoull(argv[++i], &end, 10);
      if (*end != '\0' || v < 1024) return usage(argv[0]);
      n = (size_t)v;
    } else if (strcmp(arg, "--reps") == 0 && i + 1 < argc) {
      reps = atoi(argv[++i]);
      if (reps < 1 || reps > 10000) return usage(argv[0]);
    } else if (strcmp(arg, "--device") == 0 && i + 1 < argc) {
      device = atoi(argv[++i]);
    } else {
      return usage(argv[0]);
    }
  }
  return want_query ? query(device) : bandwidth(device, n, reps);
}
