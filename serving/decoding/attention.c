/* The Transformer decoder step's two attentions, the encoder's self-attention, and their residual adds
 * with the norms after them, as ONNX Runtime custom operators (domain "kiln.ai").
 *
 * In the plain step graph each attention is a batched MatMul of one query row against each row's
 * (or sentence's) keys per head, a softmax and another batched MatMul, plus the reshapes, transposes,
 * slices and concatenation around them: ONNX Runtime runs a batched MatMul as one MLAS product per
 * row and head (256 products of 1 x 32 by 32 x P at 64 rows), ~0.3 us each for a few dozen
 * multiply-adds, so at 64 rows a fifth of the step's kernel time went to attention arithmetic worth
 * a few microseconds. These kernels do each attention of a layer in one pass over the rows:
 *
 *   kiln.ai::StepSelfAttention(q [R, D], past_k [R, H, P, hd], past_v [R, H, P, hd],
 *                              new_k [R, H, 1, hd], new_v [R, H, 1, hd], bias [R, 1, 1, P]) -> [R, D]
 *     each row's query against its past entries (plus bias: 0 or the lowest float) and its new one
 *     (never masked), softmax, weighted sum of the values; heads merged into the row (h * hd + d);
 *   kiln.ai::GroupedCrossAttention(q [R, D], k [n, H, S, hd], v [n, H, S, hd], bias [n, 1, 1, S])
 *       -> [R, D]
 *     the R = n * W rows grouped by sentence (sentence i's rows at i*W ... i*W+W-1) against their
 *     sentence's keys and values (what decoders exported before export version 5 use; the exported
 *     Transformer takes the indexed one since);
 *   kiln.ai::IndexedCrossAttention(q [R, D], k [N, H, S, hd], v [N, H, S, hd], bias [N, 1, 1, S],
 *                                  row_place int64 [R]) -> [R, D]
 *     row r against the keys and values at place row_place[r] of a store of N sentences (the decode
 *     batch's encoder store itself: no per-row or per-place copies, rows in any order and any number
 *     per sentence); a place outside the store gives NaN rows, as inconsistent shapes do;
 *   kiln.ai::StepAttentionQKV(qkv [R, 3 * D], past_k [R, H, P, hd], past_v [R, H, P, hd],
 *                             cache_mask bool [R, P]) -> (out [R, D], new_k [R, H, 1, hd], new_v [R, H, 1, hd])
 *     StepSelfAttention over the layer's one q|k|v projection, its new entry handed out as the layer's
 *     cache outputs, and the step's boolean cache mask read as the bias it stands for (0 where true,
 *     the lowest float where false: the same scores bit for bit): one node where the graph had three
 *     products, two reshapes and, shared by the layers, a Where and an Unsqueeze (export version 9);
 *   kiln.ai::IndexedCrossAttentionMasked(q [R, D], k [N, H, S, hd], v [N, H, S, hd],
 *                                        src_mask bool [N, S], row_place int64 [R]) -> [R, D]
 *     IndexedCrossAttention with the source mask read as its bias (no Where and Unsqueeze);
 *   kiln.ai::EncoderSelfAttention(qkv [n, S, 3 * H, hd], bias [n, 1, 1, S]) -> [n * S, D]
 *     each of n sentences' S positions against its own positions: qkv is the encoder layer's one
 *     projection viewed per position (query heads, then key heads, then value heads); the plain graph
 *     spends ~20 % of the encoder's kernel time on the transposes, splits and batched products around
 *     its attention (encoder_attention in transformer.py);
 *   kiln.ai::AddLayerNorm(x [R, D], y [R, D], gamma [D], beta [D], eps [1]) -> (x + y [R, D], normed [R, D])
 *     a pre-norm layer's residual add and the layer norm after it (add_norm in transformer.py): an
 *     Add and a LayerNormalization node cost ONNX Runtime ~7 and ~11 us at a few dozen rows of 128,
 *     mostly per node, nine times a step.
 *
 * The arithmetic is that of the plain graph (training/models/attention.py, attend_step,
 * attend_rows and attend_self): score = q.k / sqrt(hd) (+ bias), softmax as exp(s - max) / sum, then the weighted sum
 * of the values in key order. Sums run in a different order than MLAS's, so results agree to float
 * rounding (~1e-6), not bit for bit; export's parity and beam-parity checks hold the fused graph to
 * the same bounds as the plain one. A weight whose exp would be subnormal (below EXP_FLOOR: every
 * masked entry, whose bias is the lowest float) is 0, which also spares glibc's slow underflow path.
 * Where the CPU has AVX2 and FMA (and hd is a multiple of 8, at most 64) the dot products, the softmax
 * (its exp a Cephes polynomial, to float rounding of expf) and the weighted sum run 8 lanes at a time:
 * 0.94-0.95x the decoder step of the scalar softmax with expf at 64-128 rows (README, seventeenth
 * session).
 *
 * The operators are registered on a session's options by kiln_attention_ops (ort_step.c's sessions)
 * or RegisterCustomOps (ONNX Runtime's entry point for SessionOptions.register_custom_ops_library).
 * Like ort_step.c this file declares the OrtApi entries it calls by index instead of including
 * onnxruntime_c_api.h, and the OrtCustomOp structure's first fields (version 7: ONNX Runtime reads no
 * later field from an operator of that version).
 */
