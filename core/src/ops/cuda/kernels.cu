// The op layer's element-wise CUDA kernels (f32), compiled to PTX by
// core/build.rs when the `cuda` feature is on and loaded through Candle's
// CudaDevice. Each mirrors the CPU kernel of the same name in
// core/src/ops/{fused,fir,conv}.rs; reductions accumulate in double, as the
// CPU kernels do. Sizes: `n` counts elements (64-bit), `hw` a plane.
//
// Launch shapes (see core/src/ops/cuda/mod.rs): element-wise kernels use a
// grid-stride loop over `n`; the per-plane reductions use one block of
// REDUCE_THREADS threads per plane.

#define REDUCE_THREADS 256
#define MAX_TAPS 8

typedef unsigned long long u64;

__device__ __forceinline__ u64 global_index() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ u64 grid_stride() {
    return (u64)gridDim.x * blockDim.x;
}

// Sum of `v` over the block (REDUCE_THREADS threads), in thread 0.
__device__ double block_sum(double v) {
    __shared__ double partial[REDUCE_THREADS];
    partial[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = REDUCE_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    return partial[0];
}

// out[b, c] = x[b or 0, c] * s[b, c] over planes of `hw`; `bx` is x's batch.
extern "C" __global__ void lsd_modulate_f32(
    const float* x, const float* s, float* out, unsigned int bx, unsigned int c, u64 hw, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        u64 p = i / hw, j = i % hw;
        u64 px = bx == 1 ? p % c : p;
        out[i] = x[px * hw + j] * s[p];
    }
}

// out[0, c] = sum_b g[b, c] * s[b, c]; n = c * hw.
extern "C" __global__ void lsd_modulate_sum_f32(
    const float* g, const float* s, float* out, unsigned int b, unsigned int c, u64 hw, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        u64 ci = i / hw, j = i % hw;
        float acc = 0.0f;
        for (unsigned int bi = 0; bi < b; ++bi) {
            u64 p = (u64)bi * c + ci;
            acc += g[p * hw + j] * s[p];
        }
        out[i] = acc;
    }
}

// out[p] = sum_j g[p, j] * x[p or p % c, j]; one block per plane p.
extern "C" __global__ void lsd_channel_dot_f32(
    const float* g, const float* x, float* out, unsigned int bx, unsigned int c, u64 hw) {
    u64 p = blockIdx.x;
    u64 px = bx == 1 ? p % c : p;
    const float* gp = g + p * hw;
    const float* xp = x + px * hw;
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < hw; j += blockDim.x) acc += (double)(gp[j] * xp[j]);
    double total = block_sum(acc);
    if (threadIdx.x == 0) out[p] = (float)total;
}

// The styled conv's epilogue constants and its pre-activation, shared by
// the forward and the backward kernels.
struct Epilogue {
    const float* demod;   // [B*C]
    const float* noise;   // [1 or B, 1, H, W] or unused
    const float* bias;    // [C]
    float noise_weight;
    unsigned int has_noise, noise_batch, c;
    u64 hw;
};

__device__ __forceinline__ float pre_activation(const Epilogue& e, float y, u64 p, u64 j) {
    // The stock order: ((y * d) + noise * w) + bias.
    float z = y * e.demod[p];
    if (e.has_noise) {
        u64 np = e.noise_batch == 1 ? 0 : p / e.c;
        z = z + e.noise[np * e.hw + j] * e.noise_weight;
    }
    return z + e.bias[p % e.c];
}

#define SLOPE 0.2f
#define GAIN 1.4142135623730951f

// lrelu(y * demod + noise * w + bias, 0.2) * sqrt(2), clamped to +-clamp
// when has_clamp.
extern "C" __global__ void lsd_epilogue_f32(
    const float* ys, const float* demod, const float* noise, const float* bias, float* out,
    float noise_weight, unsigned int has_noise, unsigned int noise_batch, unsigned int c, u64 hw,
    unsigned int has_clamp, float clamp, u64 n) {
    Epilogue e = {demod, noise, bias, noise_weight, has_noise, noise_batch, c, hw};
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        u64 p = i / hw, j = i % hw;
        float z = pre_activation(e, ys[i], p, j);
        float y = (z >= 0.0f ? z : z * SLOPE) * GAIN;
        if (has_clamp) y = fminf(fmaxf(y, -clamp), clamp);
        out[i] = y;
    }
}

