// Depthwise 2-D convolution on CPU for Paddle: NCHW float32, one square K x K filter per
// channel, no bias; forward, input gradient and weight gradient.
//
// Each plane is first copied into a buffer with its zero padding around it, split into
// stride x stride phases when the stride is above 1 (see PhaseLayout). Every filter tap
// then reads the plane at one fixed offset: the forward pass sums all K * K taps of 8
// outputs in a register and stores them once, and each weight-gradient tap is one long
// dot product. The input gradient (a transposed convolution) is the same kind of sum per
// phase (see TransposedPlan). Rows of any width, even 7, run as whole vectors.
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

// GCC/Clang vector of 8 floats: one AVX2 register with -mavx2, two NEON registers on
// aarch64, plain SSE otherwise.
constexpr int64_t kLanes = 8;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {  // unaligned
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The padded-phase layout. The plane is copied into a buffer with its zero padding around
// it and, for stride s > 1, split into s x s phases: phase (a, b) holds padded rows
// a, a + s, ... and columns b, b + s, .... Then tap (kh, kw) of output (oh, o) reads element
// oh * row_stride + o + tap_offset[tap] for every output: one fixed offset per tap, and
// output rows laid out at row_stride run as one long vector loop (columns past out_w are
// scratch; a zero output gradient there cancels their reads in the weight gradient).
struct PhaseLayout {
  int64_t rows, row_stride, phase_size;  // of one phase
  int64_t size;                          // floats of all phases plus slack for vector reads
  std::vector<int64_t> tap_offset;       // per tap kh * K + kw
};

PhaseLayout MakePhaseLayout(const Shape& s) {
  const int64_t st = s.stride;
  PhaseLayout layout{(s.in_h + 2 * s.pad + st - 1) / st, (s.in_w + 2 * s.pad + st - 1) / st,
                     0, 0, std::vector<int64_t>(s.kernel * s.kernel)};
  layout.phase_size = layout.rows * layout.row_stride;
  layout.size = st * st * layout.phase_size + layout.row_stride + kLanes;
  for (int64_t kh = 0; kh < s.kernel; ++kh) {
    for (int64_t kw = 0; kw < s.kernel; ++kw) {
      const int64_t r = kh * s.dilation, c = kw * s.dilation;
      layout.tap_offset[kh * s.kernel + kw] = ((r % st) * st + c % st) * layout.phase_size +
                                              r / st * layout.row_stride + c / st;
    }
  }
  return layout;
}

// Copies an h x w plane into `out` from row `top`, column `left` on, with row stride
// `row_stride`. The rest of `out` keeps its zeros (buffers are zeroed once per thread).
void CopyIntoRows(const float* in, int64_t h, int64_t w, int64_t top, int64_t left,
                  int64_t row_stride, float* out) {
  for (int64_t r = 0; r < h; ++r)
    std::memcpy(out + (top + r) * row_stride + left, in + r * w, w * sizeof(float));
}

// Calls move(plane_index, phase_index) for every input element: where it sits in the
// plain plane and in the padded-phase layout. (With stride 1 the callers copy whole rows.)
template <typename Move>
void ForEachPhaseElement(const Shape& s, const PhaseLayout& layout, Move move) {
  const int64_t st = s.stride;
  for (int64_t r = 0; r < s.in_h; ++r) {
    const int64_t pr = r + s.pad;
    const int64_t row = (pr % st) * st * layout.phase_size + pr / st * layout.row_stride;
    for (int64_t c0 = 0; c0 < st; ++c0) {  // input columns c0, c0 + st, ... share a phase
      const int64_t phase_row = row + (c0 + s.pad) % st * layout.phase_size;
      for (int64_t c = c0, j = (c0 + s.pad) / st; c < s.in_w; c += st, ++j)
        move(r * s.in_w + c, phase_row + j);
    }
  }
}

// The input plane into its padded-phase layout (padding positions keep their zeros).
void FillPhases(const float* in, const Shape& s, const PhaseLayout& layout, float* out) {
  if (s.stride == 1) return CopyIntoRows(in, s.in_h, s.in_w, s.pad, s.pad, layout.row_stride, out);
  ForEachPhaseElement(s, layout, [&](int64_t i, int64_t j) { out[j] = in[i]; });
}

// The inverse: a plane in padded-phase layout back to plain rows, padding dropped.
void ReadPhases(const float* in, const Shape& s, const PhaseLayout& layout, float* out) {
  if (s.stride == 1) {
    for (int64_t r = 0; r < s.in_h; ++r)
      std::memcpy(out + r * s.in_w, in + (r + s.pad) * layout.row_stride + s.pad,
                  s.in_w * sizeof(float));
    return;
  }
  ForEachPhaseElement(s, layout, [&](int64_t i, int64_t j) { out[i] = in[j]; });
}

// y[i] = sum over t of weight[t] * src[i + offset[t]], for i < n rounded up to whole
// vectors, summed in a register per kLanes outputs. T: the tap count at compile time (the
// loop over taps unrolls), 0 if not.
template <int T>
void SumTaps(const float* src, const float* weight, const int64_t* offset, int64_t taps,
             int64_t n, float* y) {
  const int64_t count = T > 0 ? T : taps;
  for (int64_t i = 0; i < n; i += kLanes) {
    Vec acc = {};
    for (int64_t t = 0; t < count; ++t) acc += weight[t] * Load(src + i + offset[t]);
    std::memcpy(y + i, &acc, sizeof acc);
  }
}

void SumTapsAnyCount(const float* src, const float* weight, const int64_t* offset,
                     int64_t taps, int64_t n, float* y) {
  switch (taps) {  // MnasNet's 3x3 and 5x5 filters at stride 1
    case 9: return SumTaps<9>(src, weight, offset, taps, n, y);
    case 25: return SumTaps<25>(src, weight, offset, taps, n, y);
    default: return SumTaps<0>(src, weight, offset, taps, n, y);
  }
}

// out_plane = depthwise conv of in_plane. `phases` and `y` are per-thread scratch of
// layout.size floats; phases' padding positions must be zero.
void ForwardPlane(const float* in, const float* filter, const Shape& s,
                  const PhaseLayout& layout, float* phases, float* y, float* out) {
  FillPhases(in, s, layout, phases);
  SumTapsAnyCount(phases, filter, layout.tap_offset.data(), s.kernel * s.kernel,
                  s.out_h * layout.row_stride, y);
  for (int64_t r = 0; r < s.out_h; ++r)
    std::memcpy(out + r * s.out_w, y + r * layout.row_stride, s.out_w * sizeof(float));
}

// The input gradient is a transposed convolution. Phase (a, b) of the padded input gradient
// gets, from each tap whose (kh * dilation, kw * dilation) falls in that phase, the tap's
// weight times the output gradient shifted by the tap's position in phase units. With the
// output gradient placed at row `top`, column `left` of a zero buffer at the phase row
// stride (the largest shifts), every shift is again one fixed forward offset, and the
// row ends that wrap read zeros.
struct TransposedPlan {
  int64_t top, left, size;              // grad_out's place in its buffer; buffer floats
  std::vector<int64_t> begin;           // phase ph has entries [begin[ph], begin[ph + 1])
  std::vector<int64_t> tap, offset;     // per entry: the filter tap and where it reads
};

TransposedPlan MakeTransposedPlan(const Shape& s, const PhaseLayout& layout) {
  const int64_t st = s.stride, rs = layout.row_stride, reach = (s.kernel - 1) * s.dilation / st;
  TransposedPlan plan{reach, reach, (layout.rows + reach + 1) * rs + reach + 2 * kLanes,
                      {0}, {}, {}};
  for (int64_t phase = 0; phase < st * st; ++phase) {
    for (int64_t kh = 0; kh < s.kernel; ++kh) {
      for (int64_t kw = 0; kw < s.kernel; ++kw) {
        const int64_t r = kh * s.dilation, c = kw * s.dilation;
        if ((r % st) * st + c % st != phase) continue;
        plan.tap.push_back(kh * s.kernel + kw);
        plan.offset.push_back((plan.top - r / st) * rs + plan.left - c / st);
      }
    }
    plan.begin.push_back(plan.tap.size());
  }
  return plan;
}

// grad_in of one plane from its output gradient, already placed in `shifted_dy` (see
// TransposedPlan). `weight` (K * K floats) and `phases` (layout.size) are scratch.
void InputGradPlane(const float* shifted_dy, const float* filter, const Shape& s,
                    const PhaseLayout& layout, const TransposedPlan& plan, float* weight,
                    float* phases, float* grad_in) {
  for (size_t e = 0; e < plan.tap.size(); ++e) weight[e] = filter[plan.tap[e]];
  // Phases in order: a phase's last vector spills into the next one, computed after it.
  for (int64_t phase = 0; phase + 1 < static_cast<int64_t>(plan.begin.size()); ++phase) {
    const int64_t b = plan.begin[phase];
    SumTapsAnyCount(shifted_dy, weight + b, plan.offset.data() + b, plan.begin[phase + 1] - b,
                    layout.phase_size, phases + phase * layout.phase_size);
  }
  ReadPhases(phases, s, layout, grad_in);
}

// out[g] += sum over i < n of dy[i] * x[i + offset[g]] for g < G, in G vector accumulators.
template <int G>
void DotTaps(const float* dy, const float* x, int64_t n, const int64_t* offset, float* out) {
  Vec acc[G] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec d = Load(dy + i);
    for (int g = 0; g < G; ++g) acc[g] += d * Load(x + i + offset[g]);
  }
  for (int g = 0; g < G; ++g) {
    float sum = 0.0f;
    for (int64_t lane = 0; lane < kLanes; ++lane) sum += acc[g][lane];
    for (int64_t j = i; j < n; ++j) sum += dy[j] * x[j + offset[g]];
    out[g] += sum;
  }
}