#define _POSIX_C_SOURCE 200809L
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    OP_CREATE_CUSTOM_OP_DOMAIN = 26,
    OP_CUSTOM_OP_DOMAIN_ADD = 27,
    OP_ADD_CUSTOM_OP_DOMAIN = 28,
    OP_GET_TENSOR_MUTABLE_DATA = 51,
    OP_GET_DIMENSIONS_COUNT = 61,
    OP_GET_DIMENSIONS = 62,
    OP_GET_TENSOR_TYPE_AND_SHAPE = 65,
    OP_KERNEL_CONTEXT_GET_INPUT = 90,
    OP_KERNEL_CONTEXT_GET_OUTPUT = 91,
    OP_RELEASE_STATUS = 93,
    OP_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO = 99,
};
#define OP_CALL(index, type) ((type)ops_api[index])
#define DOMAIN "kiln.ai"
#define OP_VERSION 7 /* no optional/variadic inputs, KernelCompute without a status */
#define MAX_KEYS 4096
#define MAX_HEAD_DIM 1024
#define LANES 8
/* The stride of a head's scores in attend()'s buffer: its keys, the extra entry and a vector's lanes. */
#define SCORES (MAX_KEYS + 1 + LANES)

typedef void *op_status_t;
static const void *const *ops_api;

typedef struct custom_op {
    uint32_t version;
    void *(*create_kernel)(const struct custom_op *op, const void *api, const void *info);
    const char *(*get_name)(const struct custom_op *op);
    const char *(*get_execution_provider_type)(const struct custom_op *op);
    int (*get_input_type)(const struct custom_op *op, size_t index);
    size_t (*get_input_type_count)(const struct custom_op *op);
    int (*get_output_type)(const struct custom_op *op, size_t index);
    size_t (*get_output_type_count)(const struct custom_op *op);
    void (*kernel_compute)(void *kernel, void *context);
    void (*kernel_destroy)(void *kernel);
    /* read whatever the version (ONNX Runtime's schema check calls them): every input and output required */
    int (*get_input_characteristic)(const struct custom_op *op, size_t index);
    int (*get_output_characteristic)(const struct custom_op *op, size_t index);
    void *later[32]; /* fields of later versions: never read for OP_VERSION, zero regardless */
} custom_op_t;

/* q.k over hd floats in LANES independent partial sums (vectorizable without reassociating a sum). */
static float dot(const float *q, const float *k, int64_t hd) {
    float lane[LANES] = {0};
    int64_t d = 0;
    for (; d + LANES <= hd; d += LANES)
        for (int l = 0; l < LANES; l++) lane[l] += q[d + l] * k[d + l];
    float sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; d < hd; d++) sum += q[d] * k[d];
    return sum;
}

/* Below this, expf's result is subnormal or 0 (and glibc's expf takes its slow underflow path, which
 * every masked entry - a score plus the lowest float - would pay): such a weight is 0 here. */
#define EXP_FLOOR (-87.33654f)

/* scores[0..n) -> softmax weights in place: exp(s - max) / sum. */
static void softmax(float *scores, int64_t n) {
    float top = scores[0];
    for (int64_t j = 1; j < n; j++) top = scores[j] > top ? scores[j] : top;
    float total = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float x = scores[j] - top;
        scores[j] = x < EXP_FLOOR ? 0.0f : expf(x);
        total += scores[j];
    }
    for (int64_t j = 0; j < n; j++) scores[j] /= total;
}

/* out[0..hd) = sum_j w[j] * v[j * hd ...], in key order. */
static void weighted(const float *w, const float *v, int64_t keys, int64_t hd, float *out) {
    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < keys; j++) {
        const float *row = v + j * hd;
        for (int64_t d = 0; d < hd; d++) out[d] += w[j] * row[d];
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* scores[j] = q.k_j for `keys` keys hd apart (hd a multiple of 8): AVX2 and FMA, four keys' sums
 * reduced together. Another order of sums than dot() (and fused multiply-adds): the two paths agree
 * to float rounding, and one process always takes the same one. */
__attribute__((target("avx2,fma"))) static void dots_avx2(const float *q, const float *k, int64_t keys,
                                                          int64_t hd, float *scores) {
    int64_t j = 0;
    for (; j + 4 <= keys; j += 4) {
        const float *k0 = k + j * hd, *k1 = k0 + hd, *k2 = k1 + hd, *k3 = k2 + hd;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < hd; d += 8) {
            __m256 x = _mm256_loadu_ps(q + d);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k0 + d), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k1 + d), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k2 + d), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k3 + d), a3);
        }
        __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3)); /* per 128-bit half */
        _mm_storeu_ps(scores + j, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
    }
    for (; j < keys; j++) {
        const float *kj = k + j * hd;
        __m256 a = _mm256_setzero_ps();
        for (int64_t d = 0; d < hd; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kj + d), a);
        /* the lanes reduced in the quads' order, so a key's score does not depend on where it sits
         * (a source padded to a longer one's width, a sentence joining at a later cache column) */
        __m256 pairs = _mm256_hadd_ps(a, a);
        __m256 s = _mm256_hadd_ps(pairs, pairs);
        scores[j] = _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
    }
}

/* out[0..hd) = sum_j w[j] * v[j * hd ...] (hd a multiple of 8, at most 64): AVX2 and FMA. */
__attribute__((target("avx2,fma"))) static void weighted_avx2(const float *w, const float *v, int64_t keys,
                                                              int64_t hd, float *out) {
    __m256 acc[8];
    int64_t blocks = hd / 8;
    for (int64_t b = 0; b < blocks; b++) acc[b] = _mm256_setzero_ps();
    for (int64_t j = 0; j < keys; j++) {
        __m256 x = _mm256_set1_ps(w[j]);
        for (int64_t b = 0; b < blocks; b++) acc[b] = _mm256_fmadd_ps(x, _mm256_loadu_ps(v + j * hd + 8 * b), acc[b]);
    }
    for (int64_t b = 0; b < blocks; b++) _mm256_storeu_ps(out + 8 * b, acc[b]);
}

