/* A whole decoder step in one call: ONNX Runtime's decoder run through its C API, the beam step
 * (kiln_beam_step_packed) and, when no sentence changed its rows, the rows' advance (every cache
 * gathered by beam origin and grown by kiln_gather_grow, positions, next tokens), with no Python
 * between them. serving/decoding/native_decoder.py drives it; the Python step
 * (serving/decoding/stepper.py) stays the definition and does every step this one hands back.
 *
 * ONNX Runtime's C API is a table of function pointers (OrtApi) that only ever grows at its end, so
 * an entry's index is the same in every release that has it. This file declares the indices of the
 * few entries it calls instead of including onnxruntime_c_api.h (which the Python wheel does not
 * ship); the library (onnxruntime/capi/libonnxruntime.so.*, which the wheel does ship) hands the
 * table out through OrtGetApiBase, whose address the Python side passes to kiln_ort_init.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int64_t kiln_beam_step_packed(const int64_t *a);
void *kiln_attention_ops(void *options, const void *const *table); /* attention.c */
void kiln_gather_grow(int64_t rows, int64_t outer, int64_t columns, int64_t lead, int64_t inner, int64_t size,
                      const char *old, const char *new_entries, const int64_t *source, char *out);

/* OrtApi entries (their index in the table). */
enum {
    API_GET_ERROR_MESSAGE = 2,
    API_CREATE_ENV = 3,
    API_CREATE_SESSION = 7,
    API_RUN = 9,
    API_CREATE_SESSION_OPTIONS = 10,
    API_SET_GRAPH_OPTIMIZATION_LEVEL = 23,
    API_SET_INTRA_OP_NUM_THREADS = 24,
    API_SET_INTER_OP_NUM_THREADS = 25,
    API_CREATE_TENSOR_WITH_DATA = 49,
    API_CREATE_CPU_MEMORY_INFO = 69,
    API_RELEASE_ENV = 92,
    API_RELEASE_STATUS = 93,
    API_RELEASE_MEMORY_INFO = 94,
    API_RELEASE_SESSION = 95,
    API_RELEASE_VALUE = 96,
    API_RELEASE_SESSION_OPTIONS = 100,
    API_ADD_SESSION_CONFIG_ENTRY = 130,
};

typedef void *status_t; /* OrtStatus*: NULL is success */
typedef struct {
    const void *const *(*get_api)(uint32_t version);
    const char *(*get_version_string)(void);
} api_base_t;

static const void *const *api;
static void *env, *cpu_memory;

#define CALL(index, type) ((type)api[index])

/* Copy a failed call's message into error (size bytes) and free the status; 1 if it failed. */
static int failed(status_t status, char *error, int64_t size) {
    if (!status) return 0;
    const char *message = CALL(API_GET_ERROR_MESSAGE, const char *(*)(status_t))(status);
    snprintf(error, (size_t)size, "%s", message ? message : "ONNX Runtime failed");
    CALL(API_RELEASE_STATUS, void (*)(status_t))(status);
    return 1;
}

/* The table of the library whose OrtGetApiBase is at `get_api_base`, one logging environment and the
 * CPU memory description of caller-owned buffers. 0 on success. */
int64_t kiln_ort_init(void *get_api_base, int64_t version, char *error, int64_t size) {
    if (api) return 0;
    const api_base_t *base = ((const api_base_t *(*)(void))get_api_base)();
    const void *const *table = base ? base->get_api((uint32_t)version) : NULL;
    if (!table) {
        snprintf(error, (size_t)size, "this ONNX Runtime does not serve C API version %lld", (long long)version);
        return -1;
    }
    api = table;
    void *new_env = NULL, *memory = NULL;
    if (failed(CALL(API_CREATE_ENV, status_t (*)(int, const char *, void **))(3, "kiln", &new_env), error, size))
        goto fail; /* 3: ORT_LOGGING_LEVEL_ERROR */
    /* OrtArenaAllocator (1), OrtMemTypeDefault (0): where a caller-owned CPU buffer lives */
    if (failed(CALL(API_CREATE_CPU_MEMORY_INFO, status_t (*)(int, int, void **))(1, 0, &memory), error, size))
        goto fail;
    env = new_env;
    cpu_memory = memory;
    return 0;
fail:
    if (new_env) CALL(API_RELEASE_ENV, void (*)(void *))(new_env);
    api = NULL;
    return -1;
}

