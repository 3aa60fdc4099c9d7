// Depthwise 2-D convolution on CPU for Paddle: NCHW float32, one square K x K filter per
// channel, no bias; forward, input gradient and weight gradient.
//
// Stride 1 (most layers): the plane is copied into a buffer with its zero padding around
// it, so each filter tap reads the whole plane at one fixed offset. The forward pass then
// sums all taps of kLanes outputs in a register and stores them once; the input gradient
// is the same computation on the output gradient with the filter flipped; each weight
// gradient is one long dot product. Rows of any width, even 7, run as whole vectors.
//
// Stride s > 1: an input row is first split into s "phases" (columns r, r + s, r + 2s,
// ...), so that input column s * o + t is element o + floor(t / s) of phase t mod s:
// contiguous again. Each kernel tap is then an axpy or a dot product over a row.
//
// Loops over columns vectorise (AVX2/FMA or NEON, see the build flags in __init__.py).
// Threads (OpenMP) take whole channel planes, so no two threads write the same memory.

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

struct Shape {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  int64_t kernel, stride, pad, dilation;
};

int64_t OutSize(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Output columns [*lo, *hi) whose input column o * stride + offset lies inside [0, in_w).
void ValidColumns(int64_t offset, const Shape& s, int64_t* lo, int64_t* hi) {
  int64_t first = offset >= 0 ? 0 : (-offset + s.stride - 1) / s.stride;
  int64_t last = s.in_w - 1 - offset;  // largest o * stride allowed
  int64_t end = last >= 0 ? last / s.stride + 1 : 0;
  *lo = std::min(first, s.out_w);
  *hi = std::max(*lo, std::min(end, s.out_w));
}

// Columns per phase when a row of in_w values is split into `stride` phases.
int64_t PhaseWidth(const Shape& s) { return (s.in_w + s.stride - 1) / s.stride; }

// Split every row of an H x W plane into phases: out[(row * stride + r) * pw + j] =
// in[row * W + j * stride + r]. Unused tail slots are zero.
void SplitPlane(const float* in, const Shape& s, float* out) {
  const int64_t pw = PhaseWidth(s);
  for (int64_t row = 0; row < s.in_h; ++row) {
    const float* src = in + row * s.in_w;
    float* dst = out + row * s.stride * pw;
    std::fill(dst, dst + s.stride * pw, 0.0f);
    for (int64_t col = 0; col < s.in_w; ++col) dst[(col % s.stride) * pw + col / s.stride] = src[col];
  }
}

// The inverse of SplitPlane (phase layout back to plain rows).
void JoinPlane(const float* in, const Shape& s, float* out) {
  const int64_t pw = PhaseWidth(s);
  for (int64_t row = 0; row < s.in_h; ++row) {
    const float* src = in + row * s.stride * pw;
    float* dst = out + row * s.in_w;
    for (int64_t col = 0; col < s.in_w; ++col) dst[col] = src[(col % s.stride) * pw + col / s.stride];
  }
}

// Where tap column kw reads: the row pointer offset (in the phase layout when stride > 1)
// such that element o is input column o * stride + kw * dilation - pad.
int64_t TapOffset(int64_t kw, const Shape& s) {
  const int64_t t = kw * s.dilation - s.pad;
  if (s.stride == 1) return t;
  const int64_t q = FloorDiv(t, s.stride);
  return (t - q * s.stride) * PhaseWidth(s) + q;
}

int64_t RowLength(const Shape& s) { return s.stride == 1 ? s.in_w : s.stride * PhaseWidth(s); }

// Calls body(oh, ih, lo, hi, offset, tap) for every output row oh and kernel tap
// (kh, kw) whose input row ih exists: output columns [lo, hi) meet input columns at
// offset + o of row ih (see TapOffset), weighted by filter[tap].
template <typename Body>
void ForEachRowTap(const Shape& s, Body body) {
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    for (int64_t kh = 0; kh < s.kernel; ++kh) {
      const int64_t ih = oh * s.stride + kh * s.dilation - s.pad;
      if (ih < 0 || ih >= s.in_h) continue;
      for (int64_t kw = 0; kw < s.kernel; ++kw) {
        int64_t lo, hi;
        ValidColumns(kw * s.dilation - s.pad, s, &lo, &hi);
        body(oh, ih, lo, hi, TapOffset(kw, s), kh * s.kernel + kw);
      }
    }
  }
}