/* Lanes 0..count-1 set (count clamped to 0..8). */
__attribute__((target("avx2,fma"))) static __m256i lanes_below(int64_t count) {
    int32_t c = count < 0 ? 0 : count > LANES ? LANES : (int32_t)count;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* exp(x) for x <= 0 (scores minus their maximum), 8 lanes: Cephes' single-precision polynomial after
 * reducing x by n * ln 2 (relative error ~2e-7: expf to float rounding); lanes below EXP_FLOOR give 0,
 * as softmax() does, and a NaN stays NaN. */
__attribute__((target("avx2,fma"))) static __m256 exp_avx2(__m256 x) {
    const __m256 floor = _mm256_set1_ps(EXP_FLOOR);
    __m256 under = _mm256_cmp_ps(x, floor, _CMP_LT_OQ);
    x = _mm256_max_ps(floor, x); /* the second operand when either is NaN: x */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x); /* ln 2 in two parts, exact products */
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(two_n)));
}

/* Heads a softmax pass takes together (softmax_group_avx2). */
#define GROUP 4

/* A vector's 8 lanes reduced by max or by sum. */
__attribute__((target("avx2,fma"))) static float lanes_max(__m256 v) {
    __m128 half = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_max_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_max_ss(half, _mm_shuffle_ps(half, half, 1)));
}
__attribute__((target("avx2,fma"))) static float lanes_total(__m256 v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_hadd_ps(half, half);
    return _mm_cvtss_f32(_mm_hadd_ps(half, half));
}

/* The scores of `g` heads (at most GROUP; head i's n scores at scores + i * SCORES, n rounded up to 8
 * lanes in the buffer) -> their softmax weights, as softmax() after the scaling: s / scale + bias[j]
 * for j < biased (bias NULL: none), then exp(s - max) / sum; the lanes past n are scratch.
 *
 * Each head's arithmetic, element by element and in its sums' order, is that of one head alone; the
 * heads are interleaved because one head's softmax over a few dozen keys is a chain of dependent
 * steps (a division, the reductions, exp's polynomial: ~300 cycles at 8 keys, two thirds of the
 * attention's time in a microbenchmark), and four independent chains run in the time of about one. */
__attribute__((target("avx2,fma"), always_inline)) static inline void softmax_group_avx2(float *scores, int g, int64_t n, float scale,
                                                                   const float *bias, int64_t biased) {
    const __m256 divisor = _mm256_set1_ps(scale), none = _mm256_set1_ps(-INFINITY);
    __m256 top[GROUP], peak[GROUP], total[GROUP];
    for (int i = 0; i < g; i++) top[i] = none;
    for (int64_t j = 0; j < n; j += LANES) {
        const __m256 valid = _mm256_castsi256_ps(lanes_below(n - j));
        const int biasing = bias && j < biased;
        const __m256 b = biasing ? _mm256_maskload_ps(bias + j, lanes_below(biased - j)) : none;
        for (int i = 0; i < g; i++) {
            float *row = scores + i * SCORES + j;
            __m256 s = _mm256_div_ps(_mm256_loadu_ps(row), divisor);
            if (biasing) s = _mm256_add_ps(s, b);
            s = _mm256_blendv_ps(none, s, valid);
            _mm256_storeu_ps(row, s);
            top[i] = _mm256_max_ps(top[i], s);
        }
    }
    for (int i = 0; i < g; i++) peak[i] = _mm256_set1_ps(lanes_max(top[i]));
    for (int64_t j = 0; j < n; j += LANES)
        for (int i = 0; i < g; i++) {
            float *row = scores + i * SCORES + j;
            __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(row), peak[i])); /* padding: exp(-inf) = 0 */
            _mm256_storeu_ps(row, e);
        }
    /* each head's weights summed in key order, as softmax() does: lanes would sum a key with the keys
     * 8 apart, so its total would move with where its keys sit (a sentence joining at a later cache
     * column has masked columns, exactly 0, before them) */
    float sum[GROUP] = {0.0f};
    for (int64_t j = 0; j < n; j++)
        for (int i = 0; i < g; i++) sum[i] += scores[i * SCORES + j];
    for (int i = 0; i < g; i++) total[i] = _mm256_set1_ps(sum[i]);
    for (int64_t j = 0; j < n; j += LANES)
        for (int i = 0; i < g; i++) {
            float *row = scores + i * SCORES + j;
            _mm256_storeu_ps(row, _mm256_div_ps(_mm256_loadu_ps(row), total[i]));
        }
}

/* Whether the AVX2 paths are taken: the CPU has AVX2 and FMA (asked once per process) and
 * KILN_ATTENTION_PORTABLE was not set when the first operator ran; for attention, also a head size
 * the vector kernels take. */
static int avx2_cpu(void) {
    static int supported = -1;
    if (supported < 0)
        supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    getenv("KILN_ATTENTION_PORTABLE") == NULL;
    return supported;
}
static int avx2_path(int64_t hd) { return avx2_cpu() && hd % 8 == 0 && hd <= 64; }
#else
static int avx2_cpu(void) { return 0; }
static int avx2_path(int64_t hd) {
    (void)hd;
    return 0;
}
#endif

/* out[0..hd) += w * ev[0..hd): the never-masked extra entry's share (its weight w), after the others. */
static void extra_add(float w, const float *ev, int64_t hd, float *out) {
    for (int64_t d = 0; d < hd; d++) out[d] += w * ev[d];
}

