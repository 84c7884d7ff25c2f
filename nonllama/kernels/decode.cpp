// nonllama's decoding step on CPU: one new position for every row of a batch, from the token
// embedding to the logits, in one call (Decoder.step in nonllama/model.py builds and calls it).
//
// The same computation as Llama.forward for one position (rotate-half rotary embeddings,
// grouped-query attention over the KVCache tensors the prompt's pass filled, SwiGLU), written
// for a single core's memory bandwidth and for few threads:
//
// - Weight matrices are packed once in tiles of 16 output rows, laid out so that a tile is one
//   contiguous run of memory read front to back: fp32 as [k][16] (one 64-byte vector of 16 rows
//   per input value, multiplied by that value broadcast), int8 as [k/4][16][4] (the layout of
//   AVX-512 VNNI's vpdpbusd, 4 input values x 16 rows per instruction). No horizontal sums;
//   the outputs of a tile come out as a vector.
// - Gate and up projections are packed as alternating tiles, so SwiGLU happens as the tiles
//   finish; q, k and v are one matrix; the residual additions happen as wo's and w2's tiles
//   finish.
// - int8 (as llama2.c's runq.c): weights symmetric int8 per group of `group` input values with
//   one float scale per group (nonllama.quantize); each input vector is quantized the same way
//   at every matrix, the products are summed in int32 per group and scaled into float.
//   vpdpbusd multiplies unsigned by signed bytes: the weights are stored plus 128 and the
//   128 x sum of the group's quantized inputs is subtracted, which is exact. (Measured on the
//   15m preset, one AVX-512 core: 1978 tokens/s this way, 1291 with the weights dequantized to
//   float on the fly and float inputs.)
// - Attention reads the cache in place, with a vectorized exp for the softmax.
// - All packed matrices live in one block of memory, in the order a step reads them, on
//   transparent huge pages (Model::gather): 1.45-1.8x on float32 against one tensor each.
// - One OpenMP parallel region per step: the threads split each matrix's tiles and the
//   attention heads, and meet at a barrier (class Barrier) between the phases (6 per layer).
// - Every batch row is computed by the same instructions in the same order whatever the
//   batch size, so identical rows give identical logits.
//
// Without AVX-512 the same layouts are read by plain loops (the compiler vectorizes the float
// ones; int8 there runs at about a quarter of its speed with VNNI).

// ATen and pybind11 only, not <torch/extension.h>: the build takes half the time
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <atomic>
#include <chrono>
#include <climits>
#include <thread>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t TILE = 16;  // output rows per tile
constexpr int CHUNK = 4;      // batch rows that share one pass over a tile

// ----------------------------------------------------------------------------- packed matrices

struct Packed {
  int64_t rows = 0, cols = 0, tiles = 0;
  bool int8 = false;
  int64_t group = 0, groups = 0, g4 = 0;  // int8: group size, groups per row, group rounded up to 4
  at::Tensor w;  // fp32: float [tiles][cols][16]; int8: uint8 [tiles][groups * g4 / 4][16][4]
  at::Tensor s;  // int8: float [tiles][groups][16]

  int64_t kp() const { return groups * g4; }  // int8: input values per row, padded
};

Packed pack_f32(at::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat, "pack_f32: a float32 matrix");
  weight = weight.contiguous();
  Packed p;
  p.rows = weight.size(0), p.cols = weight.size(1), p.tiles = (p.rows + TILE - 1) / TILE;
  p.w = at::zeros({p.tiles, p.cols, TILE}, at::kFloat);
  const float* src = weight.data_ptr<float>();
  float* dst = p.w.data_ptr<float>();
  for (int64_t r = 0; r < p.rows; r++)
    for (int64_t k = 0; k < p.cols; k++)
      dst[((r / TILE) * p.cols + k) * TILE + r % TILE] = src[r * p.cols + k];
  return p;
}