/* A session over the model at `path` with these thread counts, graph optimization level (ONNX Runtime's
 * GraphOptimizationLevel: 99 all, the Python API's default; 0 none, for a graph optimized already whose
 * mapped weights a rewrite would copy) and session config entries; NULL (and the message in error) on
 * failure. */
void *kiln_ort_session(const char *path, int64_t intra, int64_t inter, int64_t level, const char *const *keys,
                       const char *const *values, int64_t entries, char *error, int64_t size) {
    void *options = NULL, *session = NULL;
    if (failed(CALL(API_CREATE_SESSION_OPTIONS, status_t (*)(void **))(&options), error, size)) return NULL;
    if (failed(CALL(API_SET_INTRA_OP_NUM_THREADS, status_t (*)(void *, int))(options, (int)intra), error, size) ||
        failed(CALL(API_SET_INTER_OP_NUM_THREADS, status_t (*)(void *, int))(options, (int)inter), error, size) ||
        failed(CALL(API_SET_GRAPH_OPTIMIZATION_LEVEL, status_t (*)(void *, int))(options, (int)level), error, size))
        goto done;
    /* the fused attention operators (attention.c), for a step graph that uses them; unused otherwise.
     * Not fatal here: a graph that needs them then fails to open, saying which operator is missing. */
    status_t ops = kiln_attention_ops(options, api);
    if (ops) CALL(API_RELEASE_STATUS, void (*)(status_t))(ops);
    for (int64_t i = 0; i < entries; i++)
        if (failed(CALL(API_ADD_SESSION_CONFIG_ENTRY, status_t (*)(void *, const char *, const char *))(
                       options, keys[i], values[i]),
                   error, size))
            goto done;
    failed(CALL(API_CREATE_SESSION, status_t (*)(void *, const char *, void *, void **))(env, path, options, &session),
           error, size);
done:
    CALL(API_RELEASE_SESSION_OPTIONS, void (*)(void *))(options);
    return session;
}

void kiln_ort_release_session(void *session) {
    if (session) CALL(API_RELEASE_SESSION, void (*)(void *))(session);
}

static int64_t element_size(int64_t type) {
    switch (type) {
    case 1: return 4;  /* float */
    case 7: return 8;  /* int64 */
    case 9: return 1;  /* bool */
    case 11: return 8; /* double */
    case 6: return 4;  /* int32 */
    case 10: return 2; /* float16 */
    default: return 0;
    }
}

/* inputs and outputs of a decoder (native_decoder.MAX_TENSORS, which steps a decoder with more in Python):
 * a Transformer's step has 6 a layer and 6 more, so 64 failed every step of one with 10 layers */
#define MAX_TENSORS 256
#define TENSOR 9 /* fields of a tensor in the plan: name, data, type, rank, dims[4], kind (below) */
/* FIXED: as given (the encoder store or rows); ROWS: data as given, one row per decoder row (outputs) */
enum { FIXED = 0, TOKENS = 1, POSITIONS = 2, MASK = 3, ROWS = 4, ROW_PLACE = 5, CACHE = 16 /* + index */ };
#define CACHE_FIELDS 5 /* outer, inner, element size, index of the output with its entries, axis */

/* One decoder run over n_in inputs and n_out outputs described by `t` (TENSOR fields each, kind
 * ignored), every buffer caller-owned (outputs written in place). 0 on success. */
static int run(void *session, int64_t n_in, int64_t n_out, const int64_t *t, char *error, int64_t size) {
    const char *names[MAX_TENSORS] = {0};
    void *values[MAX_TENSORS] = {0};
    int64_t n = n_in + n_out, made = 0, rc = -1;
    static int64_t empty; /* a tensor with no elements still needs a valid address */
    for (; made < n; made++) {
        const int64_t *d = t + made * TENSOR;
        int64_t elements = 1, rank = d[3], bytes = element_size(d[2]);
        for (int64_t j = 0; j < rank; j++) elements *= d[4 + j];
        names[made] = (const char *)(intptr_t)d[0];
        if (!bytes || rank > 4) {
            snprintf(error, (size_t)size, "tensor %s: unsupported type %lld or rank %lld", names[made],
                     (long long)d[2], (long long)rank);
            goto release;
        }
        void *data = elements ? (void *)(intptr_t)d[1] : (void *)&empty;
        if (failed(CALL(API_CREATE_TENSOR_WITH_DATA,
                        status_t (*)(const void *, void *, size_t, const int64_t *, size_t, int, void **))(
                       cpu_memory, data, (size_t)(elements * bytes), d + 4, (size_t)rank, (int)d[2], &values[made]),
                   error, size))
            goto release;
    }
    if (!failed(CALL(API_RUN, status_t (*)(void *, const void *, const char *const *, const void *const *, size_t,
                                           const char *const *, size_t, void **))(
                     session, NULL, names, (const void *const *)values, (size_t)n_in, names + n_in,
                     (size_t)n_out, values + n_in),
                 error, size))
        rc = 0;
release:
    for (int64_t i = 0; i < made; i++)
        if (values[i]) CALL(API_RELEASE_VALUE, void (*)(void *))(values[i]);
    return rc;
}