#ifdef HAVE_AVX2_PATH
/* attend() where avx2_path(hd): the heads GROUP at a time, their softmax interleaved. */
__attribute__((target("avx2,fma"))) static void attend_avx2(const float *q, const float *k, const float *v,
                                                            int64_t head_stride, const float *bias, int64_t keys,
                                                            const float *extra_k, const float *extra_v,
                                                            int64_t heads, int64_t hd, float scale, float *out) {
    float grouped[GROUP * SCORES];
    int64_t n = keys + (extra_k != NULL);
    for (int64_t first = 0; first < heads; first += GROUP) {
        int g = heads - first < GROUP ? (int)(heads - first) : GROUP;
        for (int i = 0; i < g; i++) {
            int64_t h = first + i;
            dots_avx2(q + h * hd, k + h * head_stride, keys, hd, grouped + i * SCORES);
            if (extra_k) dots_avx2(q + h * hd, extra_k + h * hd, 1, hd, grouped + i * SCORES + keys);
        }
        if (g == GROUP) /* a constant count: the heads' vectors stay in registers */
            softmax_group_avx2(grouped, GROUP, n, scale, bias, keys);
        else
            softmax_group_avx2(grouped, g, n, scale, bias, keys);
        for (int i = 0; i < g; i++) {
            int64_t h = first + i;
            weighted_avx2(grouped + i * SCORES, v + h * head_stride, keys, hd, out + h * hd);
            if (extra_k) extra_add(grouped[i * SCORES + keys], extra_v + h * hd, hd, out + h * hd);
        }
    }
}
#endif

/* Attention of one row's query (heads x hd at q) over `keys` keys/values of stride hd per head
 * (head h's block at k + h * head_stride), bias per key (NULL: none) and optionally one extra
 * never-masked entry per head (extra_k/extra_v + h * hd). */
static void attend(const float *q, const float *k, const float *v, int64_t head_stride, const float *bias,
                   int64_t keys, const float *extra_k, const float *extra_v, int64_t heads, int64_t hd,
                   float scale, float *out) {
    int64_t n = keys + (extra_k != NULL);
#ifdef HAVE_AVX2_PATH
    if (avx2_path(hd)) {
        attend_avx2(q, k, v, head_stride, bias, keys, extra_k, extra_v, heads, hd, scale, out);
        return;
    }
#endif
    float scores[SCORES];
    for (int64_t h = 0; h < heads; h++) {
        const float *qh = q + h * hd, *kh = k + h * head_stride, *vh = v + h * head_stride;
        for (int64_t j = 0; j < keys; j++) scores[j] = dot(qh, kh + j * hd, hd);
        if (extra_k) scores[keys] = dot(qh, extra_k + h * hd, hd);
        for (int64_t j = 0; j < n; j++) scores[j] /= scale;
        if (bias)
            for (int64_t j = 0; j < keys; j++) scores[j] += bias[j];
        softmax(scores, n);
        weighted(scores, vh, keys, hd, out + h * hd);
        if (extra_k) extra_add(scores[keys], extra_v + h * hd, hd, out + h * hd);
    }
}

/* Input `index`'s data and dims (up to 4; rank returned, -1 on failure). */
static int64_t input(void *context, size_t index, const float **data, int64_t *dims) {
    const void *value = NULL;
    void *info = NULL;
    size_t rank = 0;
    op_status_t status = OP_CALL(OP_KERNEL_CONTEXT_GET_INPUT, op_status_t (*)(void *, size_t, const void **))(
        context, index, &value);
    if (status || !value) goto fail;
    if ((status = OP_CALL(OP_GET_TENSOR_TYPE_AND_SHAPE, op_status_t (*)(const void *, void **))(value, &info)))
        goto fail;
    if ((status = OP_CALL(OP_GET_DIMENSIONS_COUNT, op_status_t (*)(const void *, size_t *))(info, &rank)) ||
        rank > 4 ||
        (status = OP_CALL(OP_GET_DIMENSIONS, op_status_t (*)(const void *, int64_t *, size_t))(info, dims, rank)))
        goto fail;
    OP_CALL(OP_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, void (*)(void *))(info);
    info = NULL;
    if ((status = OP_CALL(OP_GET_TENSOR_MUTABLE_DATA, op_status_t (*)(const void *, void **))(value, (void **)data)))
        goto fail;
    return (int64_t)rank;
fail:
    if (status) OP_CALL(OP_RELEASE_STATUS, void (*)(op_status_t))(status);
    if (info) OP_CALL(OP_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, void (*)(void *))(info);
    return -1;
}

static float *output_at(void *context, size_t index, int64_t rows, int64_t width) {
    int64_t dims[2] = {rows, width};
    void *value = NULL, *data = NULL;
    op_status_t status = OP_CALL(OP_KERNEL_CONTEXT_GET_OUTPUT, op_status_t (*)(void *, size_t, const int64_t *,
                                                                                size_t, void **))(
        context, index, dims, 2, &value);
    if (!status) status = OP_CALL(OP_GET_TENSOR_MUTABLE_DATA, op_status_t (*)(void *, void **))(value, &data);
    if (status) {
        OP_CALL(OP_RELEASE_STATUS, void (*)(op_status_t))(status);
        return NULL;
    }
    return (float *)data;
}

static float *output(void *context, int64_t rows, int64_t width) { return output_at(context, 0, rows, width); }

/* A kernel cannot return an error at OP_VERSION; inputs whose shapes disagree (which the exported
 * graphs cannot produce) give an output of NaN, which every parity check and the beam step refuse. */
/* Inputs 0, 1, ... of the ranks `ranks` names ("24": a matrix, then a rank-4 tensor): their data and
 * dimensions into data[i] and dims[i]; 0 if one is missing or of another rank. */
static int inputs(void *context, const char *ranks, const float **data, int64_t (*dims)[4]) {
    for (size_t i = 0; ranks[i]; i++)
        if (input(context, i, &data[i], dims[i]) != ranks[i] - '0') return 0;
    return 1;
}

/* A bias's middle dimensions ([n, 1, 1, keys]): anything else is read as if it were that layout. */
static int unit_middle(const int64_t *dims) { return dims[1] == 1 && dims[2] == 1; }

static void poison(void *context, int64_t rows, int64_t width) {
    float *out = rows >= 0 && width >= 0 ? output(context, rows, width) : NULL;
    for (int64_t i = 0; out && i < rows * width; i++) out[i] = NAN;
}