Packed pack_int8(at::Tensor q, at::Tensor scales, int64_t group) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar, "pack_int8: an int8 matrix");
  TORCH_CHECK(group >= 1 && q.size(1) % group == 0, "pack_int8: group size must divide the row length");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == q.size(0) && scales.size(1) == q.size(1) / group &&
                  scales.scalar_type() == at::kFloat,
              "pack_int8: scales (rows, cols / group) float32");
  q = q.contiguous(), scales = scales.contiguous();
  Packed p;
  p.int8 = true;
  p.rows = q.size(0), p.cols = q.size(1), p.tiles = (p.rows + TILE - 1) / TILE;
  p.group = group, p.groups = p.cols / group, p.g4 = (group + 3) / 4 * 4;
  p.w = at::full({p.tiles, p.kp() / 4, TILE, 4}, 128, at::kByte);  // 128: a zero weight
  p.s = at::zeros({p.tiles, p.groups, TILE}, at::kFloat);
  const int8_t* src = q.data_ptr<int8_t>();
  const float* ssrc = scales.data_ptr<float>();
  uint8_t* dst = p.w.data_ptr<uint8_t>();
  float* sdst = p.s.data_ptr<float>();
  const int64_t kp = p.kp();
  for (int64_t r = 0; r < p.rows; r++) {
    const int64_t t = r / TILE, i = r % TILE;
    for (int64_t g = 0; g < p.groups; g++) {
      sdst[(t * p.groups + g) * TILE + i] = ssrc[r * p.groups + g];
      for (int64_t j = 0; j < group; j++) {
        const int64_t k = g * p.g4 + j;  // position in the padded row
        dst[((t * (kp / 4) + k / 4) * TILE + i) * 4 + k % 4] =
            static_cast<uint8_t>(static_cast<int>(src[r * p.cols + g * group + j]) + 128);
      }
    }
  }
  return p;
}

// ----------------------------------------------------------------------------- tile kernels

// out[b][0..16) = rows of the tile . x[b] for the BC batch rows of x (row stride ldx).
// Four partial sums per row over k mod 4, added at the end (the same for every BC).
template <int BC>
inline void tile_f32(const float* __restrict w, const float* __restrict x, int64_t ldx, int64_t K,
                     float* __restrict out) {
#if defined(__AVX512F__)
  __m512 acc[BC][4];
  for (int b = 0; b < BC; b++)
    for (int u = 0; u < 4; u++) acc[b][u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++) {
      const __m512 wv = _mm512_loadu_ps(w + (k + u) * TILE);
#pragma GCC unroll 4
      for (int b = 0; b < BC; b++) acc[b][u] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[b * ldx + k + u]), acc[b][u]);
    }
  }
  for (; k < K; k++) {
    const __m512 wv = _mm512_loadu_ps(w + k * TILE);
    for (int b = 0; b < BC; b++) acc[b][0] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[b * ldx + k]), acc[b][0]);
  }
  for (int b = 0; b < BC; b++)
    _mm512_storeu_ps(out + b * TILE, _mm512_add_ps(_mm512_add_ps(acc[b][0], acc[b][1]),
                                                   _mm512_add_ps(acc[b][2], acc[b][3])));
#else
  float acc[BC][4][TILE] = {};
  int64_t k = 0;
  for (; k + 4 <= K; k += 4)
    for (int u = 0; u < 4; u++)
      for (int b = 0; b < BC; b++) {
        const float xv = x[b * ldx + k + u];
        for (int i = 0; i < TILE; i++) acc[b][u][i] += w[(k + u) * TILE + i] * xv;
      }
  for (; k < K; k++)
    for (int b = 0; b < BC; b++) {
      const float xv = x[b * ldx + k];
      for (int i = 0; i < TILE; i++) acc[b][0][i] += w[k * TILE + i] * xv;
    }
  for (int b = 0; b < BC; b++)
    for (int i = 0; i < TILE; i++) out[b * TILE + i] = (acc[b][0][i] + acc[b][1][i]) + (acc[b][2][i] + acc[b][3][i]);
#endif
}

// The activations of one matrix product, quantized per group as the weights are.
struct QuantizedInput {
  const int8_t* q;     // [BC][kp], the padding zero
  const float* scale;  // [BC][groups]
  const int32_t* sum;  // [BC][groups]: sum of each group's q
  int64_t kp, groups;
};