#define P(i, type) ((type)(intptr_t)plan[i])
#define D(i, type) ((type)(intptr_t)dyn[i])
#define BEAM(args, i, type) ((type)(intptr_t)(args)[i])

/* Decode steps over the caller's buffers, their arguments in two int64 arrays (addresses as integers).
 *
 * `plan`, what stays while the batch's layout does: [0] session, [1] inputs, [2] outputs (the first is
 * the log-probs the beam step reads), [3] result int64[9] (below), [4] 1 if the rows are the search
 * rows in search order (indexed: a step may change their number here; 0: never), [5] each physical
 * row's sentence [P], [6] holder: the search row each physical row holds [P] (0: never advance here;
 * indexed: 0, 1, 2, ... for the most rows of any step), [7] slot: each search row's physical row (the
 * same when indexed), [8] P (physical rows), [9] S (sentences), [10] scratch int64 [S + the most
 * rows of any step], [11] caches, [12] stop flag
 * (int64*: stop after the current step once it is nonzero; 0: none), [13] scratch int64 [S] for the
 * step counts of steps after the first, [14] hold: the steps a call may run on after the first step
 * that left a sentence without rows (indexed rows only; 0: that step is the call's last); then TENSOR
 * fields per input and per output (the data, and
 * the dimension on the cache axis, of TOKENS, POSITIONS, MASK and CACHE tensors are filled here), then
 * CACHE_FIELDS per cache.
 *
 * `dyn`, what changes at every call: [0] the beam step's packed arguments (kiln_beam_step_packed; it
 * reads scores [9], prefixes [10], step [15] and writes rows [16] ... and the kept rows' origin [21],
 * tokens [22], scores [23], prefixes [24]), [1] a second such array whose outputs differ (0: one step
 * at most), [2] steps at most, [3] column, [4] joined [S] (each sentence's first cache column; lead
 * subtracted at each advance), [5] tokens [P], [6] positions [P], [7]/[8] next tokens, [9]/[10] next
 * positions (two buffers each: one advance writes the first, the next the second, and so on),
 * [11] the cache mask bool [P, column] written here before each run (0: the decoder takes none; room
 * for the columns of every step checked by the caller), then per cache: its buffer [P, outer, column, inner] and the two it advances into (room for the
 * columns of every step checked by the caller), then `found` (int64*, 0: none) and its capacity in records:
 * the finished hypotheses offered by the steps before the last, in order, found[0] of them, each a record
 * of 4 + W1 int64 after it: sentence, length (EOS included), raw score and normalized score (double bits),
 * the prefix it extended (W1 tokens, BOS first); then each row's sentence (indexed: int64 [the most
 * rows], written by the caller for the first step and here when the rows change; 0: plan[5]), each
 * row's place in the encoder store (int64 [the most rows], the ROW_PLACE tensor's data; indexed:
 * rewritten here when the rows change; 0: no such input) and each sentence's place (indexed: int64 [S]).
 *
 * A step's rows advance here while every sentence keeps its rows (none finished or failed) and the
 * plan has a holder, and, with indexed rows, whatever the row counts do (joiners widening from one row
 * to their beam, sentences narrowing, finished ones leaving): the next step then runs the rows the beam
 * step kept, in search order. A sentence left without rows keeps its place in the batch with none
 * (the beam step skips it, no row reads its place) until the call ends and the caller retires it:
 * the call ends `hold` steps after the first step that left one (at once with hold 0), so one return
 * to Python retires the sentences of several steps. Steps go on while they advance, the finished hypotheses they offer fit in
 * `found` (the last step's stay in the beam step's outputs), the stop flag stays 0 and fewer than
 * dyn[2] ran. result: [0] steps run, [1] 1 if the last one advanced here (else the caller advances
 * it, over its outputs), [2] the rows the last beam step kept, [3] the cache column count, [4] which
 * beam arguments the last step used (0: dyn[0], 1: dyn[1]), [5] advances made (the current tokens,
 * positions and caches are in their first buffers when odd), [6] 1 if the rows changed here (indexed),
 * [7] the rows after the last advance, [8] the decoder rows the steps ran, summed over them (a step's
 * rows are the physical rows its decoder call ran: a call that widens or narrows them runs other
 * counts at other steps).
 * Returns 0, or -1 with ONNX Runtime's message in error. */