static void self_compute(void *kernel, void *context) {
    (void)kernel;
    const float *in[6];
    int64_t d[6][4];
    if (!inputs(context, "244444", in, d)) return poison(context, 0, 0);
    const float *q = in[0], *pk = in[1], *pv = in[2], *nk = in[3], *nv = in[4], *bias = in[5];
    const int64_t *dq = d[0], *dk = d[1], *dv = d[2], *dnk = d[3], *dnv = d[4], *db = d[5];
    int64_t rows = dq[0], width = dq[1], heads = dk[1], keys = dk[2], hd = dk[3];
    if (dk[0] != rows || heads * hd != width || memcmp(dk, dv, sizeof d[0]) || dnk[0] != rows || dnk[1] != heads ||
        dnk[2] != 1 || dnk[3] != hd || memcmp(dnk, dnv, sizeof d[0]) || db[0] != rows || !unit_middle(db) ||
        db[3] != keys || keys > MAX_KEYS || hd > MAX_HEAD_DIM)
        return poison(context, rows, width);
    float *out = output(context, rows, width);
    if (!out) return;
    float scale = sqrtf((float)hd);
    for (int64_t r = 0; r < rows; r++) {
        int64_t cache = r * heads * keys * hd;
        attend(q + r * width, pk + cache, pv + cache, keys * hd, bias + r * keys, keys, nk + r * width,
               nv + r * width, heads, hd, scale, out + r * width);
    }
}

/* Each row's query against the keys and values of its place (place[r], or r / per where place is
 * NULL: the grouped operator's rows) of k and v ([places, heads, keys, hd], checked by the caller). */
static void cross_rows(void *context, const float *q, const float *k, const float *v, const float *bias,
                       const int64_t *dq, const int64_t *dk, const int64_t *place, int64_t per) {
    int64_t rows = dq[0], width = dq[1], heads = dk[1], keys = dk[2], hd = dk[3];
    float *out = output(context, rows, width);
    if (!out) return;
    float scale = sqrtf((float)hd);
    for (int64_t r = 0; r < rows; r++) {
        int64_t s = place ? place[r] : r / per, block = s * heads * keys * hd;
        attend(q + r * width, k + block, v + block, keys * hd, bias + s * keys, keys, NULL, NULL, heads, hd,
               scale, out + r * width);
    }
}

static void cross_compute(void *kernel, void *context) {
    (void)kernel;
    const float *in[4];
    int64_t d[4][4];
    if (!inputs(context, "2444", in, d)) return poison(context, 0, 0);
    const float *q = in[0], *k = in[1], *v = in[2], *bias = in[3];
    const int64_t *dq = d[0], *dk = d[1], *dv = d[2], *db = d[3];
    int64_t rows = dq[0], width = dq[1], n = dk[0], heads = dk[1], keys = dk[2], hd = dk[3];
    if (n <= 0 || rows % n || heads * hd != width || memcmp(dk, dv, sizeof d[0]) || db[0] != n || !unit_middle(db) ||
        db[3] != keys ||
        keys > MAX_KEYS || hd > MAX_HEAD_DIM)
        return poison(context, rows, width);
    cross_rows(context, q, k, v, bias, dq, dk, NULL, rows / n);
}

static void indexed_compute(void *kernel, void *context) {
    (void)kernel;
    const float *in[5];
    int64_t d[5][4];
    if (!inputs(context, "24441", in, d)) return poison(context, 0, 0);
    const float *q = in[0], *k = in[1], *v = in[2], *bias = in[3];
    const int64_t *place = (const int64_t *)in[4]; /* input 4 is int64 (indexed_input_type) */
    const int64_t *dq = d[0], *dk = d[1], *dv = d[2], *db = d[3], *dr = d[4];
    int64_t rows = dq[0], width = dq[1], n = dk[0], heads = dk[1], keys = dk[2], hd = dk[3];
    if (dr[0] != rows || heads * hd != width || memcmp(dk, dv, sizeof d[0]) || db[0] != n || !unit_middle(db) ||
        db[3] != keys ||
        keys > MAX_KEYS || hd > MAX_HEAD_DIM)
        return poison(context, rows, width);
    for (int64_t r = 0; r < rows; r++)
        if (place[r] < 0 || place[r] >= n) return poison(context, rows, width);
    cross_rows(context, q, k, v, bias, dq, dk, place, 1);
}

/* The additive bias a boolean mask row stands for (mask_bias in attention.py): 0 where the key may be
 * attended, the lowest float where not; s + 0 is s and s + lowest rounds to lowest, so the scores are
 * those of the bias operators bit for bit. */
static void mask_row_bias(const uint8_t *mask, int64_t keys, float *bias) {
    for (int64_t j = 0; j < keys; j++) bias[j] = mask[j] ? 0.0f : -FLT_MAX;
}

/* Output `index` with the `rank` dimensions `dims` (NULL on failure). */
static float *output_dims(void *context, size_t index, const int64_t *dims, size_t rank) {
    void *value = NULL, *data = NULL;
    op_status_t status = OP_CALL(OP_KERNEL_CONTEXT_GET_OUTPUT, op_status_t (*)(void *, size_t, const int64_t *,
                                                                                size_t, void **))(
        context, index, dims, rank, &value);
    if (!status) status = OP_CALL(OP_GET_TENSOR_MUTABLE_DATA, op_status_t (*)(void *, void **))(value, &data);
    if (status) {
        OP_CALL(OP_RELEASE_STATUS, void (*)(op_status_t))(status);
        return NULL;
    }
    return (float *)data;
}

/* StepAttentionQKV's three outputs all NaN (poison's, for an operator with the cache entries too). */
static void qkv_poison(void *context, int64_t rows, int64_t heads, int64_t hd) {
    int64_t entry[4] = {rows, heads, 1, hd};
    poison(context, rows, heads * hd);
    for (size_t i = 1; i < 3; i++) {
        float *out = rows >= 0 && heads >= 0 && hd >= 0 ? output_dims(context, i, entry, 4) : NULL;
        for (int64_t j = 0; out && j < rows * heads * hd; j++) out[j] = NAN;
    }
}