template <int BC>
inline void tile_int8(const uint8_t* __restrict w, const float* __restrict s, const QuantizedInput& in, int64_t g4,
                      float* __restrict out) {
  const int64_t quads = g4 / 4;
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
  __m512 acc[BC];
  for (int b = 0; b < BC; b++) acc[b] = _mm512_setzero_ps();
  for (int64_t g = 0; g < in.groups; g++) {
    __m512i dot[BC][2];  // two chains of vpdpbusd (even and odd quads), added at the end (exact)
    for (int b = 0; b < BC; b++) {
      dot[b][0] = _mm512_set1_epi32(-128 * in.sum[b * in.groups + g]);
      dot[b][1] = _mm512_setzero_si512();
    }
    const uint8_t* wg = w + g * quads * 4 * TILE;
    const int8_t* xg = in.q + g * g4;
    auto quad = [&](int64_t j, int u) {
      const __m512i wv = _mm512_loadu_si512(wg + j * 4 * TILE);
#pragma GCC unroll 4
      for (int b = 0; b < BC; b++) {
        int32_t xv;
        std::memcpy(&xv, xg + b * in.kp + j * 4, 4);
        dot[b][u] = _mm512_dpbusd_epi32(dot[b][u], wv, _mm512_set1_epi32(xv));
      }
    };
    int64_t j = 0;
    for (; j + 2 <= quads; j += 2) quad(j, 0), quad(j + 1, 1);
    if (j < quads) quad(j, 0);
    const __m512 sv = _mm512_loadu_ps(s + g * TILE);
    for (int b = 0; b < BC; b++)
      acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(dot[b][0], dot[b][1])),
                               _mm512_mul_ps(sv, _mm512_set1_ps(in.scale[b * in.groups + g])), acc[b]);
  }
  for (int b = 0; b < BC; b++) _mm512_storeu_ps(out + b * TILE, acc[b]);
#else
  float acc[BC][TILE] = {};
  for (int64_t g = 0; g < in.groups; g++) {
    int32_t dot[BC][TILE];
    for (int b = 0; b < BC; b++)
      for (int i = 0; i < TILE; i++) dot[b][i] = -128 * in.sum[b * in.groups + g];
    const uint8_t* wg = w + g * quads * 4 * TILE;
    const int8_t* xg = in.q + g * g4;
    for (int64_t j = 0; j < quads; j++)
      for (int b = 0; b < BC; b++)
        for (int i = 0; i < TILE; i++) {
          int32_t d = 0;
          for (int c = 0; c < 4; c++) d += int32_t(wg[(j * TILE + i) * 4 + c]) * int32_t(xg[b * in.kp + j * 4 + c]);
          dot[b][i] += d;
        }
    for (int b = 0; b < BC; b++) {
      const float xs = in.scale[b * in.groups + g];
      for (int i = 0; i < TILE; i++) acc[b][i] = std::fma(float(dot[b][i]), s[g * TILE + i] * xs, acc[b][i]);
    }
  }
  for (int b = 0; b < BC; b++)
    for (int i = 0; i < TILE; i++) out[b * TILE + i] = acc[b][i];
#endif
}

// ----------------------------------------------------------------------------- small pieces

inline void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t j = 0; j < n; j++) ss += x[j] * x[j];
  const float r = 1.0f / std::sqrt(ss / float(n) + eps);
#pragma omp simd
  for (int64_t j = 0; j < n; j++) out[j] = weight[j] * (x[j] * r);
}

// one row's groups: q = round(x / s), s = max|x| / 127 (the padding of each group zero)
inline void quantize_row(const float* x, int64_t groups, int64_t group, int64_t g4, int8_t* q, float* scale,
                         int32_t* sum) {
  for (int64_t g = 0; g < groups; g++) {
    const float* v = x + g * group;
    float amax = 0.f;
    for (int64_t j = 0; j < group; j++) amax = std::max(amax, std::fabs(v[j]));
    const float s = amax / 127.0f;
    int32_t total = 0;
    int8_t* qg = q + g * g4;
    for (int64_t j = 0; j < group; j++) {
      const int32_t value = s > 0.f ? int32_t(std::nearbyint(v[j] / s)) : 0;
      qg[j] = int8_t(value);
      total += value;
    }
    for (int64_t j = group; j < g4; j++) qg[j] = 0;
    scale[g] = s, sum[g] = total;
  }
}

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

enum class Epilogue { Store, Add, SwiGLU };