// out_plane = depthwise conv of in_plane, in phase layout (stride > 1).
void ForwardPlane(const float* in, const float* filter, const Shape& s, float* out) {
  const int64_t row_len = RowLength(s);
  std::fill(out, out + s.out_h * s.out_w, 0.0f);
  ForEachRowTap(s, [&](int64_t oh, int64_t ih, int64_t lo, int64_t hi, int64_t offset,
                       int64_t tap) {
    float* y = out + oh * s.out_w;
    const float* x = in + ih * row_len + offset;
    const float w = filter[tap];
#pragma omp simd
    for (int64_t o = lo; o < hi; ++o) y[o] += w * x[o];
  });
}

// grad_in (phase layout when stride > 1) += transposed conv of grad_out.
void InputGradPlane(const float* grad_out, const float* filter, const Shape& s, float* grad_in) {
  const int64_t row_len = RowLength(s);
  ForEachRowTap(s, [&](int64_t oh, int64_t ih, int64_t lo, int64_t hi, int64_t offset,
                       int64_t tap) {
    const float* dy = grad_out + oh * s.out_w;
    float* dx = grad_in + ih * row_len + offset;
    const float w = filter[tap];
#pragma omp simd
    for (int64_t o = lo; o < hi; ++o) dx[o] += w * dy[o];
  });
}

// grad_filter[tap] += sum over the plane of grad_out * the input the tap saw. Products are
// summed per output column into `partial` (vector adds), and reduced once per tap.
void FilterGradPlane(const float* in, const float* grad_out, const Shape& s, float* partial,
                     float* grad_filter) {
  const int64_t row_len = RowLength(s);
  for (int64_t kh = 0; kh < s.kernel; ++kh) {
    for (int64_t kw = 0; kw < s.kernel; ++kw) {
      int64_t lo, hi;
      ValidColumns(kw * s.dilation - s.pad, s, &lo, &hi);
      const int64_t offset = TapOffset(kw, s);
      std::fill(partial, partial + s.out_w, 0.0f);
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const int64_t ih = oh * s.stride + kh * s.dilation - s.pad;
        if (ih < 0 || ih >= s.in_h) continue;
        const float* dy = grad_out + oh * s.out_w;
        const float* x = in + ih * row_len + offset;
#pragma omp simd
        for (int64_t o = lo; o < hi; ++o) partial[o] += dy[o] * x[o];
      }
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t o = lo; o < hi; ++o) acc += partial[o];
      grad_filter[kh * s.kernel + kw] += acc;
    }
  }
}