static void qkv_compute(void *kernel, void *context) {
    (void)kernel;
    const float *in[4];
    int64_t d[4][4];
    if (!inputs(context, "2442", in, d)) return qkv_poison(context, 0, 0, 0);
    const float *qkv = in[0], *pk = in[1], *pv = in[2];
    const uint8_t *mask = (const uint8_t *)in[3]; /* input 3 is bool (qkv_input_type) */
    const int64_t *dx = d[0], *dk = d[1], *dv = d[2], *dm = d[3];
    int64_t rows = dx[0], heads = dk[1], keys = dk[2], hd = dk[3], width = heads * hd;
    if (dk[0] != rows || dx[1] != 3 * width || memcmp(dk, dv, sizeof d[0]) || dm[0] != rows || dm[1] != keys ||
        keys > MAX_KEYS || hd > MAX_HEAD_DIM)
        return qkv_poison(context, rows, heads, hd);
    int64_t entry[4] = {rows, heads, 1, hd};
    float *out = output(context, rows, width), *nk = output_dims(context, 1, entry, 4),
          *nv = output_dims(context, 2, entry, 4);
    if (!out || !nk || !nv) return;
    float scale = sqrtf((float)hd), bias[MAX_KEYS];
    for (int64_t r = 0; r < rows; r++) {
        const float *x = qkv + r * 3 * width;
        int64_t cache = r * heads * keys * hd;
        memcpy(nk + r * width, x + width, (size_t)width * sizeof *nk);
        memcpy(nv + r * width, x + 2 * width, (size_t)width * sizeof *nv);
        mask_row_bias(mask + r * keys, keys, bias);
        attend(x, pk + cache, pv + cache, keys * hd, bias, keys, x + width, x + 2 * width, heads, hd, scale,
               out + r * width);
    }
}

static void indexed_masked_compute(void *kernel, void *context) {
    (void)kernel;
    const float *in[5];
    int64_t d[5][4];
    if (!inputs(context, "24421", in, d)) return poison(context, 0, 0);
    const float *q = in[0], *k = in[1], *v = in[2];
    const uint8_t *mask = (const uint8_t *)in[3];  /* bool (indexed_masked_input_type) */
    const int64_t *place = (const int64_t *)in[4]; /* int64 */
    const int64_t *dq = d[0], *dk = d[1], *dv = d[2], *dm = d[3], *dr = d[4];
    int64_t rows = dq[0], width = dq[1], n = dk[0], heads = dk[1], keys = dk[2], hd = dk[3];
    if (dr[0] != rows || heads * hd != width || memcmp(dk, dv, sizeof d[0]) || dm[0] != n || dm[1] != keys ||
        keys > MAX_KEYS || hd > MAX_HEAD_DIM)
        return poison(context, rows, width);
    for (int64_t r = 0; r < rows; r++)
        if (place[r] < 0 || place[r] >= n) return poison(context, rows, width);
    float *out = output(context, rows, width);
    if (!out) return;
    float scale = sqrtf((float)hd), bias[MAX_KEYS];
    int64_t last = -1;
    for (int64_t r = 0; r < rows; r++) {
        int64_t s = place[r], block = s * heads * keys * hd;
        if (s != last) mask_row_bias(mask + s * keys, keys, bias); /* a sentence's rows come together */
        last = s;
        attend(q + r * width, k + block, v + block, keys * hd, bias, keys, NULL, NULL, heads, hd, scale,
               out + r * width);
    }
}

/* Each sentence's positions against its own positions: qkv [n, keys, 3 * heads, hd] holds position
 * j's query, key and value heads side by side (the encoder layer's one projection, viewed); each
 * sentence's keys and values are first laid out per head ([heads, keys, hd], a few kilobytes) so that
 * attend() reads them as the decoder's operators do. Padded positions are queries like the others
 * (their rows are never read); the bias masks them as keys. */
static void encoder_compute(void *kernel, void *context) {
    (void)kernel;
    const float *in[2];
    int64_t d[2][4];
    if (!inputs(context, "44", in, d)) return poison(context, 0, 0);
    const float *qkv = in[0], *bias = in[1];
    const int64_t *dx = d[0], *db = d[1];
    int64_t n = dx[0], keys = dx[1], heads = dx[2] / 3, hd = dx[3], width = heads * hd;
    if (dx[2] % 3 || db[0] != n || !unit_middle(db) || db[3] != keys || keys > MAX_KEYS ||
        hd > MAX_HEAD_DIM)
        return poison(context, n * keys, width);
    float *out = output(context, n * keys, width);
    if (!out || n * keys * width == 0) return;
    float *k = malloc(2 * (size_t)(keys * width) * sizeof *k);
    if (!k) return poison(context, n * keys, width);
    float *v = k + keys * width, scale = sqrtf((float)hd);
    for (int64_t s = 0; s < n; s++) {
        const float *x = qkv + s * keys * 3 * width;
        for (int64_t j = 0; j < keys; j++)
            for (int64_t h = 0; h < heads; h++) {
                memcpy(k + (h * keys + j) * hd, x + j * 3 * width + width + h * hd, (size_t)hd * sizeof *k);
                memcpy(v + (h * keys + j) * hd, x + j * 3 * width + 2 * width + h * hd, (size_t)hd * sizeof *v);
            }
        for (int64_t i = 0; i < keys; i++)
            attend(x + i * 3 * width, k, v, keys * hd, bias + s * keys, keys, NULL, NULL, heads, hd, scale,
                   out + (s * keys + i) * width);
    }
    free(k);
}