// Per-thread scratch, reused across steps.
struct Scratch {
  std::vector<float> xn, scores;
  std::vector<int8_t> q;
  std::vector<float> qscale;
  std::vector<int32_t> qsum;
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

// out[b][r] (=, +=) (m . x[b])[r] for r < rows; SwiGLU: m's tiles alternate gate and up, and
// out[b][16 u + i] = silu(gate) * up. Called by every thread of the parallel region: each
// quantizes x for itself (int8) and takes its share of the tiles; no barrier at the end.
void matvec(const Packed& m, const float* x, int64_t ldx, int64_t B, float* out, int64_t ldo, Epilogue epilogue,
            int64_t rows) {
  QuantizedInput qin{};
  Scratch& sc = scratch();
  if (m.int8) {
    const int64_t kp = m.kp();
    sc.q.resize(B * kp), sc.qscale.resize(B * m.groups), sc.qsum.resize(B * m.groups);
    for (int64_t b = 0; b < B; b++)
      quantize_row(x + b * ldx, m.groups, m.group, m.g4, sc.q.data() + b * kp, sc.qscale.data() + b * m.groups,
                   sc.qsum.data() + b * m.groups);
    qin = {sc.q.data(), sc.qscale.data(), sc.qsum.data(), kp, m.groups};
  }
  const int64_t per_unit = epilogue == Epilogue::SwiGLU ? 2 : 1;
  const int64_t units = m.tiles / per_unit;
  const int64_t tile_size = m.int8 ? m.kp() * TILE : m.cols * TILE;  // elements of w per tile
  const uint8_t* wq = m.int8 ? m.w.data_ptr<uint8_t>() : nullptr;
  const float* wf = m.int8 ? nullptr : m.w.data_ptr<float>();
  const float* ws = m.int8 ? m.s.data_ptr<float>() : nullptr;

  auto tile = [&](int64_t t, int64_t b0, int bc, float* res) {
    if (m.int8) {
      QuantizedInput in = qin;
      in.q += b0 * qin.kp, in.scale += b0 * qin.groups, in.sum += b0 * qin.groups;
      const uint8_t* w = wq + t * tile_size;
      const float* s = ws + t * m.groups * TILE;
      switch (bc) {
        case 1: tile_int8<1>(w, s, in, m.g4, res); break;
        case 2: tile_int8<2>(w, s, in, m.g4, res); break;
        case 3: tile_int8<3>(w, s, in, m.g4, res); break;
        default: tile_int8<4>(w, s, in, m.g4, res); break;
      }
    } else {
      const float* w = wf + t * tile_size;
      const float* xb = x + b0 * ldx;
      switch (bc) {
        case 1: tile_f32<1>(w, xb, ldx, m.cols, res); break;
        case 2: tile_f32<2>(w, xb, ldx, m.cols, res); break;
        case 3: tile_f32<3>(w, xb, ldx, m.cols, res); break;
        default: tile_f32<4>(w, xb, ldx, m.cols, res); break;
      }
    }
  };

#pragma omp for schedule(static) nowait
  for (int64_t u = 0; u < units; u++) {
    alignas(64) float res[CHUNK * TILE], up[CHUNK * TILE];
    for (int64_t b0 = 0; b0 < B; b0 += CHUNK) {
      const int bc = int(std::min<int64_t>(CHUNK, B - b0));
      if (epilogue == Epilogue::SwiGLU) {
        tile(2 * u, b0, bc, res);
        tile(2 * u + 1, b0, bc, up);
        const int64_t n = std::min<int64_t>(TILE, rows - u * TILE);
        for (int b = 0; b < bc; b++)
          for (int64_t i = 0; i < n; i++) out[(b0 + b) * ldo + u * TILE + i] = silu(res[b * TILE + i]) * up[b * TILE + i];
      } else {
        tile(u, b0, bc, res);
        const int64_t n = std::min<int64_t>(TILE, rows - u * TILE);
        for (int b = 0; b < bc; b++) {
          float* o = out + (b0 + b) * ldo + u * TILE;
          if (epilogue == Epilogue::Add)
            for (int64_t i = 0; i < n; i++) o[i] += res[b * TILE + i];
          else
            for (int64_t i = 0; i < n; i++) o[i] = res[b * TILE + i];
        }
      }
    }
  }
}

#if defined(__AVX512F__)
// exp(x) for x <= 0 (Cephes' expf: 2^n e^r, |r| <= ln2 / 2, a degree-6 polynomial; ~1 ulp)
inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
#endif

// softmax(q . k[t] * scale over t < n) . v: one query head against its cached keys and values
inline void attend(const float* q, const float* keys, const float* values, int64_t n, int64_t D, float scale,
                   float* scores, float* out) {
#if defined(__AVX512F__)
  const int64_t chunks = (D + 15) / 16;
  if (chunks <= 8) {  // head sizes up to 128: the query and the output in registers
    __m512 qv[8];
    for (int64_t c = 0; c < chunks; c++)
      qv[c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(D - 16 * c), q + 16 * c), _mm512_set1_ps(scale));
    for (int64_t t = 0; t < n; t++) {
      const float* k = keys + t * D;
      __m512 acc = _mm512_mul_ps(qv[0], _mm512_maskz_loadu_ps(tail_mask(D), k));
      for (int64_t c = 1; c < chunks; c++)
        acc = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(tail_mask(D - 16 * c), k + 16 * c), acc);
      scores[t] = _mm512_reduce_add_ps(acc);
    }
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t t = 0; t < n; t += 16) top = _mm512_mask_max_ps(top, tail_mask(n - t), top, _mm512_maskz_loadu_ps(tail_mask(n - t), scores + t));
    const __m512 topv = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 total = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t += 16) {
      const __mmask16 m = tail_mask(n - t);
      const __m512 e = exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + t), topv));
      _mm512_mask_storeu_ps(scores + t, m, e);
      total = _mm512_add_ps(total, _mm512_maskz_mov_ps(m, e));
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(total);
    __m512 acc[4][8];
    for (int u = 0; u < 4; u++)
      for (int64_t c = 0; c < chunks; c++) acc[u][c] = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + 4 <= n; t += 4)
      for (int u = 0; u < 4; u++) {
        const __m512 pv = _mm512_set1_ps(scores[t + u]);
        const float* v = values + (t + u) * D;
        for (int64_t c = 0; c < chunks; c++)
          acc[u][c] = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(tail_mask(D - 16 * c), v + 16 * c), acc[u][c]);
      }
    for (; t < n; t++) {
      const __m512 pv = _mm512_set1_ps(scores[t]);
      const float* v = values + t * D;
      for (int64_t c = 0; c < chunks; c++)
        acc[0][c] = _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(tail_mask(D - 16 * c), v + 16 * c), acc[0][c]);
    }
    for (int64_t c = 0; c < chunks; c++) {
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0][c], acc[1][c]), _mm512_add_ps(acc[2][c], acc[3][c]));
      _mm512_mask_storeu_ps(out + 16 * c, tail_mask(D - 16 * c), _mm512_mul_ps(sum, _mm512_set1_ps(inv)));
    }
    return;
  }