// GCC/Clang vector of 8 floats: one AVX2 register with -mavx2, two NEON registers on
// aarch64, plain SSE otherwise.
constexpr int64_t kLanes = 8;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {  // unaligned
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The stride-1 layout: `pad` zero rows and columns around the plane, row stride
// in_w + 2 * pad, and slack after the last row for the vectors that run past it.
struct PaddedLayout {
  int64_t row_stride, size;
};

PaddedLayout PadLayout(const Shape& s) {
  const int64_t row_stride = s.in_w + 2 * s.pad, rows = s.in_h + 2 * s.pad;
  return {row_stride, rows * row_stride + s.dilation * (s.kernel - 1) + kLanes};
}

// Copies an h x w plane into `out` from row `top`, column `left` on, with row stride
// `row_stride`. The rest of `out` keeps its zeros (buffers are zeroed once per thread).
void CopyIntoRows(const float* in, int64_t h, int64_t w, int64_t top, int64_t left,
                  int64_t row_stride, float* out) {
  for (int64_t r = 0; r < h; ++r)
    std::memcpy(out + (top + r) * row_stride + left, in + r * w, w * sizeof(float));
}

// y = the taps of the padded input summed per kLanes outputs, out_h rows at the padded row
// stride (columns past out_w are scratch). K: the kernel size at compile time, 0 if not.
template <int K>
void ForwardPadded(const float* padded, const float* filter, const Shape& s,
                   const PaddedLayout& layout, float* y) {
  const int64_t k = K > 0 ? K : s.kernel, n = s.out_h * layout.row_stride;
  const int64_t row_step = s.dilation * layout.row_stride;
  for (int64_t i = 0; i < n; i += kLanes) {
    Vec acc = {};
    for (int64_t kh = 0; kh < k; ++kh) {
      const float* x = padded + i + kh * row_step;
      const float* w = filter + kh * k;
      for (int64_t kw = 0; kw < k; ++kw) acc += w[kw] * Load(x + kw * s.dilation);
    }
    std::memcpy(y + i, &acc, sizeof acc);
  }
}

// out_plane = stride-1 depthwise conv of in_plane. `padded` and `y` are per-thread scratch
// of layout.size floats; padded's border must be zero.
void ForwardStride1(const float* in, const float* filter, const Shape& s,
                    const PaddedLayout& layout, float* padded, float* y, float* out) {
  CopyIntoRows(in, s.in_h, s.in_w, s.pad, s.pad, layout.row_stride, padded);
  switch (s.kernel) {  // MnasNet's sizes get unrolled tap loops
    case 3: ForwardPadded<3>(padded, filter, s, layout, y); break;
    case 5: ForwardPadded<5>(padded, filter, s, layout, y); break;
    default: ForwardPadded<0>(padded, filter, s, layout, y); break;
  }
  for (int64_t r = 0; r < s.out_h; ++r)
    std::memcpy(out + r * s.out_w, y + r * layout.row_stride, s.out_w * sizeof(float));
}

// With stride 1 the input gradient is the forward conv of the output gradient with the
// filter flipped and padding dilation * (K - 1) - pad; this is that conv's shape (input and
// output swap roles). It applies when that padding is not negative.
bool InputGradIsForward(const Shape& s) {
  return s.stride == 1 && s.pad <= s.dilation * (s.kernel - 1);
}

Shape InputGradAsForward(const Shape& s) {
  return Shape{s.batch, s.channels, s.out_h, s.out_w, s.in_h, s.in_w,
               s.kernel, 1, s.dilation * (s.kernel - 1) - s.pad, s.dilation};
}

// out[g] += sum over i < n of dy[i] * x[i + g * step] for g < G, in G vector accumulators.
template <int G>
void DotTaps(const float* dy, const float* x, int64_t n, int64_t step, float* out) {
  Vec acc[G] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec d = Load(dy + i);
    for (int g = 0; g < G; ++g) acc[g] += d * Load(x + i + g * step);
  }
  for (int g = 0; g < G; ++g) {
    float sum = 0.0f;
    for (int64_t lane = 0; lane < kLanes; ++lane) sum += acc[g][lane];
    for (int64_t j = i; j < n; ++j) sum += dy[j] * x[j + g * step];
    out[g] += sum;
  }
}

// grad_filter += stride-1 weight gradient of one plane: x padded, grad_out at the padded
// row stride with zeros past out_w (they cancel the reads that wrap into the next row).
void FilterGradStride1(const float* padded_x, const float* strided_dy, const Shape& s,
                       const PaddedLayout& layout, float* grad_filter) {
  const int64_t n = s.out_h * layout.row_stride;
  for (int64_t kh = 0; kh < s.kernel; ++kh) {
    const float* x = padded_x + kh * s.dilation * layout.row_stride;
    for (int64_t kw = 0; kw < s.kernel;) {  // up to 5 columns of taps per pass
      const int64_t group = std::min<int64_t>(5, s.kernel - kw);
      float* out = grad_filter + kh * s.kernel + kw;
      const float* xk = x + kw * s.dilation;
      switch (group) {
        case 5: DotTaps<5>(strided_dy, xk, n, s.dilation, out); break;
        case 4: DotTaps<4>(strided_dy, xk, n, s.dilation, out); break;
        case 3: DotTaps<3>(strided_dy, xk, n, s.dilation, out); break;
        case 2: DotTaps<2>(strided_dy, xk, n, s.dilation, out); break;
        default: DotTaps<1>(strided_dy, xk, n, s.dilation, out); break;
      }
      kw += group;
    }
  }
}