/* One row of AddLayerNorm: sum = x + y, normed = (sum - mean) / sqrt(var + eps) * gamma + beta, mean
 * and (biased) variance over the row's `width` values, two passes, partial sums in LANES lanes. */
static void add_norm_row(const float *x, const float *y, const float *gamma, const float *beta, float eps,
                         int64_t width, float *sum, float *normed) {
    float lane[LANES] = {0};
    int64_t d = 0;
    for (int64_t i = 0; i < width; i++) sum[i] = x[i] + y[i];
    for (; d + LANES <= width; d += LANES)
        for (int l = 0; l < LANES; l++) lane[l] += sum[d + l];
    float total = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; d < width; d++) total += sum[d];
    float mean = total / (float)width;
    for (int l = 0; l < LANES; l++) lane[l] = 0.0f;
    for (d = 0; d + LANES <= width; d += LANES)
        for (int l = 0; l < LANES; l++) lane[l] += (sum[d + l] - mean) * (sum[d + l] - mean);
    float squares = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; d < width; d++) squares += (sum[d] - mean) * (sum[d] - mean);
    float scale = 1.0f / sqrtf(squares / (float)width + eps);
    for (int64_t i = 0; i < width; i++) normed[i] = (sum[i] - mean) * scale * gamma[i] + beta[i];
}

#ifdef HAVE_AVX2_PATH
/* add_norm_row for width a multiple of 8: AVX2, the same two passes 8 lanes at a time, each sum in
 * two independent accumulators (one chain of dependent adds bounds a pass by their latency; fused
 * multiply-adds: agrees with add_norm_row to float rounding). */
__attribute__((target("avx2,fma"))) static void add_norm_row_avx2(const float *x, const float *y,
                                                                  const float *gamma, const float *beta,
                                                                  float eps, int64_t width, float *sum,
                                                                  float *normed) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 2 * LANES <= width; d += 2 * LANES) {
        __m256 s0 = _mm256_add_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d));
        __m256 s1 = _mm256_add_ps(_mm256_loadu_ps(x + d + LANES), _mm256_loadu_ps(y + d + LANES));
        _mm256_storeu_ps(sum + d, s0);
        _mm256_storeu_ps(sum + d + LANES, s1);
        a0 = _mm256_add_ps(a0, s0);
        a1 = _mm256_add_ps(a1, s1);
    }
    for (; d < width; d += LANES) {
        __m256 s0 = _mm256_add_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d));
        _mm256_storeu_ps(sum + d, s0);
        a0 = _mm256_add_ps(a0, s0);
    }
    const __m256 mean = _mm256_set1_ps(lanes_total(_mm256_add_ps(a0, a1)) / (float)width);
    a0 = a1 = _mm256_setzero_ps();
    for (d = 0; d + 2 * LANES <= width; d += 2 * LANES) {
        __m256 c0 = _mm256_sub_ps(_mm256_loadu_ps(sum + d), mean);
        __m256 c1 = _mm256_sub_ps(_mm256_loadu_ps(sum + d + LANES), mean);
        a0 = _mm256_fmadd_ps(c0, c0, a0);
        a1 = _mm256_fmadd_ps(c1, c1, a1);
    }
    for (; d < width; d += LANES) {
        __m256 c0 = _mm256_sub_ps(_mm256_loadu_ps(sum + d), mean);
        a0 = _mm256_fmadd_ps(c0, c0, a0);
    }
    const __m256 scale = _mm256_set1_ps(1.0f / sqrtf(lanes_total(_mm256_add_ps(a0, a1)) / (float)width + eps));
    for (d = 0; d < width; d += LANES) {
        __m256 c = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(sum + d), mean), scale);
        _mm256_storeu_ps(normed + d, _mm256_fmadd_ps(c, _mm256_loadu_ps(gamma + d), _mm256_loadu_ps(beta + d)));
    }
}

#endif

static void add_norm_compute(void *kernel, void *context) {
    (void)kernel;
    const float *in[5];
    int64_t d[5][4];
    if (!inputs(context, "22111", in, d)) return poison(context, 0, 0);
    const float *x = in[0], *y = in[1], *gamma = in[2], *beta = in[3], *eps = in[4];
    const int64_t *dx = d[0], *dy = d[1], *dg = d[2], *db = d[3], *de = d[4];
    int64_t rows = dx[0], width = dx[1];
    if (dy[0] != rows || dy[1] != width || dg[0] != width || db[0] != width || de[0] != 1 || width <= 0) {
        float *sum = output_at(context, 1, rows, width);
        for (int64_t i = 0; sum && i < rows * width; i++) sum[i] = NAN;
        return poison(context, rows, width);
    }
    float *sum = output_at(context, 0, rows, width), *normed = output_at(context, 1, rows, width);
    if (!sum || !normed) return;
#ifdef HAVE_AVX2_PATH
    if (avx2_cpu() && width % 8 == 0) {
        for (int64_t r = 0; r < rows; r++)
            add_norm_row_avx2(x + r * width, y + r * width, gamma, beta, eps[0], width, sum + r * width,
                              normed + r * width);
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++)
        add_norm_row(x + r * width, y + r * width, gamma, beta, eps[0], width, sum + r * width, normed + r * width);
}

