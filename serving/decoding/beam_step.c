/* One beam-search step for every live sentence of a decode batch, compiled: the same arithmetic and
 * the same decisions as serving.decoding.beam_search.step_numpy (its docstring and
 * docs/translator-interface.md define them), without numpy's ~50 calls per step; and, at the end of the
 * file, the decode batch's per-step cache copy (kiln_gather_grow). Loaded through ctypes by
 * serving/decoding/native.py; no Python headers, so any C99 compiler builds it.
 *
 * Arrays are C-contiguous. Rows [R] are in search order (each live sentence's rows contiguous, in
 * sentence order); row_index maps them to rows of log_probs (NULL: the same order). IEEE arithmetic
 * only (never -ffast-math): float32 candidate sums and float64 normalization, as numpy does them.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CHUNK 16 /* columns tested at once against the k-th best before any is looked at alone */

typedef struct {
    float value;
    int64_t index; /* local row * V + token: the flat index numpy sorts ties by */
} cand_t;

/* Offer x (its index above every index already held) to top[0..*count), kept by value descending,
 * ties by lower index: an equal value never displaces an earlier one. */
static void offer(cand_t *top, int64_t *count, int64_t k, float x, int64_t index) {
    int64_t pos = *count;
    if (pos == k) {
        if (!(x > top[k - 1].value)) return;
        pos = k - 1;
    } else {
        (*count)++;
    }
    while (pos > 0 && top[pos - 1].value < x) {
        top[pos] = top[pos - 1];
        pos--;
    }
    top[pos].value = x;
    top[pos].index = index;
}

/* 0 if none of the CHUNK sums score + lp[i] is above bar or NaN: then none can enter a full top k.
 * GCC/Clang vector extensions (SSE2 / NEON): 4 floats per add and compare, the same IEEE sums. */
typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));

static int chunk_may_enter(const float *lp, float score, float bar) {
    f4 vscore = {score, score, score, score}, vbar = {bar, bar, bar, bar};
    i4 hit = {0, 0, 0, 0};
    for (int i = 0; i < CHUNK; i += 4) {
        f4 x;
        memcpy(&x, lp + i, sizeof x);
        hit |= ~((x + vscore) <= vbar); /* all ones where above bar, or NaN */
    }
    return (hit[0] | hit[1] | hit[2] | hit[3]) != 0;
}

/* The best k candidates of one sentence (rows [start, start + rows)); returns 1 if a candidate the
 * masks leave was NaN. Candidates below the float32 lowest value (-inf) are never selected. */
static int select_top(const float *log_probs, int64_t stride, const int64_t *row_index, const float *scores,
                      int64_t start, int64_t rows, int64_t vocab, int64_t eos, int early, int last,
                      cand_t *top, int64_t *count, int64_t k) {
    const float lowest = -3.40282346638528859812e+38F;
    int nan = 0;
    *count = 0;
    for (int64_t j = 0; j < rows; j++) {
        int64_t row = start + j;
        const float *lp = log_probs + (row_index ? row_index[row] : row) * stride;
        float score = scores[row];
        int64_t base = j * vocab;
        if (last) { /* only EOS allowed at max_length - 1 (and not even EOS before min_length) */
            if (early) continue;
            float x = score + lp[eos];
            if (x != x) nan = 1;
            else if (x >= lowest) offer(top, count, k, x, base + eos);
            continue;
        }
        for (int64_t t0 = 0; t0 < vocab; t0 += CHUNK) {
            int64_t t1 = t0 + CHUNK < vocab ? t0 + CHUNK : vocab;
            if (t1 - t0 == CHUNK && *count == k && !chunk_may_enter(lp + t0, score, top[k - 1].value)) continue;
            for (int64_t t = t0; t < t1; t++) {
                float x = score + lp[t];
                if (!(x >= lowest)) { /* -inf, or NaN */
                    if (x != x && !(early && t == eos)) nan = 1;
                    continue;
                }
                if (early && t == eos) continue;
                if (*count == k && !(x > top[k - 1].value)) continue;
                offer(top, count, k, x, base + t);
            }
        }
    }
    return nan;
}