Shape GetShape(const paddle::Tensor& x, const paddle::Tensor& filter, int stride, int pad,
               int dilation) {
  const auto xs = x.shape();
  const auto fs = filter.shape();
  PD_CHECK(xs.size() == 4, "depthwise_conv2d: input must be NCHW, got rank ", xs.size());
  PD_CHECK(fs.size() == 4 && fs[0] == xs[1] && fs[1] == 1 && fs[2] == fs[3],
           "depthwise_conv2d: filter must be [C, 1, K, K] with C = input channels");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && filter.dtype() == paddle::DataType::FLOAT32,
           "depthwise_conv2d: float32 only");
  PD_CHECK(x.is_cpu() && filter.is_cpu(), "depthwise_conv2d: CPU tensors only");
  PD_CHECK(stride >= 1 && pad >= 0 && dilation >= 1, "depthwise_conv2d: bad attributes");
  Shape s{xs[0], xs[1], xs[2], xs[3], 0, 0, fs[2], stride, pad, dilation};
  s.out_h = OutSize(s.in_h, s.kernel, stride, pad, dilation);
  s.out_w = OutSize(s.in_w, s.kernel, stride, pad, dilation);
  PD_CHECK(s.out_h > 0 && s.out_w > 0, "depthwise_conv2d: the output would be empty");
  return s;
}

}  // namespace

std::vector<paddle::Tensor> DepthwiseConvForward(const paddle::Tensor& x,
                                                 const paddle::Tensor& filter, int stride,
                                                 int padding, int dilation) {
  const Shape s = GetShape(x, filter, stride, padding, dilation);
  auto out = paddle::empty({s.batch, s.channels, s.out_h, s.out_w}, paddle::DataType::FLOAT32,
                           paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* fd = filter.data<float>();
  float* od = out.data<float>();
  const int64_t planes = s.batch * s.channels;
  const PaddedLayout layout = PadLayout(s);
  const bool padded_path = s.stride == 1;
#pragma omp parallel
  {
    std::vector<float> split(padded_path ? 0 : s.in_h * RowLength(s));
    std::vector<float> padded(padded_path ? layout.size : 0, 0.0f);
    std::vector<float> y(padded_path ? layout.size : 0);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const float* in = xd + p * s.in_h * s.in_w;
      const float* f = fd + (p % s.channels) * s.kernel * s.kernel;
      float* out = od + p * s.out_h * s.out_w;
      if (padded_path) {
        ForwardStride1(in, f, s, layout, padded.data(), y.data(), out);
      } else {
        SplitPlane(in, s, split.data());
        ForwardPlane(split.data(), f, s, out);
      }
    }
  }
  return {out};
}