// The epilogue's backward, one block per plane p: out[0 .. B*C*H*W] is the
// gradient of ys, out[B*C*H*W + p] the gradient of demod[p]. Zero gradient
// where the clamp cut.
extern "C" __global__ void lsd_epilogue_backward_f32(
    const float* ys, const float* demod, const float* noise, const float* bias, const float* grad,
    float* out, float noise_weight, unsigned int has_noise, unsigned int noise_batch, unsigned int c,
    u64 hw, unsigned int has_clamp, float clamp, u64 planes) {
    Epilogue e = {demod, noise, bias, noise_weight, has_noise, noise_batch, c, hw};
    u64 p = blockIdx.x;
    float d = demod[p];
    double acc = 0.0;
    for (u64 j = threadIdx.x; j < hw; j += blockDim.x) {
        u64 i = p * hw + j;
        float yv = ys[i], gv = grad[i];
        float z = pre_activation(e, yv, p, j);
        float y, dz;
        if (z >= 0.0f) {
            y = z * GAIN;
            dz = gv * GAIN;
        } else {
            y = z * SLOPE * GAIN;
            dz = gv * GAIN * SLOPE;
        }
        if (has_clamp && (y > clamp || y < -clamp)) dz = 0.0f;
        out[i] = dz * d;
        acc += (double)(dz * yv);
    }
    double total = block_sum(acc);
    if (threadIdx.x == 0) out[planes * hw + p] = (float)total;
}

// y[b, c, :, :] += bias[c], in place; n = B*C*hw.
extern "C" __global__ void lsd_channel_bias_f32(float* y, const float* bias, unsigned int c, u64 hw, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) y[i] += bias[(i / hw) % c];
}

struct Taps {
    float t[MAX_TAPS];
};

// One axis of upfirdn: the value at output m is sum_t taps[t] * z[down*m + t - pad0],
// where z is the input with up-1 zeros after every sample, zero outside.
// Returns the first tap and input index that meet a real sample, and the count.
__device__ __forceinline__ int axis_plan(int m, int ntaps, int up, int down, int pad0, int len, int* t0, int* i0) {
    int base = down * m - pad0;
    int t = base < 0 ? -base : 0;
    int r = (base + t) % up;
    if (r != 0) t += up - r;
    if (t >= ntaps) return 0;
    *t0 = t;
    *i0 = (base + t) / up;
    int count = (ntaps - 1 - t) / up + 1;
    return min(count, len - *i0);
}

// upfirdn2d per plane, the width filtered first: out[p, my, mx] =
// sum_ty taps[ty] * (sum_tx taps[tx] * z[p, row(my, ty), col(mx, tx)]).
// n = planes * ho * wo.
extern "C" __global__ void lsd_upfirdn2d_f32(
    const float* x, float* out, Taps taps, int ntaps, int up, int down, int pad0,
    int h, int w, int ho, int wo, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        u64 p = i / ((u64)ho * wo);
        int rem = (int)(i % ((u64)ho * wo));
        int my = rem / wo, mx = rem % wo;
        int ty0, iy0, tx0, ix0;
        int ny = axis_plan(my, ntaps, up, down, pad0, h, &ty0, &iy0);
        int nx = axis_plan(mx, ntaps, up, down, pad0, w, &tx0, &ix0);
        const float* xp = x + p * (u64)h * w;
        float acc = 0.0f;
        for (int a = 0; a < ny; ++a) {
            const float* row = xp + (u64)(iy0 + a) * w + ix0;
            float racc = 0.0f;
            for (int k = 0; k < nx; ++k) racc += taps.t[tx0 + k * up] * row[k];
            acc += taps.t[ty0 + a * up] * racc;
        }
        out[i] = acc;
    }
}