#endif
  float top = -INFINITY;
  for (int64_t t = 0; t < n; t++) {
    const float* k = keys + t * D;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < D; j++) s += q[j] * k[j];
    scores[t] = s * scale;
    top = std::max(top, scores[t]);
  }
  float total = 0.f;
  for (int64_t t = 0; t < n; t++) {
    scores[t] = std::exp(scores[t] - top);
    total += scores[t];
  }
  const float inv = 1.0f / total;
  for (int64_t j = 0; j < D; j++) out[j] = 0.f;
  for (int64_t t = 0; t < n; t++) {
    const float p = scores[t] * inv;
    const float* v = values + t * D;
#pragma omp simd
    for (int64_t j = 0; j < D; j++) out[j] += p * v[j];
  }
}

// rotate pairs (j, j + D/2) by the position's angles: x * cos + roll(x, D/2) * sin, the sin
// table's first half negated (nonllama.model.rotary_table)
inline void rotate(float* v, const float* cos, const float* sin, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t j = 0; j < half; j++) {
    const float a = v[j], b = v[j + half];
    v[j] = a * cos[j] + b * sin[j];
    v[j + half] = b * cos[j + half] + a * sin[j + half];
  }
}

// The barrier between the phases of a step. It spins up to 50 us (threads that have cores to
// themselves arrive within that), then sleeps until the last one arrives (futex): a thread the
// scheduler parked, because other processes want the cores, is waited for without keeping busy
// the core it needs. OpenMP's barrier spins far longer; on a 2-core machine running others'
// work, two threads went from a median of 125-230 tokens/s with it to 195-410 with this one
// (15m preset, float32; the same ~2400 in quiet moments).
class Barrier {
 public:
  // the team's size, which every thread of it sets (the same value) before its first wait
  void join(int threads) { threads_.store(threads, std::memory_order_relaxed); }

  void wait() {
    const int threads = threads_.load(std::memory_order_relaxed);
    if (threads <= 1) return;
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      if (sleepers_.load(std::memory_order_acquire) > 0) wake();
      return;
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(SPIN_US);
    for (int i = 0; generation_.load(std::memory_order_acquire) == generation; i++) {
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) {
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        while (generation_.load(std::memory_order_acquire) == generation) sleep(generation);
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        return;
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  }

 private:
  static constexpr int SPIN_US = 50;
  std::atomic<int> threads_{1}, arrived_{0}, generation_{0}, sleepers_{0};

  void sleep(int generation) {
#ifdef __linux__
    syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAIT_PRIVATE, generation, nullptr, nullptr, 0);
#else
    (void)generation;
    std::this_thread::yield();
#endif
  }
  void wake() {
#ifdef __linux__
    syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#endif
  }
};