// grad_filter += the weight gradient of one plane: x in its padded-phase layout, grad_out
// at layout.row_stride with zeros past out_w.
void FilterGradPlane(const float* phases, const float* strided_dy, const Shape& s,
                     const PhaseLayout& layout, float* grad_filter) {
  const int64_t n = s.out_h * layout.row_stride, taps = s.kernel * s.kernel;
  const int64_t* offset = layout.tap_offset.data();
  for (int64_t t = 0; t < taps;) {  // up to 5 taps per pass, each in its own accumulator
    const int64_t group = std::min<int64_t>(5, taps - t);
    switch (group) {
      case 5: DotTaps<5>(strided_dy, phases, n, offset + t, grad_filter + t); break;
      case 4: DotTaps<4>(strided_dy, phases, n, offset + t, grad_filter + t); break;
      case 3: DotTaps<3>(strided_dy, phases, n, offset + t, grad_filter + t); break;
      case 2: DotTaps<2>(strided_dy, phases, n, offset + t, grad_filter + t); break;
      default: DotTaps<1>(strided_dy, phases, n, offset + t, grad_filter + t); break;
    }
    t += group;
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
  const PhaseLayout layout = MakePhaseLayout(s);
#pragma omp parallel
  {
    std::vector<float> phases(layout.size, 0.0f), y(layout.size);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      ForwardPlane(xd + p * s.in_h * s.in_w, fd + (p % s.channels) * s.kernel * s.kernel, s,
                   layout, phases.data(), y.data(), od + p * s.out_h * s.out_w);
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
  const PhaseLayout layout = MakePhaseLayout(s);
  const TransposedPlan plan = MakeTransposedPlan(s, layout);
#pragma omp parallel
  {
    std::vector<float> phases(layout.size), weight(taps);
    std::vector<float> shifted_dy(plan.size, 0.0f), strided_dy(layout.size, 0.0f);
    // Input gradient: one plane per task.
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.batch * s.channels; ++p) {
      CopyIntoRows(gd + p * plane_out, s.out_h, s.out_w, plan.top, plan.left,
                   layout.row_stride, shifted_dy.data());
      InputGradPlane(shifted_dy.data(), fd + (p % s.channels) * taps, s, layout, plan,
                     weight.data(), phases.data(), gxd + p * plane_in);
    }
    // Filter gradient: one channel (all of the batch) per task.
    std::fill(phases.begin(), phases.end(), 0.0f);  // its padding must read as zeros now
#pragma omp for schedule(static)
    for (int64_t c = 0; c < s.channels; ++c) {
      float* gf = gfd + c * taps;
      std::fill(gf, gf + taps, 0.0f);
      for (int64_t n = 0; n < s.batch; ++n) {
        const int64_t p = n * s.channels + c;
        FillPhases(xd + p * plane_in, s, layout, phases.data());
        CopyIntoRows(gd + p * plane_out, s.out_h, s.out_w, 0, 0, layout.row_stride,
                     strided_dy.data());
        FilterGradPlane(phases.data(), strided_dy.data(), s, layout, gf);
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
