// Depthwise 3x3 convolution (groups == channels), padding 1, stride 1 or 2, NCHW float32, for
// MindSpore on CPU as ops.Custom(func_type="aot") kernels: forward, gradient w.r.t. the input,
// gradient w.r.t. the filter. Built and loaded by cpu_depthwise.py; see there for why it exists.
//
// Every (n, c) plane is done on its own: it is copied into a zero-bordered buffer first, so that the
// inner loops have no border tests and the compiler vectorises them. For stride 2 the buffer keeps
// every row de-interleaved (even columns, then odd columns) so that the strided reads become
// contiguous ones.
//
// Single-threaded on purpose. MindSpore calls these kernels from its own worker threads, beside its
// other kernels and the data pipeline; an OpenMP version (threads over N*C) leaves its idle team
// spin-waiting on the cores those need: on 2 cores a digits training runs at 265 img/s with it, 810
// without, and the 224x224 train step at 9.8 against 12.3 images per CPU-second. The work is
// memory-bound too: the baseline x86-64 build (SSE2) is as fast as an AVX2/FMA one, so it is built
// without -march flags and runs on any CPU of the architecture.
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

struct Dims {
  int64_t n, c, h, w;  // input
  int64_t ho, wo;      // output
};

// Zero-bordered copy of one H x W plane. Row r of the buffer is input row r-1 (rows 0 and H+1 are
// zero); within a row, padded column j is input column j-1. Stride 1 stores the padded row as is;
// stride 2 stores even padded columns in [0, half) and odd ones in [half, 2*half).
template <int S>
struct Padded {
  int64_t h, w, half, stride;
  std::vector<float> buf;

  Padded(int64_t h_, int64_t w_) : h(h_), w(w_), half((w_ + 3) / 2) {
    stride = S == 1 ? w + 2 : 2 * half;
    buf.assign((h + 2) * stride, 0.0f);
  }

  void load(const float *x) {
    for (int64_t r = 0; r < h; ++r) {
      const float *src = x + r * w;
      float *dst = buf.data() + (r + 1) * stride;
      if (S == 1) {
        std::memcpy(dst + 1, src, w * sizeof(float));
      } else {
        float *even = dst, *odd = dst + half;
        for (int64_t k = 1; 2 * k - 1 < w; ++k) even[k] = src[2 * k - 1];
        for (int64_t k = 0; 2 * k < w; ++k) odd[k] = src[2 * k];
      }
    }
  }

  // The three column taps of padded row r: value of tap kw at output column o is tap[kw][o].
  void taps(int64_t r, const float *tap[3]) const {
    const float *row = buf.data() + r * stride;
    if (S == 1) {
      tap[0] = row, tap[1] = row + 1, tap[2] = row + 2;
    } else {
      tap[0] = row, tap[1] = row + half, tap[2] = row + 1;
    }
  }
};

// y[o][p] = sum_{kh,kw} w[kh][kw] * padded[S*o + kh][S*p + kw]
template <int S>
void correlate(const Padded<S> &in, const float *w, float *__restrict y, int64_t ho, int64_t wo) {
  for (int64_t o = 0; o < ho; ++o) {
    const float *t0[3], *t1[3], *t2[3];
    in.taps(S * o, t0);
    in.taps(S * o + 1, t1);
    in.taps(S * o + 2, t2);
    float *out = y + o * wo;
    for (int64_t p = 0; p < wo; ++p) {
      out[p] = w[0] * t0[0][p] + w[1] * t0[1][p] + w[2] * t0[2][p] + w[3] * t1[0][p] + w[4] * t1[1][p] +
               w[5] * t1[2][p] + w[6] * t2[0][p] + w[7] * t2[1][p] + w[8] * t2[2][p];
    }
  }
}

// Gradient w.r.t. the input for stride 2. Input row i gets dy row (i+1-kh)/2 for the kh of the right
// parity: even i from kh=1, odd i from kh=0 and kh=2; the same for columns. `d` is dy zero-padded
// by one (stride-1 layout), so d row a+1 is dy row a.
void grad_input_s2(const Padded<1> &d, const float *w, float *__restrict dx, int64_t h, int64_t wd,
                             float *__restrict even, float *__restrict odd) {
  const int64_t nb = (wd + 1) / 2;  // column pairs (2b, 2b+1)
  for (int64_t i = 0; i < h; ++i) {
    const int64_t a = i / 2;
    // (dy row in d, kernel row) pairs that reach input row i
    const float *rows[2];
    const float *wk[2];
    int nr;
    if (i % 2 == 0) {
      rows[0] = d.buf.data() + (a + 1) * d.stride, wk[0] = w + 3, nr = 1;
    } else {
      rows[0] = d.buf.data() + (a + 2) * d.stride, wk[0] = w + 0;
      rows[1] = d.buf.data() + (a + 1) * d.stride, wk[1] = w + 6, nr = 2;
    }
    for (int64_t b = 0; b < nb; ++b) even[b] = odd[b] = 0.0f;
    for (int r = 0; r < nr; ++r) {
      const float *row = rows[r], *k = wk[r];
      for (int64_t b = 0; b < nb; ++b) {
        even[b] += k[1] * row[b + 1];
        odd[b] += k[0] * row[b + 2] + k[2] * row[b + 1];
      }
    }
    float *out = dx + i * wd;
    for (int64_t b = 0; 2 * b < wd; ++b) out[2 * b] = even[b];
    for (int64_t b = 0; 2 * b + 1 < wd; ++b) out[2 * b + 1] = odd[b];
  }
}