int64_t kiln_decode_step(const int64_t *plan, int64_t *dyn, char *error, int64_t size) {
    const int64_t n_in = plan[1], n_out = plan[2], sentences = plan[9], n_caches = plan[11], indexed = plan[4];
    const int64_t n_tensors = n_in + n_out, *caches = plan + 15 + n_tensors * TENSOR, hold = plan[14];
    int64_t *result = P(3, int64_t *), *joined = D(4, int64_t *), *before = P(10, int64_t *);
    int64_t *source = before + sentences, *steps_scratch = P(13, int64_t *);
    const int64_t *holder = P(6, const int64_t *), *slot = P(7, const int64_t *);
    int64_t *row_sentence = D(14 + 3 * n_caches, int64_t *), *row_place = D(15 + 3 * n_caches, int64_t *);
    const int64_t *owner = D(16 + 3 * n_caches, const int64_t *);
    const int64_t *sentence = row_sentence ? row_sentence : P(5, const int64_t *);
    int64_t physical = plan[8], changed = 0;
    const volatile int64_t *stop = P(12, const volatile int64_t *);
    uint8_t *mask = D(11, uint8_t *);
    int64_t *beam_args[2] = {D(0, int64_t *), D(1, int64_t *)};
    int64_t tensors[MAX_TENSORS * TENSOR];
    const char *cache_data[MAX_TENSORS];
    const int64_t *tokens = D(5, const int64_t *), *positions = D(6, const int64_t *);
    int64_t column = dyn[3], steps = 0, advances = 0, kept = 0, which = 0, advanced = 0, first_left = -1;
    int64_t rows_run = 0; /* result[8] */
    if (n_tensors > MAX_TENSORS || n_caches > MAX_TENSORS) {
        snprintf(error, (size_t)size, "the decoder has %lld inputs and outputs; at most %d", (long long)n_tensors,
                 MAX_TENSORS);
        return -1;
    }
    if (indexed && (!row_sentence || !owner || !holder)) {
        snprintf(error, (size_t)size, "indexed rows need each row's sentence, the sentences' places and a holder");
        return -1;
    }
    memcpy(tensors, plan + 15, (size_t)(n_tensors * TENSOR) * sizeof(int64_t));
    for (int64_t i = 0; i < n_caches; i++) cache_data[i] = (const char *)(intptr_t)dyn[12 + 3 * i];
    for (;;) {
        int64_t *args = beam_args[which];
        for (int64_t i = 0; i < n_tensors; i++) { /* this step's data, row counts and cache widths */
            int64_t *t = tensors + i * TENSOR, kind = t[8];
            if (kind != FIXED) t[4] = physical; /* one row per decoder row */
            if (kind == TOKENS) t[1] = (int64_t)(intptr_t)tokens;
            else if (kind == POSITIONS) t[1] = (int64_t)(intptr_t)positions;
            else if (kind == ROW_PLACE) t[1] = (int64_t)(intptr_t)row_place;
            else if (kind == MASK) {
                t[1] = (int64_t)(intptr_t)mask;
                t[5] = column;
            }
            else if (kind >= CACHE) {
                t[1] = (int64_t)(intptr_t)cache_data[kind - CACHE];
                t[4 + caches[(kind - CACHE) * CACHE_FIELDS + 4]] = column;
            }
        }
        if (mask)
            for (int64_t r = 0; r < physical; r++) {
                int64_t first = joined[sentence[r]];
                for (int64_t c = 0; c < column; c++) mask[r * column + c] = c >= first;
            }
        rows_run += physical;
        if (run(P(0, void *), n_in, n_out, tensors, error, size)) return -1;
        int64_t *rows = BEAM(args, 16, int64_t *);
        int steady = holder != NULL;
        for (int64_t s = 0; s < sentences; s++) { /* a sentence without rows: one held (indexed) */
            before[s] = rows[s];
            steady &= rows[s] > 0 || (indexed && hold > 0);
        }
        kept = kiln_beam_step_packed(args);
        steps++;
        int same = 1;
        for (int64_t s = 0; s < sentences; s++) {
            same &= rows[s] == before[s];
            if (first_left < 0 && before[s] > 0 && rows[s] <= 0) first_left = steps;
        }
        /* rows that change their number advance here only in search order (the rows kept, as kept) */
        steady = steady && (same || indexed);
        advanced = steady;
        if (!steady) break;
        const int64_t laid = same ? physical : kept; /* the rows after this step */
        const int64_t *origin = BEAM(args, 21, const int64_t *), *chosen = BEAM(args, 22, const int64_t *);
        int64_t *next_tokens = D(7 + (advances & 1), int64_t *), *next_positions = D(9 + (advances & 1), int64_t *);
        int64_t lead = column; /* the first column a live sentence still uses */
        for (int64_t s = 0; s < sentences; s++)
            if (rows[s] > 0) lead = joined[s] < lead ? joined[s] : lead;
        for (int64_t r = 0; r < laid; r++) {
            source[r] = slot[origin[holder[r]]];
            next_tokens[r] = chosen[holder[r]];
            next_positions[r] = positions[source[r]] + 1;
        }
        for (int64_t i = 0; i < n_caches; i++) {
            const int64_t *c = caches + i * CACHE_FIELDS;
            const int64_t *entry = tensors + (n_in + c[3]) * TENSOR;
            char *to = D(13 + 3 * i + (advances & 1), char *);
            kiln_gather_grow(laid, c[0], column, lead, c[1], c[2], cache_data[i],
                             (const char *)(intptr_t)entry[1], source, to);
            cache_data[i] = to;
        }
        for (int64_t s = 0; s < sentences; s++) joined[s] -= lead;
        column = column - lead + 1;
        tokens = next_tokens;
        positions = next_positions;
        advances++;
        if (!same) { /* indexed: each row's sentence and place for the rows kept */
            for (int64_t s = 0, r = 0; s < sentences; s++)
                for (int64_t k = 0; k < rows[s]; k++, r++) {
                    row_sentence[r] = s;
                    if (row_place) row_place[r] = owner[s];
                }
            physical = laid;
            changed = 1;
        }
        int64_t offers = *(int64_t *)(intptr_t)(args[30]);
        int held_out = first_left >= 0 && steps - first_left >= hold; /* the held sentences' wait is over */
        if (kept == 0 || held_out || steps >= dyn[2] || !beam_args[1] || (stop && *stop)) break;
        if (offers) { /* kept for the caller in `found`, where they fit, and the steps go on */
            int64_t *found = D(12 + 3 * n_caches, int64_t *), width1 = args[4];
            if (!found || found[0] + offers > dyn[13 + 3 * n_caches]) break;
            const int64_t *prefixes = BEAM(args, 10, const int64_t *); /* this step's, which it extended */
            const int64_t *o_sentence = BEAM(args, 25, const int64_t *), *o_origin = BEAM(args, 26, const int64_t *);
            const int64_t *o_length = BEAM(args, 27, const int64_t *);
            const double *o_score = BEAM(args, 28, const double *), *o_norm = BEAM(args, 29, const double *);
            for (int64_t j = 0; j < offers; j++) {
                int64_t *record = found + 1 + (found[0] + j) * (4 + width1);
                record[0] = o_sentence[j];
                record[1] = o_length[j];
                memcpy(record + 2, o_score + j, sizeof(double));
                memcpy(record + 3, o_norm + j, sizeof(double));
                memcpy(record + 4, prefixes + o_origin[j] * width1, (size_t)width1 * sizeof(int64_t));
            }
            found[0] += offers;
        }
        /* the next step reads this one's kept rows and writes the other arguments' outputs */
        int64_t *next = beam_args[which ^ 1];
        const int64_t *step_in = BEAM(args, 15, const int64_t *);
        for (int64_t s = 0; s < sentences; s++) steps_scratch[s] = step_in[s] + (rows[s] > 0);
        next[9] = args[23];
        next[10] = args[24];
        next[8] = (int64_t)(intptr_t)slot; /* the search rows' physical rows */
        next[15] = (int64_t)(intptr_t)steps_scratch;
        which ^= 1;
    }
    result[0] = steps;
    result[1] = advanced;
    result[2] = kept;
    result[3] = column;
    result[4] = which;
    result[5] = advances;
    result[6] = changed;
    result[7] = physical;
    result[8] = rows_run;
    return 0;
}
#undef P
#undef D
#undef BEAM