// ----------------------------------------------------------------------------- the model

struct Model {
  int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab;
  float eps;
  std::vector<at::Tensor> attention_norms, ffn_norms;
  at::Tensor norm;
  std::vector<Packed> mats;  // per layer: wqkv, wo, w13 (gate and up tiles alternating), w2; then the output head
  at::Tensor embedding;   // (vocab, dim): float32, or int8 with embedding_scales (vocab, dim / group)
  at::Tensor embedding_scales;
  int64_t embedding_group;
  at::Tensor cos, sin;  // (max_seq_len, head_dim)
  std::shared_ptr<void> arena;  // every packed matrix, in the order a step reads them (see gather)

  // One stream of memory per step instead of one per matrix, on 2 MB pages where the system
  // gives them (transparent huge pages): a step reads every weight once, and with 4 KB pages
  // each 4 KB costs a TLB miss and a restart of the hardware prefetcher.
  void gather() {
    constexpr size_t align = 64, huge = size_t(2) << 20;
    auto padded = [](size_t n) { return (n + align - 1) / align * align; };
    size_t total = 0;
    for (const auto& m : mats) total += padded(m.w.nbytes()) + (m.int8 ? padded(m.s.nbytes()) : 0);
    const size_t size = (total + huge - 1) / huge * huge;
    void* memory = std::aligned_alloc(huge, size);
    if (memory == nullptr) return;  // the matrices stay where they are
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(memory, size, MADV_HUGEPAGE);
#endif
    arena = std::shared_ptr<void>(memory, std::free);
    char* cursor = static_cast<char*>(memory);
    auto place = [&](at::Tensor& t) {
      std::memcpy(cursor, t.data_ptr(), t.nbytes());
      t = at::from_blob(cursor, t.sizes(), t.options());  // the arena lives as long as the model
      cursor += padded(t.nbytes());
    };
    for (auto& m : mats) {
      place(m.w);
      if (m.int8) place(m.s);
    }
  }

  Model(int64_t n_heads_, int64_t n_kv_heads_, int64_t head_dim_, int64_t ffn_dim_, double eps_,
        std::vector<at::Tensor> attention_norms_, std::vector<at::Tensor> ffn_norms_, at::Tensor norm_,
        std::vector<Packed> mats_, at::Tensor embedding_, at::Tensor embedding_scales_,
        int64_t embedding_group_, at::Tensor cos_, at::Tensor sin_)
      : n_heads(n_heads_), n_kv_heads(n_kv_heads_), head_dim(head_dim_), ffn_dim(ffn_dim_), eps(float(eps_)),
        attention_norms(std::move(attention_norms_)), ffn_norms(std::move(ffn_norms_)), norm(norm_.contiguous()),
        mats(std::move(mats_)), embedding(embedding_.contiguous()), embedding_scales(embedding_scales_),
        embedding_group(embedding_group_), cos(cos_.contiguous()), sin(sin_.contiguous()) {
    dim = norm.size(0);
    n_layers = int64_t(attention_norms.size());
    TORCH_CHECK(int64_t(ffn_norms.size()) == n_layers && int64_t(mats.size()) == 4 * n_layers + 1,
                "Model: 4 matrices per layer and the head");
    for (auto& t : attention_norms) t = t.contiguous();
    for (auto& t : ffn_norms) t = t.contiguous();
    vocab = mats.back().rows;
    const int64_t qkv = (n_heads + 2 * n_kv_heads) * head_dim;
    for (int64_t l = 0; l < n_layers; l++) {
      const Packed *wqkv = &mats[4 * l], *wo = &mats[4 * l + 1], *w13 = &mats[4 * l + 2], *w2 = &mats[4 * l + 3];
      TORCH_CHECK(wqkv->rows == qkv && wqkv->cols == dim, "Model: wqkv shape");
      TORCH_CHECK(wo->rows == dim && wo->cols == n_heads * head_dim, "Model: wo shape");
      TORCH_CHECK(w13->cols == dim && w13->tiles % 2 == 0 && w13->tiles / 2 == (ffn_dim + TILE - 1) / TILE,
                  "Model: w13 shape (gate and up tiles alternating)");
      TORCH_CHECK(w2->rows == dim && w2->cols == ffn_dim, "Model: w2 shape");
    }
    TORCH_CHECK(mats.back().cols == dim, "Model: output head shape");
    TORCH_CHECK(embedding.dim() == 2 && embedding.size(0) == vocab && embedding.size(1) == dim, "Model: embedding shape");
    if (embedding.scalar_type() == at::kChar) {
      TORCH_CHECK(embedding_scales.defined() && embedding_scales.scalar_type() == at::kFloat &&
                      embedding_group >= 1 && dim % embedding_group == 0 &&
                      embedding_scales.numel() == vocab * (dim / embedding_group),
                  "Model: embedding scales");
    } else {
      TORCH_CHECK(embedding.scalar_type() == at::kFloat, "Model: embedding float32 or int8");
    }
    if (embedding_scales.defined()) embedding_scales = embedding_scales.contiguous();
    TORCH_CHECK(cos.dim() == 2 && cos.size(1) == head_dim && sin.sizes() == cos.sizes(), "Model: rotary tables");
    gather();
  }