/* Insert norm into the kept list norms[0..*count) (best first) as _keep_best does: after every kept
 * one at least as good, dropping all beyond beam. Returns 1 if it was kept. */
static int keep_best(double *norms, int64_t *count, int64_t beam, double norm) {
    int64_t at = 0;
    while (at < *count && !(norms[at] < norm)) at++;
    if (at >= beam) return 0;
    int64_t end = *count < beam ? *count : beam - 1;
    for (int64_t i = end; i > at; i--) norms[i] = norms[i - 1];
    norms[at] = norm;
    if (*count < beam) (*count)++;
    return 1;
}

/* Advance every live sentence (rows[s] > 0) by one step. In/out per sentence [S]: rows (live rows,
 * replaced by the rows kept), failed, worst, norms [S, B] with counts (the kept finished hypotheses'
 * normalized scores, best first). Out per kept row [<= sum of beam]: origin (row of this call),
 * tokens, scores, prefixes [., W1] (the parent's prefix with this step's token at column step + 1).
 * Out per finished hypothesis kept [<= sum of beam]: its sentence, parent row, length (EOS included),
 * raw score and normalized score. Returns the number of kept rows; *n_offers gets the hypotheses.
 * Scratch: tops [S, k], top_counts [S], nan_sentence [S]. beam <= 32. */
int64_t kiln_beam_step(
    int64_t sentences, int64_t vocab, int64_t eos, int64_t k, int64_t width1, int64_t norms_width,
    const float *log_probs, int64_t stride, const int64_t *row_index, const float *scores,
    const int64_t *prefixes, const int64_t *beam, const int64_t *min_length, const int64_t *max_length,
    const double *divisors, const int64_t *step, int64_t *rows, uint8_t *failed, double *worst,
    double *norms, int64_t *counts, int64_t *out_origin, int64_t *out_tokens, float *out_scores,
    int64_t *out_prefixes, int64_t *offer_sentence, int64_t *offer_origin, int64_t *offer_length,
    double *offer_score, double *offer_norm, int64_t *n_offers, cand_t *tops,
    int64_t *top_counts, uint8_t *nan_sentence) {
    int64_t start = 0, any_nan = 0;
    for (int64_t s = 0; s < sentences; s++) { /* candidates: all sentences first, as numpy fails them */
        top_counts[s] = 0;
        nan_sentence[s] = 0;
        if (rows[s] == 0) continue;
        int early = step[s] < min_length[s], last = step[s] >= max_length[s] - 1;
        nan_sentence[s] = (uint8_t)select_top(log_probs, stride, row_index, scores, start, rows[s], vocab, eos,
                                              early, last, tops + s * k, top_counts + s, k);
        any_nan |= nan_sentence[s];
        start += rows[s];
    }
    int64_t kept = 0, offers = 0;
    start = 0;
    for (int64_t s = 0; s < sentences; s++) {
        int64_t live_rows = rows[s];
        if (live_rows == 0) continue;
        if (nan_sentence[s]) failed[s] = 1;
        cand_t *top = tops + s * k;
        int64_t count = (any_nan && failed[s]) ? 0 : top_counts[s]; /* a poisoned sentence: no candidate */
        int64_t b = beam[s], length = step[s] + 1, first_kept = -1, n_cont = 0;
        int64_t keep_at[32]; /* ranks that continue: at most beam <= 32 */
        int64_t n_keep = 0;
        for (int64_t r = 0; r < count && r < b; r++) { /* finalize EOS among the first beam ranks */
            int64_t token = top[r].index % vocab;
            if (token != eos || !isfinite(top[r].value)) continue;
            double score = (double)top[r].value, norm = score / divisors[s * width1 + length];
            if (!isfinite(norm)) {
                failed[s] = 1;
                continue;
            }
            if (keep_best(norms + s * norms_width, counts + s, b, norm)) {
                offer_sentence[offers] = s;
                offer_origin[offers] = start + top[r].index / vocab;
                offer_length[offers] = length;
                offer_score[offers] = score;
                offer_norm[offers] = norm;
                offers++;
                worst[s] = counts[s] == b ? norms[s * norms_width + b - 1] : -INFINITY;
            }
        }
        for (int64_t r = 0; r < count && r < 2 * b; r++) {
            int64_t token = top[r].index % vocab;
            if (token == eos || !isfinite(top[r].value)) continue;
            n_cont++;
            if (n_cont <= b) {
                keep_at[n_keep++] = r;
                if (first_kept < 0) first_kept = r;
            }
        }
        double best = n_keep ? (double)top[first_kept].value : -INFINITY; /* unused then: done anyway */
        int cannot_improve = best / divisors[s * width1 + length] <= worst[s];
        int done = length >= max_length[s] || n_keep == 0 || cannot_improve || failed[s];
        if (done) n_keep = 0;
        for (int64_t i = 0; i < n_keep; i++) {
            cand_t c = top[keep_at[i]];
            int64_t parent = start + c.index / vocab;
            out_origin[kept] = parent;
            out_tokens[kept] = c.index % vocab;
            out_scores[kept] = c.value;
            memcpy(out_prefixes + kept * width1, prefixes + parent * width1, (size_t)width1 * sizeof(int64_t));
            out_prefixes[kept * width1 + length] = c.index % vocab;
            kept++;
        }
        start += live_rows;
        rows[s] = n_keep;
    }
    *n_offers = offers;
    return kept;
}