std::vector<paddle::Tensor> DepthwiseConvBackward(const paddle::Tensor& x,
                                                  const paddle::Tensor& filter,
                                                  const paddle::Tensor& grad_out, int stride,
                                                  int padding, int dilation) {
  const Shape s = GetShape(x, filter, stride, padding, dilation);
  auto grad_x = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto grad_filter = paddle::empty(filter.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* fd = filter.data<float>();
  const float* gd = grad_out.data<float>();
  float* gxd = grad_x.data<float>();
  float* gfd = grad_filter.data<float>();
  const int64_t plane_in = s.in_h * s.in_w, plane_out = s.out_h * s.out_w;
  const int64_t taps = s.kernel * s.kernel;
  const bool input_grad_padded = InputGradIsForward(s), filter_grad_padded = s.stride == 1;
  const Shape flipped = InputGradAsForward(s);
  const PaddedLayout flipped_layout = PadLayout(flipped), layout = PadLayout(s);
#pragma omp parallel
  {
    std::vector<float> split(s.stride > 1 ? s.in_h * RowLength(s) : 0);
    std::vector<float> partial(s.out_w), flipped_filter(taps);
    std::vector<float> padded_dy(input_grad_padded ? flipped_layout.size : 0, 0.0f);
    std::vector<float> y(input_grad_padded ? flipped_layout.size : 0);
    std::vector<float> padded_x(filter_grad_padded ? layout.size : 0, 0.0f);
    std::vector<float> strided_dy(filter_grad_padded ? layout.size : 0, 0.0f);
    // Input gradient: one plane per task.
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.batch * s.channels; ++p) {
      const float* f = fd + (p % s.channels) * taps;
      float* dx = gxd + p * plane_in;
      if (input_grad_padded) {
        std::reverse_copy(f, f + taps, flipped_filter.begin());  // flips both axes
        ForwardStride1(gd + p * plane_out, flipped_filter.data(), flipped, flipped_layout,
                       padded_dy.data(), y.data(), dx);
      } else if (s.stride == 1) {
        std::fill(dx, dx + plane_in, 0.0f);
        InputGradPlane(gd + p * plane_out, f, s, dx);
      } else {
        std::fill(split.begin(), split.end(), 0.0f);
        InputGradPlane(gd + p * plane_out, f, s, split.data());
        JoinPlane(split.data(), s, dx);
      }
    }
    // Filter gradient: one channel (all of the batch) per task.
#pragma omp for schedule(static)
    for (int64_t c = 0; c < s.channels; ++c) {
      float* gf = gfd + c * taps;
      std::fill(gf, gf + taps, 0.0f);
      for (int64_t n = 0; n < s.batch; ++n) {
        const int64_t p = n * s.channels + c;
        if (filter_grad_padded) {
          CopyIntoRows(xd + p * plane_in, s.in_h, s.in_w, s.pad, s.pad, layout.row_stride,
                       padded_x.data());
          CopyIntoRows(gd + p * plane_out, s.out_h, s.out_w, 0, 0, layout.row_stride,
                       strided_dy.data());
          FilterGradStride1(padded_x.data(), strided_dy.data(), s, layout, gf);
        } else {
          SplitPlane(xd + p * plane_in, s, split.data());
          FilterGradPlane(split.data(), gd + p * plane_out, s, partial.data(), gf);
        }
      }
    }
  }
  return {grad_x, grad_filter};
}

std::vector<std::vector<int64_t>> DepthwiseConvInferShape(std::vector<int64_t> x_shape,
                                                          std::vector<int64_t> filter_shape,
                                                          int stride, int padding,
                                                          int dilation) {
  const int64_t k = filter_shape[2];
  auto out_size = [&](int64_t in) {
    return in < 0 ? in : OutSize(in, k, stride, padding, dilation);  // -1: dynamic
  };
  return {{x_shape[0], x_shape[1], out_size(x_shape[2]), out_size(x_shape[3])}};
}

std::vector<paddle::DataType> DepthwiseConvInferDtype(paddle::DataType x_dtype,
                                                      paddle::DataType filter_dtype) {
  return {x_dtype};
}

PD_BUILD_OP(ppcls_depthwise_conv2d)
    .Inputs({"X", "Filter"})
    .Outputs({"Out"})
    .Attrs({"stride: int", "padding: int", "dilation: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DepthwiseConvInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DepthwiseConvInferDtype));

PD_BUILD_GRAD_OP(ppcls_depthwise_conv2d)
    .Inputs({"X", "Filter", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Filter")})
    .Attrs({"stride: int", "padding: int", "dilation: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvBackward));