  // logits (B, vocab) of features (B, dim)
  at::Tensor head(at::Tensor features) const {
    TORCH_CHECK(features.dim() == 2 && features.size(1) == dim && features.scalar_type() == at::kFloat,
                "head: features (batch, dim) float32");
    features = features.contiguous();
    const int64_t B = features.size(0);
    auto logits = at::empty({B, vocab}, at::kFloat);
    const float* x = features.data_ptr<float>();
    float* out = logits.data_ptr<float>();
    const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads) if (threads > 1)
    matvec(mats.back(), x, dim, B, out, vocab, Epilogue::Store, vocab);
    return logits;
  }

  at::Tensor step(at::Tensor tokens, int64_t pos, const std::vector<at::Tensor>& keys,
                     const std::vector<at::Tensor>& values) const {
    if (tokens.scalar_type() != at::kLong || !tokens.is_contiguous()) tokens = tokens.to(at::kLong).contiguous();
    const int64_t B = tokens.numel(), H = n_heads, KV = n_kv_heads, D = head_dim;
    TORCH_CHECK(int64_t(keys.size()) == n_layers && int64_t(values.size()) == n_layers, "step: a cache per layer");
    const int64_t T = keys[0].size(2);
    for (int64_t l = 0; l < n_layers; l++)
      for (const auto* c : {&keys[l], &values[l]})
        TORCH_CHECK(c->scalar_type() == at::kFloat && c->is_contiguous() && c->dim() == 4 && c->size(0) == B &&
                        c->size(1) == KV && c->size(2) == T && c->size(3) == D,
                    "step: the cache must be contiguous float32 (batch, n_kv_heads, max_seq_len, head_dim)");
    TORCH_CHECK(pos >= 0 && pos < T && pos < cos.size(0), "step: position ", pos, " outside the context");
    const int64_t* tok = tokens.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; b++) TORCH_CHECK(tok[b] >= 0 && tok[b] < vocab, "step: token ", tok[b], " out of range");

    const int64_t qkv_n = (H + 2 * KV) * D, ffn_p = (ffn_dim + TILE - 1) / TILE * TILE;
    std::vector<float> x(B * dim), qkv(B * qkv_n), att(B * H * D), h(B * ffn_p);
    for (int64_t b = 0; b < B; b++) {
      float* xb = x.data() + b * dim;
      if (embedding.scalar_type() == at::kChar) {  // a dequantized row
        const int8_t* q = embedding.data_ptr<int8_t>() + tok[b] * dim;
        const int64_t groups = dim / embedding_group;
        const float* s = embedding_scales.data_ptr<float>() + tok[b] * groups;
        for (int64_t j = 0; j < dim; j++) xb[j] = float(q[j]) * s[j / embedding_group];
      } else {
        std::memcpy(xb, embedding.data_ptr<float>() + tok[b] * dim, dim * sizeof(float));
      }
    }
    std::vector<float*> kc(n_layers), vc(n_layers);
    for (int64_t l = 0; l < n_layers; l++) kc[l] = keys[l].data_ptr<float>(), vc[l] = values[l].data_ptr<float>();
    auto logits = at::empty({B, vocab}, at::kFloat);
    float* out = logits.data_ptr<float>();
    const float* c = cos.data_ptr<float>() + pos * D;
    const float* s = sin.data_ptr<float>() + pos * D;
    const float scale = 1.0f / std::sqrt(float(D));
    const int threads = at::get_num_threads();
    Barrier barrier;

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
      barrier.join(omp_get_num_threads());