#define P(i, type) ((type)(intptr_t)a[i])

/* kiln_beam_step with its 34 arguments in one int64 array, pointers as integers, in its order: the six
 * sizes, log_probs, stride, row_index (0: none), then its 25 arrays from scores to nan_sentence
 * (a[9] .. a[33]); counts (a[20]) is computed here from norms (a[19]: the finite entries of each row).
 * One ctypes argument instead of 34: ~10 us less per call on the Python side. */
int64_t kiln_beam_step_packed(const int64_t *a) {
    const int64_t sentences = a[0], norms_width = a[5];
    const double *norms = P(19, const double *);
    int64_t *counts = P(20, int64_t *);
    for (int64_t s = 0; s < sentences; s++) {
        int64_t c = 0;
        for (int64_t j = 0; j < norms_width; j++) c += norms[s * norms_width + j] > -INFINITY;
        counts[s] = c;
    }
    return kiln_beam_step(a[0], a[1], a[2], a[3], a[4], a[5], P(6, const float *), a[7], P(8, const int64_t *),
                          P(9, const float *), P(10, const int64_t *), P(11, const int64_t *),
                          P(12, const int64_t *), P(13, const int64_t *), P(14, const double *),
                          P(15, const int64_t *), P(16, int64_t *), P(17, uint8_t *), P(18, double *),
                          P(19, double *), counts, P(21, int64_t *), P(22, int64_t *), P(23, float *),
                          P(24, int64_t *), P(25, int64_t *), P(26, int64_t *), P(27, int64_t *),
                          P(28, double *), P(29, double *), P(30, int64_t *), P(31, cand_t *),
                          P(32, int64_t *), P(33, uint8_t *));
}
#undef P

/* A cache after a step, in one pass: out[r] = old[source[r]] without its first `lead` columns, then
 * new[source[r]] (the step's entries, one column). Each array is viewed as [rows, outer, columns,
 * inner] around the cache axis (outer: the dimensions between rows and it, e.g. heads; inner: those
 * after it, e.g. head_dim), so every copy is one contiguous run: numpy's take into the strided column
 * slice of the grown buffer moves the same bytes ~2x slower. Arrays are C-contiguous; `size` is the
 * element size in bytes; source indices are valid rows of old and new. */
void kiln_gather_grow(int64_t rows, int64_t outer, int64_t columns, int64_t lead, int64_t inner, int64_t size,
                      const char *old, const char *new_entries, const int64_t *source, char *out) {
    const int64_t keep = columns - lead, run = inner * size;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t s = source[r];
        for (int64_t o = 0; o < outer; o++) {
            char *to = out + (r * outer + o) * (keep + 1) * run;
            memcpy(to, old + ((s * outer + o) * columns + lead) * run, (size_t)(keep * run));
            memcpy(to + keep * run, new_entries + (s * outer + o) * run, (size_t)run);
        }
    }
}