// dw[kh][kw] += sum_{o,p} dy[o][p] * padded[S*o + kh][S*p + kw], in double across rows.
template <int S>
void grad_filter_plane(const Padded<S> &in, const float *dy, int64_t ho, int64_t wo, double *dw) {
  for (int64_t o = 0; o < ho; ++o) {
    const float *t0[3], *t1[3], *t2[3];
    in.taps(S * o, t0);
    in.taps(S * o + 1, t1);
    in.taps(S * o + 2, t2);
    const float *g = dy + o * wo;
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, a8 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4, a5, a6, a7, a8)
    for (int64_t p = 0; p < wo; ++p) {
      const float v = g[p];
      a0 += v * t0[0][p], a1 += v * t0[1][p], a2 += v * t0[2][p];
      a3 += v * t1[0][p], a4 += v * t1[1][p], a5 += v * t1[2][p];
      a6 += v * t2[0][p], a7 += v * t2[1][p], a8 += v * t2[2][p];
    }
    dw[0] += a0, dw[1] += a1, dw[2] += a2, dw[3] += a3, dw[4] += a4;
    dw[5] += a5, dw[6] += a6, dw[7] += a7, dw[8] += a8;
  }
}

template <int S>
void forward(const float *x, const float *w, float *y, const Dims &d) {
  Padded<S> pad(d.h, d.w);
  for (int64_t nc = 0; nc < d.n * d.c; ++nc) {
    pad.load(x + nc * d.h * d.w);
    correlate<S>(pad, w + (nc % d.c) * 9, y + nc * d.ho * d.wo, d.ho, d.wo);
  }
}

template <int S>
void grad_input(const float *dy, const float *w, float *dx, const Dims &d) {
  Padded<1> pad(d.ho, d.wo);
  std::vector<float> even(d.wo + 2), odd(d.wo + 2);
  for (int64_t nc = 0; nc < d.n * d.c; ++nc) {
    pad.load(dy + nc * d.ho * d.wo);
    const float *k = w + (nc % d.c) * 9;
    float *out = dx + nc * d.h * d.w;
    if (S == 1) {  // a stride-1 correlation of dy with the kernel turned by 180 degrees
      const float flipped[9] = {k[8], k[7], k[6], k[5], k[4], k[3], k[2], k[1], k[0]};
      correlate<1>(pad, flipped, out, d.h, d.w);
    } else {
      grad_input_s2(pad, k, out, d.h, d.w, even.data(), odd.data());
    }
  }
}

template <int S>
void grad_filter(const float *dy, const float *x, float *dw, const Dims &d) {
  std::vector<double> sum(d.c * 9, 0.0);  // double: a channel sums N*Ho*Wo products
  Padded<S> pad(d.h, d.w);
  for (int64_t nc = 0; nc < d.n * d.c; ++nc) {
    pad.load(x + nc * d.h * d.w);
    grad_filter_plane<S>(pad, dy + nc * d.ho * d.wo, d.ho, d.wo, sum.data() + (nc % d.c) * 9);
  }
  for (int64_t i = 0; i < d.c * 9; ++i) dw[i] = static_cast<float>(sum[i]);
}

// Checks what MindSpore hands over; returns the dims or false.
bool dims_of(int nparam, int expected, int *ndims, int64_t **shapes, const char **dtypes, int x_index,
             int y_index, Dims *d) {
  if (nparam != expected) return false;
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  if (ndims[x_index] != 4 || ndims[y_index] != 4) return false;
  const int64_t *xs = shapes[x_index], *ys = shapes[y_index];
  *d = Dims{xs[0], xs[1], xs[2], xs[3], ys[2], ys[3]};
  return ys[0] == xs[0] && ys[1] == xs[1];
}

}  // namespace

// Exported kernels, MindSpore's aot signature. Inputs then outputs in params; 0 means success.
// forward:     (x[N,C,H,W], w[C,1,3,3])         -> y[N,C,Ho,Wo]
// grad_input:  (dy[N,C,Ho,Wo], w[C,1,3,3], x)   -> dx[N,C,H,W]   (x only gives the shape)
// grad_filter: (dy[N,C,Ho,Wo], x[N,C,H,W])      -> dw[C,1,3,3]
#define DW_EXPORT(S)                                                                                      \
  extern "C" int dw3x3_forward_s##S(int nparam, void **params, int *ndims, int64_t **shapes,              \
                                    const char **dtypes, void *, void *) {                                \
    Dims d;                                                                                               \
    if (!dims_of(nparam, 3, ndims, shapes, dtypes, 0, 2, &d)) return 1;                                   \
    forward<S>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),              \
               static_cast<float *>(params[2]), d);                                                       \
    return 0;                                                                                             \
  }                                                                                                       \
  extern "C" int dw3x3_grad_input_s##S(int nparam, void **params, int *ndims, int64_t **shapes,           \
                                       const char **dtypes, void *, void *) {                             \
    Dims d;                                                                                               \
    if (!dims_of(nparam, 4, ndims, shapes, dtypes, 3, 0, &d)) return 1;                                   \
    grad_input<S>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),           \
                  static_cast<float *>(params[3]), d);                                                    \
    return 0;                                                                                             \
  }                                                                                                       \
  extern "C" int dw3x3_grad_filter_s##S(int nparam, void **params, int *ndims, int64_t **shapes,          \
                                        const char **dtypes, void *, void *) {                            \
    Dims d;                                                                                               \
    if (!dims_of(nparam, 3, ndims, shapes, dtypes, 1, 0, &d)) return 1;                                   \
    grad_filter<S>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),          \
                   static_cast<float *>(params[2]), d);                                                   \
    return 0;                                                                                             \
  }

DW_EXPORT(1)
DW_EXPORT(2)