#endif
      Scratch& sc = scratch();
      sc.xn.resize(B * dim);
      sc.scores.resize(T);
      float* xn = sc.xn.data();
      for (int64_t l = 0; l < n_layers; l++) {
        const float* an = attention_norms[l].data_ptr<float>();
        for (int64_t b = 0; b < B; b++) rms_norm(x.data() + b * dim, an, dim, eps, xn + b * dim);
        matvec(mats[4 * l], xn, dim, B, qkv.data(), qkv_n, Epilogue::Store, qkv_n);
        barrier.wait();
#pragma omp for schedule(static) nowait
        for (int64_t u = 0; u < B * (H + 2 * KV); u++) {  // rotate q and k; k and v into the cache
          const int64_t b = u / (H + 2 * KV), j = u % (H + 2 * KV);
          float* v = qkv.data() + b * qkv_n + j * D;
          if (j < H + KV) rotate(v, c, s, D);
          if (j >= H) {
            const int64_t kh = j < H + KV ? j - H : j - H - KV;
            float* cache = (j < H + KV ? kc[l] : vc[l]) + ((b * KV + kh) * T + pos) * D;
            std::memcpy(cache, v, D * sizeof(float));
          }
        }
        barrier.wait();
#pragma omp for schedule(static) nowait
        for (int64_t u = 0; u < B * H; u++) {
          const int64_t b = u / H, hd = u % H, kh = hd / (H / KV);
          const int64_t base = (b * KV + kh) * T * D;
          attend(qkv.data() + b * qkv_n + hd * D, kc[l] + base, vc[l] + base, pos + 1, D, scale, sc.scores.data(),
                 att.data() + (b * H + hd) * D);
        }
        barrier.wait();
        matvec(mats[4 * l + 1], att.data(), H * D, B, x.data(), dim, Epilogue::Add, dim);
        barrier.wait();
        const float* fn = ffn_norms[l].data_ptr<float>();
        for (int64_t b = 0; b < B; b++) rms_norm(x.data() + b * dim, fn, dim, eps, xn + b * dim);
        matvec(mats[4 * l + 2], xn, dim, B, h.data(), ffn_p, Epilogue::SwiGLU, ffn_dim);
        barrier.wait();
        matvec(mats[4 * l + 3], h.data(), ffn_p, B, x.data(), dim, Epilogue::Add, dim);
        barrier.wait();
      }
      const float* fw = norm.data_ptr<float>();
      for (int64_t b = 0; b < B; b++) rms_norm(x.data() + b * dim, fw, dim, eps, xn + b * dim);
      matvec(mats.back(), xn, dim, B, out, vocab, Epilogue::Store, vocab);
    }
    return logits;
  }
};

std::string build_info() {
  std::string s;
#if defined(__AVX512F__)
  s += "avx512";
#if defined(__AVX512VNNI__)
  s += "+vnni";
#endif
#else
  s += "generic";
#endif
#ifdef _OPENMP
  s += ", openmp";
#endif
  return s;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "nonllama's decoding step on CPU (nonllama/kernels/decode.cpp)";
  pybind11::class_<Packed>(m, "Packed")
      .def_readonly("rows", &Packed::rows)
      .def_readonly("cols", &Packed::cols)
      .def_readonly("int8", &Packed::int8);
  m.def("pack_f32", &pack_f32, "a float32 matrix (out, in) in tiles of 16 rows");
  m.def("pack_int8", &pack_int8, "an int8 matrix (out, in) with its per-group scales, in tiles of 16 rows");
  pybind11::class_<Model>(m, "Model")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, double, std::vector<at::Tensor>,
                          std::vector<at::Tensor>, at::Tensor, std::vector<Packed>, at::Tensor, at::Tensor,
                          int64_t, at::Tensor, at::Tensor>())
      .def("step", &Model::step, pybind11::call_guard<pybind11::gil_scoped_release>(),
           "logits (batch, vocab) after tokens (batch,) at a position; the caches (one per layer) gain it")
      .def("head", &Model::head, pybind11::call_guard<pybind11::gil_scoped_release>(),
           "logits (batch, vocab) of normalised features (batch, dim)");
  m.def("build_info", &build_info, "the instruction set and threading it was built with");
  m.attr("TILE") = TILE;
}