static void *create_kernel(const custom_op_t *op, const void *api, const void *info) {
    (void)api;
    (void)info;
    return (void *)op; /* stateless: any non-NULL handle */
}
static void destroy_kernel(void *kernel) { (void)kernel; }
static const char *cpu_provider(const custom_op_t *op) {
    (void)op;
    return "CPUExecutionProvider";
}
static int float_type(const custom_op_t *op, size_t index) {
    (void)op;
    (void)index;
    return 1; /* ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT */
}
static int indexed_input_type(const custom_op_t *op, size_t index) {
    (void)op;
    return index == 4 ? 7 : 1; /* row_place: ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; the rest float */
}
static int qkv_input_type(const custom_op_t *op, size_t index) {
    (void)op;
    return index == 3 ? 9 : 1; /* cache_mask: ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL; the rest float */
}
static int indexed_masked_input_type(const custom_op_t *op, size_t index) {
    (void)op;
    return index == 3 ? 9 : index == 4 ? 7 : 1; /* src_mask bool, row_place int64, the rest float */
}
static int required(const custom_op_t *op, size_t index) {
    (void)op;
    (void)index;
    return 0; /* INPUT_OUTPUT_REQUIRED */
}
/* The operators' counts and names, each a callback ONNX Runtime asks through the operator. */
#define OP_COUNT(fn, n) \
    static size_t fn(const custom_op_t *op) { \
        (void)op; \
        return n; \
    }
#define OP_NAME(fn, text) \
    static const char *fn(const custom_op_t *op) { \
        (void)op; \
        return text; \
    }
OP_COUNT(one, 1)
OP_COUNT(two, 2)
OP_COUNT(three, 3)
OP_COUNT(four, 4)
OP_COUNT(five, 5)
OP_COUNT(six, 6)
OP_NAME(self_name, "StepSelfAttention")
OP_NAME(cross_name, "GroupedCrossAttention")
OP_NAME(add_norm_name, "AddLayerNorm")
OP_NAME(indexed_name, "IndexedCrossAttention")
OP_NAME(encoder_name, "EncoderSelfAttention")
OP_NAME(qkv_name, "StepAttentionQKV")
OP_NAME(indexed_masked_name, "IndexedCrossAttentionMasked")

static custom_op_t self_op = {OP_VERSION, create_kernel, self_name, cpu_provider, float_type, six,
                              float_type, one, self_compute, destroy_kernel, required, required, {0}};
static custom_op_t cross_op = {OP_VERSION, create_kernel, cross_name, cpu_provider, float_type, four,
                               float_type, one, cross_compute, destroy_kernel, required, required, {0}};
static custom_op_t add_norm_op = {OP_VERSION, create_kernel, add_norm_name, cpu_provider, float_type, five,
                                  float_type, two, add_norm_compute, destroy_kernel, required, required, {0}};
static custom_op_t indexed_op = {OP_VERSION, create_kernel, indexed_name, cpu_provider, indexed_input_type, five,
                                 float_type, one, indexed_compute, destroy_kernel, required, required, {0}};
static custom_op_t encoder_op = {OP_VERSION, create_kernel, encoder_name, cpu_provider, float_type, two,
                                 float_type, one, encoder_compute, destroy_kernel, required, required, {0}};
static custom_op_t qkv_op = {OP_VERSION, create_kernel, qkv_name, cpu_provider, qkv_input_type, four,
                             float_type, three, qkv_compute, destroy_kernel, required, required, {0}};
static custom_op_t indexed_masked_op = {OP_VERSION, create_kernel, indexed_masked_name, cpu_provider,
                                        indexed_masked_input_type, five, float_type, one, indexed_masked_compute,
                                        destroy_kernel, required, required, {0}};
static void *domain; /* one domain for every session of the process (ONNX Runtime keeps a reference) */
static pthread_mutex_t domain_lock = PTHREAD_MUTEX_INITIALIZER;

/* Register the operators on session options `options` with the OrtApi table `table`; NULL on
 * success, else the failed call's OrtStatus (the caller reads and releases it). */
void *kiln_attention_ops(void *options, const void *const *table) {
    op_status_t status = NULL;
    pthread_mutex_lock(&domain_lock);
    ops_api = table;
    if (!domain) {
        void *made = NULL;
        status = OP_CALL(OP_CREATE_CUSTOM_OP_DOMAIN, op_status_t (*)(const char *, void **))(DOMAIN, &made);
        if (!status) status = OP_CALL(OP_CUSTOM_OP_DOMAIN_ADD, op_status_t (*)(void *, custom_op_t *))(made, &self_op);
        if (!status) status = OP_CALL(OP_CUSTOM_OP_DOMAIN_ADD, op_status_t (*)(void *, custom_op_t *))(made, &cross_op);
        if (!status)
            status = OP_CALL(OP_CUSTOM_OP_DOMAIN_ADD, op_status_t (*)(void *, custom_op_t *))(made, &add_norm_op);
        if (!status)
            status = OP_CALL(OP_CUSTOM_OP_DOMAIN_ADD, op_status_t (*)(void *, custom_op_t *))(made, &indexed_op);
        if (!status)
            status = OP_CALL(OP_CUSTOM_OP_DOMAIN_ADD, op_status_t (*)(void *, custom_op_t *))(made, &encoder_op);
        if (!status) status = OP_CALL(OP_CUSTOM_OP_DOMAIN_ADD, op_status_t (*)(void *, custom_op_t *))(made, &qkv_op);
        if (!status)
            status = OP_CALL(OP_CUSTOM_OP_DOMAIN_ADD, op_status_t (*)(void *, custom_op_t *))(made, &indexed_masked_op);
        if (!status) domain = made; /* else kept out of use (and leaked: once, on a broken runtime) */
    }
    if (!status) status = OP_CALL(OP_ADD_CUSTOM_OP_DOMAIN, op_status_t (*)(void *, void *))(options, domain);
    pthread_mutex_unlock(&domain_lock);
    return status;
}

typedef struct {
    const void *const *(*get_api)(uint32_t version);
    const char *(*get_version_string)(void);
} ops_api_base_t;

/* ONNX Runtime's entry point for a custom-operator library (SessionOptions.register_custom_ops_library). */
void *RegisterCustomOps(void *options, const ops_api_base_t *base) {
    const void *const *table = base->get_api(17); /* as native_decoder.API_VERSION: ONNX Runtime 1.17+ */
    return table ? kiln_attention_ops(options, table) : NULL; /* an older runtime: the graph will not load */
}
