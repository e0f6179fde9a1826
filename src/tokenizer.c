/* tokenizer.c: byte-level BPE exact to Hugging Face `tokenizers` (see tokenizer.h and spec/tokenizer.md).
 *
 * Layout of a Tokenizer: every string lives in one arena and is referred to by (offset, length); the vocab is an
 * open-addressing hash from byte-level string to id, the merges an open-addressing hash from the id pair to
 * (rank, merged id), added tokens two byte tries (normalized=false and normalized=true). BPE runs on one piece
 * at a time with a heap keyed by (rank, position), so a long piece costs O(n log n), not O(n^2).
 *
 * tokenizer.json is read by a small scanner of our own for the two big arrays (model.vocab, model.merges: 4.7 MB
 * of strings, where building a cJSON tree alone would take ~40 ms) and by cJSON for the small sections. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"
#include "gguf.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TK_MAX_ID (1 << 24) /* ids beyond this are refused as absurd */
#define TK_MAX_REGEX 16
#define TK_NONE UINT32_MAX

/* DeepSeek-V3's pre-tokenizer (spec/tokenizer.md §3), used when TokenizerParts gives no regexes. CR and LF are
 * literal characters in the third pattern, as in the JSON file after unescaping. */
static const char *const DEEPSEEK_V3_SPLITS[] = {
    "\\p{N}{1,3}",
    "[\\x{4e00}-\\x{9fa5}\\x{3040}-\\x{309f}\\x{30a0}-\\x{30ff}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};
/* ByteLevel(use_regex=true) adds GPT-2's split. */
static const char GPT2_SPLIT[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* Oniguruma's \s (what the Rust crate uses): U+0009-000D, U+0020, U+0085 and Z*. PCRE2's UCP \s adds U+180E. */
static const char WS_CLASS_MEMBERS[] = "\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}";

enum { KIND_NONE = 0, KIND_TOKEN = 1, KIND_SPECIAL = 2 };

typedef struct Trie {
    struct TrieNode {
        int32_t child;   /* first child, -1 none */
        int32_t sibling; /* next sibling, -1 none */
        int32_t added;   /* index into added[] of the token ending here, -1 none */
        uint8_t byte;
    } *nodes;
    size_t n, cap;
    uint8_t first[32]; /* bitmap of the bytes a token can start with */
} Trie;

typedef struct AddedTok {
    int32_t id;
    uint32_t off, len; /* content in the arena */
    uint8_t special, normalized, lstrip, rstrip, single_word;
} AddedTok;

typedef struct VSlot {
    uint32_t hash;
    int32_t id;        /* -1 empty */
    uint32_t off, len; /* the token's string in the arena (a copy, to spare a cache miss) */
} VSlot;

typedef struct MSlot {
    uint64_t key; /* (left << 32) | right; UINT64_MAX empty */
    uint32_t rank;
    int32_t result;
} MSlot;

struct Tokenizer {
    char *arena; /* every string, referred to by offset */
    size_t arena_len, arena_cap;

    int32_t n_ids;        /* vocab size: 1 + largest id of vocab and added tokens */
    uint32_t *tok_off;    /* [n_ids] model vocab string of each id (byte-level alphabet) */
    uint32_t *tok_len;    /* [n_ids] TK_NONE where the model vocab has no such id */
    uint32_t *dec_off;    /* [n_ids] decoded bytes of each id (added token first, else vocab) */
    uint32_t *dec_len;    /* [n_ids] */
    uint8_t *kind;        /* [n_ids] KIND_* */
    VSlot *vhash;         /* vocab: byte-level string -> id */
    size_t vmask;
    MSlot *mhash; /* merges: (left, right) -> rank, result */
    size_t mmask, n_merges;
    int32_t byte_id[256]; /* id of the byte-level symbol of each byte */
    struct {
        char u[2];
        uint8_t n;
    } bl[256];               /* UTF-8 of the byte-level symbol of each byte */
    int16_t cp_byte[0x144]; /* byte a code point of the alphabet stands for, -1 for the others */

    AddedTok *added;
    size_t n_added;
    Trie trie[2]; /* [0]: normalized=false tokens, [1]: normalized=true */

    pcre2_code *re[TK_MAX_REGEX];
    int n_re;
    int ignore_merges;
};

/* ---------------------------------------------------------------- byte-level alphabet (GPT-2 bytes_to_unicode) */

/* Code point that byte b is written as. */
static uint32_t byte_to_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return (uint32_t)b;
    int k = 0; /* rank of b among the 68 remapped bytes */
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) k++;
    return 0x100u + (uint32_t)k;
}


static size_t utf8_put(uint32_t cp, char *out);

static void bytelevel_init(Tokenizer *t) {
    for (int i = 0; i < 0x144; i++) t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp(b);
        t->cp_byte[cp] = (int16_t)b;
        char u[4];
        t->bl[b].n = (uint8_t)utf8_put(cp, u);
        memcpy(t->bl[b].u, u, 2);
    }
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Classifies the UTF-8 sequence at s (n > 0 bytes available), as Rust's from_utf8_lossy sees it:
 *   > 0   a complete, valid character of that many bytes;
 *   < 0   -k: the first k bytes are a maximal ill-formed subsequence (one U+FFFD, skip k);
 *   0     a valid but unfinished prefix that runs to the end of the n bytes. */
static int utf8_class(const uint8_t *s, size_t n) {
    uint8_t b = s[0];
    if (b < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0xC2) return -1;
    if (b < 0xE0) {
        need = 2;
    } else if (b < 0xF0) {
        need = 3;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b < 0xF5) {
        need = 4;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return -1;
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) return 0;
        uint8_t c = s[i];
        if (i == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return -i;
    }
    return need;
}

static uint32_t utf8_decode(const uint8_t *s, int len) {
    switch (len) {
    case 1: return s[0];
    case 2: return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3: return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
               (s[3] & 0x3F);
    }
}

/* Unicode White_Space (= Rust char::is_whitespace, = the regexes' \s). */
static int is_space_cp(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Offset of the first byte of s[0..n) that is not valid UTF-8, or n. */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        int k = utf8_class(s + i, n - i);
        if (k <= 0) return i;
        i += (size_t)k;
    }
    return n;
}

/* ---------------------------------------------------------------- small helpers */

static uint32_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    }
    h ^= h >> 32;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    return (uint32_t)h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Appends n bytes to the arena; returns the offset, or TK_NONE when out of memory or past 4 GB. */
static uint32_t arena_put(Tokenizer *t, const char *s, size_t n) {
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t nc = t->arena_cap ? t->arena_cap : 1 << 16;
        while (nc < t->arena_len + n + 1) nc *= 2;
        if (nc > UINT32_MAX) return TK_NONE;
        char *na = realloc(t->arena, nc);
        if (!na) return TK_NONE;
        t->arena = na;
        t->arena_cap = nc;
    }
    uint32_t off = (uint32_t)t->arena_len;
    if (n) memcpy(t->arena + off, s, n);
    t->arena_len += n;
    return off;
}

/* A growable byte buffer for scratch work. */
typedef struct Buf {
    char *p;
    size_t n, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + extra) {
        if (nc > SIZE_MAX / 2) return -1;
        nc *= 2;
    }
    char *np = realloc(b->p, nc);
    if (!np) return -1;
    b->p = np;
    b->cap = nc;
    return 0;
}

static int buf_put(Buf *b, const void *s, size_t n) {
    if (n == 0) return 0;
    if (buf_reserve(b, n)) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* Quotes a token for an error message: at most ~40 bytes, control bytes as \xNN. */
static const char *quote(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        uint8_t c = (uint8_t)s[i];
        if (i >= 40) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        else out[o++] = (char)c;
    }
    out[o] = 0;
    return out;
}

/* ---------------------------------------------------------------- vocab and merges */

static int32_t vocab_find_h(const Tokenizer *t, const char *s, size_t n, uint32_t h) {
    if (!t->vhash) return -1;
    for (size_t i = h & t->vmask;; i = (i + 1) & t->vmask) {
        const VSlot *v = &t->vhash[i];
        if (v->id < 0) return -1;
        if (v->hash == h && v->len == n && !memcmp(t->arena + v->off, s, n)) return v->id;
    }
}

static int32_t vocab_find(const Tokenizer *t, const char *s, size_t n) {
    return vocab_find_h(t, s, n, hash_bytes(s, n));
}

typedef struct VocabEntry {
    uint32_t off, len;
    int32_t id;
} VocabEntry;

/* Builds the id tables and the vocab hash from entries (any order). */
static DsocrStatus vocab_build(Tokenizer *t, const VocabEntry *ve, size_t n, DsError *e) {
    int32_t max_id = -1;
    for (size_t i = 0; i < n; i++)
        if (ve[i].id > max_id) max_id = ve[i].id;
    t->n_ids = max_id + 1;
    size_t nid = (size_t)t->n_ids;
    t->tok_off = malloc(nid * sizeof *t->tok_off);
    t->tok_len = malloc(nid * sizeof *t->tok_len);
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    t->vhash = malloc(cap * sizeof *t->vhash);
    if (!t->tok_off || !t->tok_len || !t->vhash) return ds_fail(e, DSOCR_E_NOMEM, "out of memory for the vocab");
    t->vmask = cap - 1;
    for (size_t i = 0; i < nid; i++) t->tok_len[i] = TK_NONE;
    for (size_t i = 0; i < cap; i++) t->vhash[i].id = -1;
    char q1[64], q2[64];
    uint32_t *hs = malloc((n ? n : 1) * sizeof *hs);
    if (!hs) return ds_fail(e, DSOCR_E_NOMEM, "out of memory for the vocab");
    for (size_t k = 0; k < n; k++) hs[k] = hash_bytes(t->arena + ve[k].off, ve[k].len);
    DsocrStatus st = DSOCR_OK;
    for (size_t k = 0; k < n; k++) {
        const VocabEntry *v = &ve[k];
        const char *s = t->arena + v->off;
        if (k + 16 < n) __builtin_prefetch(&t->vhash[hs[k + 16] & t->vmask], 1);
        if (t->tok_len[v->id] != TK_NONE) {
            st = ds_fail(e, DSOCR_E_FORMAT, "model.vocab: id %d is given to both \"%s\" and \"%s\"", v->id,
                         quote(t->arena + t->tok_off[v->id], t->tok_len[v->id], q1, sizeof q1),
                         quote(s, v->len, q2, sizeof q2));
            break;
        }
        uint32_t h = hs[k];
        size_t i = h & t->vmask;
        for (;; i = (i + 1) & t->vmask) {
            VSlot *sl = &t->vhash[i];
            if (sl->id < 0) break;
            if (sl->hash == h && sl->len == v->len && !memcmp(t->arena + sl->off, s, v->len)) {
                st = ds_fail(e, DSOCR_E_FORMAT, "model.vocab: token \"%s\" appears twice (ids %d and %d)",
                             quote(s, v->len, q1, sizeof q1), sl->id, v->id);
                break;
            }
        }
        if (st) break;
        t->vhash[i] = (VSlot){h, v->id, v->off, v->len};
        t->tok_off[v->id] = v->off;
        t->tok_len[v->id] = v->len;
    }
    free(hs);
    return st;
}

static const MSlot *merge_find(const Tokenizer *t, int32_t a, int32_t b) {
    if (!t->mhash) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash_u64(key) & t->mmask;; i = (i + 1) & t->mmask) {
        const MSlot *m = &t->mhash[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
    }
}

static int merge_grow(Tokenizer *t, size_t want) {
    size_t cap = 16;
    while (cap < want * 2) cap *= 2;
    if (t->mhash && cap <= t->mmask + 1) return 0;
    MSlot *nh = malloc(cap * sizeof *nh);
    if (!nh) return -1;
    for (size_t i = 0; i < cap; i++) nh[i].key = UINT64_MAX;
    if (t->mhash) {
        for (size_t i = 0; i <= t->mmask; i++) {
            MSlot *m = &t->mhash[i];
            if (m->key == UINT64_MAX) continue;
            size_t j = hash_u64(m->key) & (cap - 1);
            while (nh[j].key != UINT64_MAX) j = (j + 1) & (cap - 1);
            nh[j] = *m;
        }
        free(t->mhash);
    }
    t->mhash = nh;
    t->mmask = cap - 1;
    return 0;
}

/* Later duplicates win, as in HF. */
static void merge_insert(Tokenizer *t, uint64_t key, uint32_t rank, int32_t ir);

/* Adds merge number `rank` joining a and b (hab: their hashes, or NULL). With out_key, the merge is only resolved
 * to its key and result id, for the caller to merge_insert. */
static DsocrStatus merge_add(Tokenizer *t, const char *a, size_t an, const char *b, size_t bn, size_t rank,
                             const uint32_t *hab, Buf *scratch, int64_t *delta, uint64_t *out_key,
                             int32_t *out_result, DsError *e) {
    char q1[64], q2[64];
    int32_t ia = vocab_find_h(t, a, an, hab ? hab[0] : hash_bytes(a, an));
    int32_t ib = vocab_find_h(t, b, bn, hab ? hab[1] : hash_bytes(b, bn));
    if (ia < 0 || ib < 0) {
        const char *s = ia < 0 ? a : b;
        size_t sn = ia < 0 ? an : bn;
        return ds_fail(e, DSOCR_E_FORMAT, "model.merges[%zu]: \"%s\" is not in the vocab", rank,
                       quote(s, sn, q1, sizeof q1));
    }
    /* BPE vocabularies usually list merge results in rank order (DeepSeek-V3: id = rank + 259), so try the id
     * the previous merge predicts before hashing. */
    int64_t g = (int64_t)rank + *delta;
    int32_t ir = -1;
    if (g >= 0 && g < t->n_ids && t->tok_len[g] == an + bn && !memcmp(t->arena + t->tok_off[g], a, an) &&
        !memcmp(t->arena + t->tok_off[g] + an, b, bn)) {
        ir = (int32_t)g;
    } else {
        scratch->n = 0;
        if (buf_put(scratch, a, an) || buf_put(scratch, b, bn)) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        ir = vocab_find(t, scratch->p, scratch->n);
        *delta = (int64_t)ir - (int64_t)rank;
    }
    if (ir < 0)
        return ds_fail(e, DSOCR_E_FORMAT, "model.merges[%zu] \"%s\" + \"%s\": the result is not in the vocab", rank,
                       quote(a, an, q1, sizeof q1), quote(b, bn, q2, sizeof q2));
    if (rank >= UINT32_MAX) return ds_fail(e, DSOCR_E_FORMAT, "model.merges: too many merges");
    if (t->n_merges + 1 > (t->mmask + 1) / 2 || !t->mhash)
        if (merge_grow(t, (t->n_merges + 1) * 2)) return ds_fail(e, DSOCR_E_NOMEM, "out of memory for the merges");
    uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    if (out_key) { /* the caller inserts it later (batched) */
        *out_key = key;
        *out_result = ir;
        return DSOCR_OK;
    }
    merge_insert(t, key, (uint32_t)rank, ir);
    return DSOCR_OK;
}

static void merge_insert(Tokenizer *t, uint64_t key, uint32_t rank, int32_t ir) {
    size_t i = hash_u64(key) & t->mmask;
    while (t->mhash[i].key != UINT64_MAX && t->mhash[i].key != key) i = (i + 1) & t->mmask;
    if (t->mhash[i].key == UINT64_MAX) t->n_merges++;
    t->mhash[i].key = key;
    t->mhash[i].rank = rank;
    t->mhash[i].result = ir;
}

/* ---------------------------------------------------------------- added tokens */

static int trie_node(Trie *tr, uint8_t byte) {
    if (tr->n == tr->cap) {
        size_t nc = tr->cap ? tr->cap * 2 : 256;
        struct TrieNode *nn = realloc(tr->nodes, nc * sizeof *nn);
        if (!nn) return -1;
        tr->nodes = nn;
        tr->cap = nc;
    }
    struct TrieNode *nd = &tr->nodes[tr->n];
    nd->child = nd->sibling = nd->added = -1;
    nd->byte = byte;
    return (int)tr->n++;
}

/* Inserts s; returns 0, -1 on allocation failure, or 1 when s is already there (*prev = its added index). */
static int trie_insert(Trie *tr, const char *s, size_t n, int32_t idx, int32_t *prev) {
    if (tr->n == 0 && trie_node(tr, 0) < 0) return -1;
    int cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        int ch = tr->nodes[cur].child;
        while (ch >= 0 && tr->nodes[ch].byte != c) ch = tr->nodes[ch].sibling;
        if (ch < 0) {
            ch = trie_node(tr, c);
            if (ch < 0) return -1;
            tr->nodes[ch].sibling = tr->nodes[cur].child;
            tr->nodes[cur].child = ch;
        }
        cur = ch;
    }
    if (tr->nodes[cur].added >= 0) {
        *prev = tr->nodes[cur].added;
        return 1;
    }
    tr->nodes[cur].added = idx;
    tr->first[(uint8_t)s[0] >> 3] |= (uint8_t)(1u << ((uint8_t)s[0] & 7));
    return 0;
}

/* Longest token of tr that starts at s[0..n); returns its added index (*len its length) or -1. */
static int32_t trie_longest(const Trie *tr, const uint8_t *s, size_t n, size_t *len) {
    int32_t best = -1;
    if (!tr->n || !(tr->first[s[0] >> 3] & (1u << (s[0] & 7)))) return -1;
    int cur = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = tr->nodes[cur].child;
        while (ch >= 0 && tr->nodes[ch].byte != s[i]) ch = tr->nodes[ch].sibling;
        if (ch < 0) break;
        cur = ch;
        if (tr->nodes[cur].added >= 0) {
            best = tr->nodes[cur].added;
            *len = i + 1;
        }
    }
    return best;
}

static DsocrStatus added_add(Tokenizer *t, const TokenizerAddedToken *a, size_t index, DsError *e) {
    size_t n = a->content ? strlen(a->content) : 0;
    if (n == 0) return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: empty content", index);
    if (a->id < 0 || a->id >= TK_MAX_ID)
        return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: id %d out of range 0..%d", index, a->id, TK_MAX_ID - 1);
    if (utf8_valid_prefix((const uint8_t *)a->content, n) != n)
        return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: content is not valid UTF-8", index);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id == a->id)
            return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: id %d is used twice", index, a->id);
    AddedTok *na = realloc(t->added, (t->n_added + 1) * sizeof *na);
    if (!na) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    t->added = na;
    AddedTok *d = &t->added[t->n_added];
    d->id = a->id;
    d->off = arena_put(t, a->content, n);
    if (d->off == TK_NONE) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    d->len = (uint32_t)n;
    d->special = a->special != 0;
    d->normalized = a->normalized != 0;
    d->lstrip = a->lstrip != 0;
    d->rstrip = a->rstrip != 0;
    d->single_word = a->single_word != 0;
    int32_t prev = -1;
    char q[64];
    size_t plen = 0;
    prev = trie_longest(&t->trie[!d->normalized], (const uint8_t *)a->content, n, &plen);
    if (prev >= 0 && plen != n) prev = -1;
    int r = prev >= 0 ? 1 : trie_insert(&t->trie[d->normalized], a->content, n, (int32_t)t->n_added, &prev);
    if (r < 0) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    if (r > 0)
        return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: content \"%s\" is already added token %d", index,
                       quote(a->content, n, q, sizeof q), t->added[prev].id);
    t->n_added++;
    return DSOCR_OK;
}

/* ---------------------------------------------------------------- regexes */

/* Compiles an Oniguruma-style split pattern with PCRE2, rewriting \s and \S to Oniguruma's whitespace set. */
static DsocrStatus regex_add(Tokenizer *t, const char *pat, size_t n, const char *where, DsError *e) {
    if (t->n_re >= TK_MAX_REGEX) return ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: more than %d split stages", where, TK_MAX_REGEX);
    Buf b = {0};
    int in_class = 0;
    DsocrStatus st = DSOCR_OK;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        int err = 0;
        if (c == '\\' && i + 1 < n) {
            char d = pat[++i];
            if (d == 's') {
                err = in_class ? buf_put(&b, WS_CLASS_MEMBERS, strlen(WS_CLASS_MEMBERS))
                               : (buf_put(&b, "[", 1) || buf_put(&b, WS_CLASS_MEMBERS, strlen(WS_CLASS_MEMBERS)) ||
                                  buf_put(&b, "]", 1));
            } else if (d == 'S') {
                if (in_class) {
                    st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: \\S inside a character class is not supported", where);
                    goto done;
                }
                err = buf_put(&b, "[^", 2) || buf_put(&b, WS_CLASS_MEMBERS, strlen(WS_CLASS_MEMBERS)) ||
                      buf_put(&b, "]", 1);
            } else {
                err = buf_put(&b, pat + i - 1, 2);
            }
        } else {
            if (c == '[' && !in_class) {
                in_class = 1;
                err = buf_put(&b, "[", 1);
                if (!err && i + 1 < n && pat[i + 1] == '^') err = buf_put(&b, pat + ++i, 1);
                if (!err && i + 1 < n && pat[i + 1] == ']') err = buf_put(&b, "\\]", 2), i++;
                if (err) break;
                continue;
            }
            if (c == ']' && in_class) in_class = 0;
            err = buf_put(&b, &c, 1);
        }
        if (err) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto done;
        }
    }
    int ec;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(b.p ? b.p : ""), b.n, PCRE2_UTF | PCRE2_UCP, &ec, &eoff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        st = ds_fail(e, DSOCR_E_FORMAT, "%s: the regex does not compile: %s (offset %zu of the rewritten pattern)",
                     where, (const char *)msg, (size_t)eoff);
        goto done;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter when JIT is unavailable */
    t->re[t->n_re++] = re;
done:
    free(b.p);
    return st;
}

/* ---------------------------------------------------------------- finishing */

/* Fills the per-id decode tables once the vocab and the added tokens are in. */
static DsocrStatus finish(Tokenizer *t, DsError *e) {
    for (int b = 0; b < 256; b++) {
        t->byte_id[b] = vocab_find(t, t->bl[b].u, t->bl[b].n);
        if (t->byte_id[b] < 0)
            return ds_fail(e, DSOCR_E_FORMAT,
                           "model.vocab lacks the byte-level symbol U+%04X for byte 0x%02x (only complete byte-level "
                           "BPE vocabularies are supported)",
                           byte_to_cp(b), b);
    }
    for (size_t k = 0; k < t->n_added; k++) {
        if (t->added[k].id < t->n_ids) continue;
        int32_t old = t->n_ids;
        t->n_ids = t->added[k].id + 1;
        uint32_t *o = realloc(t->tok_off, (size_t)t->n_ids * sizeof *o);
        if (o) t->tok_off = o;
        uint32_t *l = o ? realloc(t->tok_len, (size_t)t->n_ids * sizeof *l) : NULL;
        if (!l) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        t->tok_len = l;
        for (int32_t i = old; i < t->n_ids; i++) t->tok_len[i] = TK_NONE;
    }
    size_t nid = (size_t)t->n_ids;
    t->dec_off = malloc(nid * sizeof *t->dec_off);
    t->dec_len = malloc(nid * sizeof *t->dec_len);
    t->kind = calloc(nid, 1);
    if (!t->dec_off || !t->dec_len || !t->kind) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    int32_t *added_of = malloc(nid * sizeof *added_of); /* id -> index in added[], -1 */
    if (!added_of) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    for (size_t id = 0; id < nid; id++) added_of[id] = -1;
    for (size_t k = 0; k < t->n_added; k++) added_of[t->added[k].id] = (int32_t)k;
    Buf tmp = {0};
    for (size_t id = 0; id < nid; id++) {
        uint32_t off = TK_NONE, len = 0;
        uint8_t kind = KIND_NONE;
        if (t->tok_len[id] != TK_NONE) {
            off = t->tok_off[id];
            len = t->tok_len[id];
            kind = KIND_TOKEN;
        }
        if (added_of[id] >= 0) {
            const AddedTok *a = &t->added[added_of[id]];
            off = a->off;
            len = a->len;
            kind = a->special ? KIND_SPECIAL : KIND_TOKEN;
        }
        t->kind[id] = kind;
        t->dec_len[id] = 0;
        t->dec_off[id] = 0;
        if (kind == KIND_NONE) continue;
        /* Byte-level decode when every character is in the alphabet, else the raw UTF-8 (HF ByteLevel). */
        tmp.n = 0;
        const uint8_t *s = (const uint8_t *)t->arena + off;
        uint32_t q = 0;
        while (q < len && s[q] >= 0x21 && s[q] <= 0x7E) q++;
        if (q == len) { /* printable ASCII stands for itself */
            t->dec_off[id] = off;
            t->dec_len[id] = len;
            continue;
        }
        if (buf_reserve(&tmp, len)) goto nomem;
        int all = 1;
        uint8_t *d = (uint8_t *)tmp.p;
        for (uint32_t i = 0; i < len;) { /* the alphabet is U+0021..U+0143: one or two UTF-8 bytes */
            uint32_t cp;
            if (s[i] < 0x80) cp = s[i++];
            else if (s[i] >= 0xC2 && s[i] <= 0xC5 && i + 1 < len && (s[i + 1] & 0xC0) == 0x80)
                cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F), i += 2;
            else cp = UINT32_MAX;
            int bb = cp < 0x144 ? t->cp_byte[cp] : -1;
            if (bb < 0) {
                all = 0;
                break;
            }
            *d++ = (uint8_t)bb;
        }
        tmp.n = (size_t)(d - (uint8_t *)tmp.p);
        if (!all || (tmp.n == len && !memcmp(tmp.p, t->arena + off, len))) {
            t->dec_off[id] = off;
            t->dec_len[id] = len;
            continue;
        }
        uint32_t o = arena_put(t, tmp.p, tmp.n);
        if (o == TK_NONE) goto nomem;
        t->dec_off[id] = o;
        t->dec_len[id] = (uint32_t)tmp.n;
    }
    free(tmp.p);
    free(added_of);
    return DSOCR_OK;
nomem:
    free(tmp.p);
    free(added_of);
    return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->arena);
    free(t->tok_off);
    free(t->tok_len);
    free(t->dec_off);
    free(t->dec_len);
    free(t->kind);
    free(t->vhash);
    free(t->mhash);
    free(t->added);
    free(t->trie[0].nodes);
    free(t->trie[1].nodes);
    for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
    free(t);
}

DsocrStatus tokenizer_new(const TokenizerParts *p, Tokenizer **out, DsError *e) {
    *out = NULL;
    if (!p || (p->n_vocab && !p->vocab) || (p->n_merges && !p->merges) || (p->n_added && !p->added) ||
        (p->n_split_regexes && !p->split_regexes))
        return ds_fail(e, DSOCR_E_INVALID_ARG, "tokenizer_new: missing arrays");
    if (p->n_vocab > TK_MAX_ID) return ds_fail(e, DSOCR_E_FORMAT, "vocab: %zu entries is too many", p->n_vocab);
    Tokenizer *t = calloc(1, sizeof *t);
    VocabEntry *ve = NULL;
    Buf scratch = {0};
    DsocrStatus st;
    if (!t) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    bytelevel_init(t);
    t->ignore_merges = p->ignore_merges != 0;
    for (size_t i = 0; i < p->n_added; i++)
        if ((st = added_add(t, &p->added[i], i, e))) goto fail;
    ve = malloc((p->n_vocab ? p->n_vocab : 1) * sizeof *ve);
    if (!ve) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto fail;
    }
    size_t nv = 0;
    for (size_t i = 0; i < p->n_vocab; i++) {
        if (!p->vocab[i]) continue;
        size_t n = strlen(p->vocab[i]);
        uint32_t off = arena_put(t, p->vocab[i], n);
        if (off == TK_NONE) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
        ve[nv++] = (VocabEntry){off, (uint32_t)n, (int32_t)i};
    }
    if ((st = vocab_build(t, ve, nv, e))) goto fail;
    if (merge_grow(t, p->n_merges + 1)) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto fail;
    }
    int64_t delta = 0;
    for (size_t r = 0; r < p->n_merges; r++) {
        const char *a = p->merges[2 * r], *b = p->merges[2 * r + 1];
        if (!a || !b) {
            st = ds_fail(e, DSOCR_E_FORMAT, "merges[%zu]: missing half", r);
            goto fail;
        }
        if ((st = merge_add(t, a, strlen(a), b, strlen(b), r, NULL, &scratch, &delta, NULL, NULL, e))) goto fail;
    }
    const char *const *rx = p->split_regexes ? p->split_regexes : DEEPSEEK_V3_SPLITS;
    size_t nrx = p->split_regexes ? p->n_split_regexes : sizeof DEEPSEEK_V3_SPLITS / sizeof *DEEPSEEK_V3_SPLITS;
    for (size_t i = 0; i < nrx; i++) {
        char where[48];
        snprintf(where, sizeof where, "split_regexes[%zu]", i);
        if (!rx[i]) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: missing", where);
            goto fail;
        }
        if ((st = regex_add(t, rx[i], strlen(rx[i]), where, e))) goto fail;
    }
    if ((st = finish(t, e))) goto fail;
    free(ve);
    free(scratch.p);
    *out = t;
    return DSOCR_OK;
fail:
    free(ve);
    free(scratch.p);
    tokenizer_free(t);
    return st;
}

/* ---------------------------------------------------------------- tokenizer.json */

typedef struct Js {
    const char *p, *end, *base;
    DsError *e;
} Js;

static DsocrStatus js_err(Js *j, const char *what) {
    return ds_fail(j->e, DSOCR_E_FORMAT, "JSON syntax error at byte %zu: %s", (size_t)(j->p - j->base), what);
}

static void js_ws(Js *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
}

static int js_hex4(const char *p, uint32_t *v) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') x |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') x |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *v = x;
    return 0;
}

/* Reads a JSON string at j->p (which must be at '"'), appending its decoded UTF-8 to out (out == NULL: only
 * validates and skips). Lone surrogates and raw control characters are errors, as in serde_json. */
static DsocrStatus js_string(Js *j, Buf *out) {
    if (j->p >= j->end || *j->p != '"') return js_err(j, "expected a string");
    j->p++;
    for (;;) {
        const char *s = j->p;
        while (j->end - j->p >= 8) { /* eight plain bytes at a time: no '"', no '\\', no control byte */
            uint64_t w;
            memcpy(&w, j->p, 8);
            const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
            uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
            uint64_t hit = ((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w);
            if (hit & highs) break;
            j->p += 8;
        }
        while (j->p < j->end && *j->p != '"' && *j->p != '\\' && (uint8_t)*j->p >= 0x20) j->p++;
        if (out && j->p > s && buf_put(out, s, (size_t)(j->p - s))) return ds_fail(j->e, DSOCR_E_NOMEM, "out of memory");
        if (j->p >= j->end) return js_err(j, "unterminated string");
        if (*j->p == '"') {
            j->p++;
            return DSOCR_OK;
        }
        if ((uint8_t)*j->p < 0x20) return js_err(j, "raw control character in a string");
        if (j->end - j->p < 2) return js_err(j, "unterminated escape");
        char c = j->p[1], r;
        j->p += 2;
        switch (c) {
        case '"': r = '"'; break;
        case '\\': r = '\\'; break;
        case '/': r = '/'; break;
        case 'b': r = '\b'; break;
        case 'f': r = '\f'; break;
        case 'n': r = '\n'; break;
        case 'r': r = '\r'; break;
        case 't': r = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (j->end - j->p < 4 || js_hex4(j->p, &cp)) return js_err(j, "bad \\u escape");
            j->p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return js_err(j, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || js_hex4(j->p + 2, &lo) || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return js_err(j, "lone high surrogate in \\u escape");
                j->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            char u[4];
            size_t ul = utf8_put(cp, u);
            if (out && buf_put(out, u, ul)) return ds_fail(j->e, DSOCR_E_NOMEM, "out of memory");
            continue;
        }
        default: return js_err(j, "unknown escape in a string");
        }
        if (out && buf_put(out, &r, 1)) return ds_fail(j->e, DSOCR_E_NOMEM, "out of memory");
    }
}

/* Skips any JSON value, checking its syntax. */
static DsocrStatus js_skip(Js *j, int depth) {
    if (depth > 64) return js_err(j, "nested too deeply");
    js_ws(j);
    if (j->p >= j->end) return js_err(j, "unexpected end of input");
    char c = *j->p;
    DsocrStatus st;
    if (c == '"') return js_string(j, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        js_ws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return DSOCR_OK;
        }
        for (;;) {
            if (c == '{') {
                js_ws(j);
                if ((st = js_string(j, NULL))) return st;
                js_ws(j);
                if (j->p >= j->end || *j->p != ':') return js_err(j, "expected ':'");
                j->p++;
            }
            if ((st = js_skip(j, depth + 1))) return st;
            js_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == close) {
                j->p++;
                return DSOCR_OK;
            }
            return js_err(j, c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    const char *s = j->p;
    if (c == '-' || (c >= '0' && c <= '9')) {
        while (j->p < j->end && ((*j->p >= '0' && *j->p <= '9') || *j->p == '.' || *j->p == 'e' || *j->p == 'E' ||
                                 *j->p == '+' || *j->p == '-'))
            j->p++;
        return DSOCR_OK;
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(j->end - s) >= n && !memcmp(s, words[i], n)) {
            j->p += n;
            return DSOCR_OK;
        }
    }
    return js_err(j, "expected a value");
}

/* Expects c after optional whitespace. */
static DsocrStatus js_expect(Js *j, char c, const char *what) {
    js_ws(j);
    if (j->p >= j->end || *j->p != c) return js_err(j, what);
    j->p++;
    return DSOCR_OK;
}

/* After a member or element: 1 when another follows (',' consumed), 0 at close (consumed), <0 with error set. */
static int js_next(Js *j, char close, DsocrStatus *st) {
    js_ws(j);
    if (j->p < j->end && *j->p == ',') {
        j->p++;
        return 1;
    }
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 0;
    }
    *st = js_err(j, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    return -1;
}

/* Parses model.vocab {"token": id, ...} into the arena and builds the vocab. */
static DsocrStatus parse_vocab(Tokenizer *t, Js *j, DsError *e) {
    DsocrStatus st = DSOCR_OK;
    VocabEntry *ve = NULL;
    size_t n = 0, cap = 0;
    Buf key = {0};
    js_ws(j);
    if (j->p >= j->end || *j->p != '{')
        return ds_fail(e, DSOCR_E_FORMAT, "model.vocab is not an object (byte %zu)", (size_t)(j->p - j->base));
    j->p++;
    js_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        goto build;
    }
    for (;;) {
        js_ws(j);
        key.n = 0;
        if ((st = js_string(j, &key))) goto out;
        if ((st = js_expect(j, ':', "expected ':' in model.vocab"))) goto out;
        js_ws(j);
        const char *s = j->p;
        long long v = 0;
        int digits = 0;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9' && v < TK_MAX_ID) v = v * 10 + (*j->p++ - '0'), digits++;
        char q[64];
        if (!digits || v >= TK_MAX_ID || (j->p < j->end && *j->p && strchr("-+.eE0123456789", *j->p))) {
            int shown = j->end - s < 12 ? (int)(j->end - s) : 12;
            st = ds_fail(e, DSOCR_E_FORMAT, "model.vocab: token \"%s\" has id \"%.*s\": ids must be integers 0..%d",
                         quote(key.p, key.n, q, sizeof q), shown, s, TK_MAX_ID - 1);
            goto out;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 17;
            VocabEntry *nv = realloc(ve, cap * sizeof *ve);
            if (!nv) {
                st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
                goto out;
            }
            ve = nv;
        }
        uint32_t off = arena_put(t, key.p, key.n);
        if (off == TK_NONE) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto out;
        }
        ve[n++] = (VocabEntry){off, (uint32_t)key.n, (int32_t)v};
        int r = js_next(j, '}', &st);
        if (r < 0) goto out;
        if (r == 0) break;
    }
build:
    st = vocab_build(t, ve, n, e);
out:
    free(ve);
    free(key.p);
    return st;
}

/* Parses model.merges: ["a b", ...] or [["a","b"], ...]. */
typedef struct MergeText {
    size_t aoff, an, boff, bn, rank; /* the two halves, in a batch buffer */
} MergeText;

#define MERGE_BATCH 32

/* Adds a batch of merges: hashes and prefetches every vocab slot first, so the lookups overlap their misses. */
static DsocrStatus merge_batch(Tokenizer *t, const MergeText *m, size_t k, const Buf *sb, Buf *scratch,
                               int64_t *delta, DsError *e) {
    uint32_t h[2 * MERGE_BATCH];
    for (size_t i = 0; i < k; i++) {
        h[2 * i] = hash_bytes(sb->p + m[i].aoff, m[i].an);
        h[2 * i + 1] = hash_bytes(sb->p + m[i].boff, m[i].bn);
        __builtin_prefetch(&t->vhash[h[2 * i] & t->vmask]);
        __builtin_prefetch(&t->vhash[h[2 * i + 1] & t->vmask]);
    }
    uint64_t key[MERGE_BATCH];
    int32_t res[MERGE_BATCH];
    for (size_t i = 0; i < k; i++) {
        DsocrStatus st = merge_add(t, sb->p + m[i].aoff, m[i].an, sb->p + m[i].boff, m[i].bn, m[i].rank, &h[2 * i],
                                   scratch, delta, &key[i], &res[i], e);
        if (st) return st;
        __builtin_prefetch(&t->mhash[hash_u64(key[i]) & t->mmask], 1);
    }
    for (size_t i = 0; i < k; i++) merge_insert(t, key[i], (uint32_t)m[i].rank, res[i]);
    return DSOCR_OK;
}

/* Parses model.merges: ["a b", ...] or [["a","b"], ...]. */
static DsocrStatus parse_merges(Tokenizer *t, Js *j, DsError *e) {
    DsocrStatus st = DSOCR_OK;
    Buf sb = {0}, scratch = {0};
    MergeText batch[MERGE_BATCH];
    size_t nb = 0;
    js_ws(j);
    if (j->p >= j->end || *j->p != '[')
        return ds_fail(e, DSOCR_E_FORMAT, "model.merges is not an array (byte %zu)", (size_t)(j->p - j->base));
    j->p++;
    js_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return DSOCR_OK;
    }
    /* Size the hash once: every merge has at least two quotes before the end of the input. */
    size_t quotes = 0;
    for (const char *q = j->p; q < j->end; q++) quotes += *q == '"';
    if (merge_grow(t, quotes / 2 + 16)) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    int64_t delta = 0;
    for (size_t rank = 0;; rank++) {
        js_ws(j);
        MergeText *m = &batch[nb];
        m->rank = rank;
        m->aoff = sb.n;
        if (j->p < j->end && *j->p == '"') {
            if ((st = js_string(j, &sb))) goto out;
            char *a = sb.p ? sb.p + m->aoff : NULL, *sp = NULL;
            int spaces = 0;
            for (char *c = a, *end = sb.p + sb.n; c && c < end; c++)
                if (*c == ' ') spaces++, sp = sp ? sp : c;
            char q[64];
            if (spaces != 1) {
                st = ds_fail(e, DSOCR_E_FORMAT, "model.merges[%zu] \"%s\" is not two tokens separated by one space",
                             rank, quote(a ? a : "", sb.n - m->aoff, q, sizeof q));
                goto out;
            }
            m->an = (size_t)(sp - a);
            m->boff = m->aoff + m->an + 1;
            m->bn = sb.n - m->boff;
        } else if (j->p < j->end && *j->p == '[') {
            j->p++;
            js_ws(j);
            if ((st = js_string(j, &sb))) goto pair_err;
            m->an = sb.n - m->aoff;
            m->boff = sb.n;
            if ((st = js_expect(j, ',', "expected ','"))) goto pair_err;
            js_ws(j);
            if ((st = js_string(j, &sb))) goto pair_err;
            m->bn = sb.n - m->boff;
            if ((st = js_expect(j, ']', "expected ']' after two strings"))) goto pair_err;
        } else {
            st = ds_fail(e, DSOCR_E_FORMAT, "model.merges[%zu] is neither a string nor an array (byte %zu)", rank,
                         (size_t)(j->p - j->base));
            goto out;
        }
        int r = js_next(j, ']', &st);
        if (r < 0) goto out;
        if (++nb == MERGE_BATCH || r == 0) {
            if (!sb.p && buf_reserve(&sb, 1)) {
                st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
                goto out;
            }
            if ((st = merge_batch(t, batch, nb, &sb, &scratch, &delta, e))) goto out;
            nb = 0;
            sb.n = 0;
        }
        if (r == 0) break;
        continue;
    pair_err:
        ds_error_prefix(e, "model.merges[%zu] must be a pair of strings", rank);
        goto out;
    }
out:
    free(sb.p);
    free(scratch.p);
    return st;
}

static int json_is(const cJSON *o, const char *type) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) && !strcmp(ty->valuestring, type);
}

static const char *json_type(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : "(no type)";
}

/* A boolean member; absent or null gives dflt; anything else not boolean is an error (-1). */
static int json_bool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return -1;
}

static DsocrStatus check_normalizer(const cJSON *n, const char *where, DsError *e) {
    if (!n || cJSON_IsNull(n)) return DSOCR_OK;
    if (!cJSON_IsObject(n)) return ds_fail(e, DSOCR_E_FORMAT, "%s is not an object", where);
    if (json_is(n, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) return ds_fail(e, DSOCR_E_FORMAT, "%s: Sequence without a normalizers array", where);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            DsocrStatus st = check_normalizer(it, where, e);
            if (st) return st;
        }
        return DSOCR_OK;
    }
    return ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: type %s is not supported (only no-op normalizers)", where,
                   json_type(n));
}

/* Appends the Split stages of a pre-tokenizer; *bytelevel is set when a ByteLevel stage is seen. */
static DsocrStatus add_pretokenizer(Tokenizer *t, const cJSON *p, int *bytelevel, DsError *e) {
    if (!cJSON_IsObject(p)) return ds_fail(e, DSOCR_E_FORMAT, "pre_tokenizer: a stage is not an object");
    if (json_is(p, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list))
            return ds_fail(e, DSOCR_E_FORMAT, "pre_tokenizer: Sequence without a pretokenizers array");
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            DsocrStatus st = add_pretokenizer(t, it, bytelevel, e);
            if (st) return st;
        }
        return DSOCR_OK;
    }
    if (json_is(p, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        int inv = json_bool(p, "invert", 0);
        if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") || inv != 0)
            return ds_fail(e, DSOCR_E_UNSUPPORTED,
                           "pre_tokenizer: only Split stages with behavior Isolated and invert false are supported");
        const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        char where[48];
        snprintf(where, sizeof where, "pre_tokenizer split %d", t->n_re + 1);
        if (cJSON_IsString(rx)) return regex_add(t, rx->valuestring, strlen(rx->valuestring), where, e);
        if (cJSON_IsString(lit)) {
            Buf b = {0};
            int err = 0;
            for (const char *c = lit->valuestring; *c && !err; c++)
                err = strchr("\\^$.[]|()?*+{}-#", *c) ? buf_put(&b, "\\", 1) || buf_put(&b, c, 1) : buf_put(&b, c, 1);
            DsocrStatus st = err ? ds_fail(e, DSOCR_E_NOMEM, "out of memory") : regex_add(t, b.p, b.n, where, e);
            free(b.p);
            return st;
        }
        return ds_fail(e, DSOCR_E_FORMAT, "%s: pattern has neither Regex nor String", where);
    }
    if (json_is(p, "ByteLevel")) {
        int aps = json_bool(p, "add_prefix_space", 1), use_regex = json_bool(p, "use_regex", 1);
        if (aps != 0)
            return ds_fail(e, DSOCR_E_UNSUPPORTED, "pre_tokenizer: ByteLevel with add_prefix_space true is not supported");
        if (use_regex < 0) return ds_fail(e, DSOCR_E_FORMAT, "pre_tokenizer: ByteLevel use_regex is not a boolean");
        *bytelevel = 1;
        if (use_regex) return regex_add(t, GPT2_SPLIT, strlen(GPT2_SPLIT), "pre_tokenizer ByteLevel regex", e);
        return DSOCR_OK;
    }
    return ds_fail(e, DSOCR_E_UNSUPPORTED, "pre_tokenizer: stage type %s is not supported", json_type(p));
}

static DsocrStatus parse_added(Tokenizer *t, const cJSON *arr, DsError *e) {
    if (!arr || cJSON_IsNull(arr)) return DSOCR_OK;
    if (!cJSON_IsArray(arr)) return ds_fail(e, DSOCR_E_FORMAT, "added_tokens is not an array");
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble != (double)(int32_t)id->valuedouble)
            return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: id missing or not an integer", i);
        if (!cJSON_IsString(content)) return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: content missing", i);
        TokenizerAddedToken a = {.id = (int32_t)id->valuedouble, .content = content->valuestring};
        a.special = json_bool(it, "special", 0);
        a.normalized = json_bool(it, "normalized", !a.special);
        a.lstrip = json_bool(it, "lstrip", 0);
        a.rstrip = json_bool(it, "rstrip", 0);
        a.single_word = json_bool(it, "single_word", 0);
        if (a.special < 0 || a.normalized < 0 || a.lstrip < 0 || a.rstrip < 0 || a.single_word < 0)
            return ds_fail(e, DSOCR_E_FORMAT, "added_tokens[%zu]: a flag is not a boolean", i);
        DsocrStatus st = added_add(t, &a, i, e);
        if (st) return st;
        i++;
    }
    return DSOCR_OK;
}

/* Parses a small JSON value at [s, s+n) with cJSON. */
static DsocrStatus small_json(const char *s, size_t n, const char *where, cJSON **out, DsError *e) {
    *out = cJSON_ParseWithLength(s, n);
    if (!*out) return ds_fail(e, DSOCR_E_FORMAT, "%s: malformed JSON", where);
    return DSOCR_OK;
}

typedef struct Slice {
    const char *p;
    size_t n;
} Slice;

DsocrStatus tokenizer_load_json_buffer(const char *json, size_t len, Tokenizer **out, DsError *e) {
    *out = NULL;
    Js j = {json, json + len, json, e};
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    bytelevel_init(t);
    /* the strings take about half the file: reserve once rather than copy on every doubling */
    if (len / 2 < UINT32_MAX && (t->arena = malloc(len / 2 + 1))) t->arena_cap = len / 2 + 1;
    DsocrStatus st = DSOCR_OK;
    Slice added = {0}, norm = {0}, pre = {0}, dec = {0}, vocab = {0}, merges = {0}, mtype = {0}, dropout = {0},
          ign = {0}, cont = {0}, suffix = {0};
    int have_model = 0, merges_done = 0;
    cJSON *c = NULL;
    Buf key = {0};
    /* Pass 1: find the sections (syntax-checked while skipping). */
    if ((st = js_expect(&j, '{', "the file is not a JSON object"))) goto fail;
    js_ws(&j);
    if (j.p < j.end && *j.p == '}') j.p++;
    else
        for (;;) {
            js_ws(&j);
            key.n = 0;
            if ((st = js_string(&j, &key)) || (st = js_expect(&j, ':', "expected ':'"))) goto fail;
            if (buf_put(&key, "", 1)) goto nomem;
            js_ws(&j);
            const char *vs = j.p;
            int is_model = !strcmp(key.p, "model");
            if (is_model) {
                have_model = 1;
                if ((st = js_expect(&j, '{', "\"model\" is not an object"))) goto fail;
                js_ws(&j);
                if (j.p < j.end && *j.p == '}') j.p++;
                else
                    for (;;) {
                        js_ws(&j);
                        key.n = 0;
                        if ((st = js_string(&j, &key)) || (st = js_expect(&j, ':', "expected ':'"))) goto fail;
                        if (buf_put(&key, "", 1)) goto nomem;
                        js_ws(&j);
                        const char *ms = j.p;
                        int is_vocab = !strcmp(key.p, "vocab"), is_merges = !strcmp(key.p, "merges");
                        if ((is_vocab && vocab.p) || (is_merges && merges.p)) {
                            st = ds_fail(e, DSOCR_E_FORMAT, "model.%s appears twice", key.p);
                            goto fail;
                        }
                        /* The big arrays are parsed in place (merges only once the vocab is in). */
                        if (is_vocab) st = parse_vocab(t, &j, e);
                        else if (is_merges && vocab.p) st = parse_merges(t, &j, e), merges_done = 1;
                        else st = js_skip(&j, 1);
                        if (st) goto fail;
                        Slice s = {ms, (size_t)(j.p - ms)};
                        if (is_vocab) vocab = s;
                        else if (is_merges) merges = s;
                        else if (!strcmp(key.p, "type")) mtype = s;
                        else if (!strcmp(key.p, "dropout")) dropout = s;
                        else if (!strcmp(key.p, "ignore_merges")) ign = s;
                        else if (!strcmp(key.p, "continuing_subword_prefix")) cont = s;
                        else if (!strcmp(key.p, "end_of_word_suffix")) suffix = s;
                        int r = js_next(&j, '}', &st);
                        if (r < 0) goto fail;
                        if (r == 0) break;
                    }
            } else {
                if ((st = js_skip(&j, 0))) goto fail;
                Slice s = {vs, (size_t)(j.p - vs)};
                if (!strcmp(key.p, "added_tokens")) added = s;
                else if (!strcmp(key.p, "normalizer")) norm = s;
                else if (!strcmp(key.p, "pre_tokenizer")) pre = s;
                else if (!strcmp(key.p, "decoder")) dec = s;
            }
            int r = js_next(&j, '}', &st);
            if (r < 0) goto fail;
            if (r == 0) break;
        }
    js_ws(&j);
    if (j.p != j.end) {
        st = js_err(&j, "trailing characters after the top-level object");
        goto fail;
    }
    if (!have_model) {
        st = ds_fail(e, DSOCR_E_FORMAT, "no \"model\" section");
        goto fail;
    }
    if (!vocab.p || !merges.p) {
        st = ds_fail(e, DSOCR_E_FORMAT, "model has no \"%s\"", !vocab.p ? "vocab" : "merges");
        goto fail;
    }
    /* Pass 2: the small sections with cJSON. */
    if (mtype.p) {
        if ((st = small_json(mtype.p, mtype.n, "model.type", &c, e))) goto fail;
        if (!cJSON_IsString(c) || strcmp(c->valuestring, "BPE")) {
            st = ds_fail(e, DSOCR_E_UNSUPPORTED, "model.type %s is not supported (only BPE)",
                         cJSON_IsString(c) ? c->valuestring : "(not a string)");
            goto fail;
        }
        cJSON_Delete(c), c = NULL;
    }
    if (dropout.p) {
        if ((st = small_json(dropout.p, dropout.n, "model.dropout", &c, e))) goto fail;
        if (!cJSON_IsNull(c) && !(cJSON_IsNumber(c) && c->valuedouble == 0.0)) {
            st = ds_fail(e, DSOCR_E_UNSUPPORTED, "model.dropout is not supported (must be null)");
            goto fail;
        }
        cJSON_Delete(c), c = NULL;
    }
    Slice affix[2] = {cont, suffix};
    for (int i = 0; i < 2; i++) {
        if (!affix[i].p) continue;
        const char *name = i ? "model.end_of_word_suffix" : "model.continuing_subword_prefix";
        if ((st = small_json(affix[i].p, affix[i].n, name, &c, e))) goto fail;
        if (!cJSON_IsNull(c) && !(cJSON_IsString(c) && !c->valuestring[0])) {
            st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s is not supported (must be null)", name);
            goto fail;
        }
        cJSON_Delete(c), c = NULL;
    }
    if (ign.p) {
        if ((st = small_json(ign.p, ign.n, "model.ignore_merges", &c, e))) goto fail;
        if (!cJSON_IsBool(c)) {
            st = ds_fail(e, DSOCR_E_FORMAT, "model.ignore_merges is not a boolean");
            goto fail;
        }
        t->ignore_merges = cJSON_IsTrue(c);
        cJSON_Delete(c), c = NULL;
    }
    if (norm.p) {
        if ((st = small_json(norm.p, norm.n, "normalizer", &c, e)) || (st = check_normalizer(c, "normalizer", e)))
            goto fail;
        cJSON_Delete(c), c = NULL;
    }
    if (dec.p) {
        if ((st = small_json(dec.p, dec.n, "decoder", &c, e))) goto fail;
        if (!cJSON_IsNull(c) && !json_is(c, "ByteLevel")) {
            st = ds_fail(e, DSOCR_E_UNSUPPORTED, "decoder: type %s is not supported (only ByteLevel)", json_type(c));
            goto fail;
        }
        cJSON_Delete(c), c = NULL;
    }
    int bytelevel = 0;
    if (pre.p) {
        if ((st = small_json(pre.p, pre.n, "pre_tokenizer", &c, e))) goto fail;
        if (!cJSON_IsNull(c) && (st = add_pretokenizer(t, c, &bytelevel, e))) goto fail;
        cJSON_Delete(c), c = NULL;
    }
    if (!bytelevel) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "pre_tokenizer has no ByteLevel stage (only byte-level BPE is supported)");
        goto fail;
    }
    if (added.p) {
        if ((st = small_json(added.p, added.n, "added_tokens", &c, e)) || (st = parse_added(t, c, e))) goto fail;
        cJSON_Delete(c), c = NULL;
    }
    /* Merges that came before the vocab in the file. */
    if (!merges_done) {
        Js jm = {merges.p, merges.p + merges.n, json, e};
        if ((st = parse_merges(t, &jm, e))) goto fail;
    }
    if ((st = finish(t, e))) goto fail;
    free(key.p);
    *out = t;
    return DSOCR_OK;
nomem:
    st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
fail:
    cJSON_Delete(c);
    free(key.p);
    tokenizer_free(t);
    return st;
}

DsocrStatus tokenizer_load_json(const char *path, Tokenizer **out, DsError *e) {
    *out = NULL;
    DsMap m;
    DsocrStatus st = ds_map_file(path, &m, e);
    if (st) return st;
    if (!m.size) st = ds_fail(e, DSOCR_E_FORMAT, "empty file");
    else st = tokenizer_load_json_buffer((const char *)m.data, m.size, out, e);
    ds_map_free(&m);
    if (st) ds_error_prefix(e, "%s", path);
    return st;
}

/* ---------------------------------------------------------------- GGUF metadata */

static DsocrStatus gguf_str_arr(const GgufFile *f, const char *key, int required, const GgufKv **out, DsError *e) {
    const GgufKv *kv = gguf_find_kv(f, key);
    *out = NULL;
    if (!kv) return required ? ds_fail(e, DSOCR_E_FORMAT, "%s: no %s", f->what, key) : DSOCR_OK;
    if (kv->type != GGUF_T_ARRAY || kv->arr_type != GGUF_T_STRING)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: %s must be an array of strings", f->what, key);
    *out = kv;
    return DSOCR_OK;
}

/* Copies n strings of an array into one NUL-separated arena; v[i] points at each (NULL for "" when empty_null). */
static DsocrStatus gguf_str_copy(const GgufFile *f, const GgufKv *kv, char **arena, char ***v, DsError *e) {
    size_t total = (size_t)kv->val_size + 1;
    *arena = malloc(total);
    *v = calloc((size_t)kv->arr_n + 1, sizeof **v);
    if (!*arena || !*v) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    uint64_t pos = 0;
    size_t used = 0;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        GgufStr s = gguf_arr_str_next(kv, &pos);
        if (memchr(s.s, 0, (size_t)s.n))
            return ds_fail(e, DSOCR_E_FORMAT, "%s: %s[%" PRIu64 "] contains a NUL byte", f->what, kv->key, i);
        memcpy(*arena + used, s.s, (size_t)s.n);
        (*v)[i] = *arena + used;
        used += (size_t)s.n;
        (*arena)[used++] = 0;
    }
    return DSOCR_OK;
}

DsocrStatus tokenizer_load_gguf(const GgufFile *f, Tokenizer **out, DsError *e) {
    *out = NULL;
    GgufStr model, pre;
    int found, fpre;
    DsocrStatus st = gguf_get_str(f, "tokenizer.ggml.model", &found, &model, e);
    if (st) return st;
    if (!found) return ds_fail(e, DSOCR_E_FORMAT, "%s: no tokenizer.ggml.model (no tokenizer in this file)", f->what);
    if (model.n != 4 || memcmp(model.s, "gpt2", 4))
        return ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: tokenizer.ggml.model is '%.*s' (dsocr reads byte-level BPE, 'gpt2')",
                       f->what, (int)(model.n < 40 ? model.n : 40), model.s);
    const GgufKv *tok, *mer, *rxk, *types = gguf_find_kv(f, "tokenizer.ggml.token_type");
    const GgufKv *flags = gguf_find_kv(f, "dsocr.tokenizer.added_flags");
    if ((st = gguf_str_arr(f, "tokenizer.ggml.tokens", 1, &tok, e)) ||
        (st = gguf_str_arr(f, "tokenizer.ggml.merges", 1, &mer, e)) ||
        (st = gguf_str_arr(f, "dsocr.tokenizer.split_regexes", 0, &rxk, e)) ||
        (st = gguf_get_str(f, "tokenizer.ggml.pre", &fpre, &pre, e)))
        return st;
    if (tok->arr_n > TK_MAX_ID) return ds_fail(e, DSOCR_E_FORMAT, "%s: %" PRIu64 " tokens is too many", f->what, tok->arr_n);
    if (types && (types->type != GGUF_T_ARRAY || types->arr_type != GGUF_T_I32 || types->arr_n != tok->arr_n))
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tokenizer.ggml.token_type must be an i32 array as long as the tokens",
                       f->what);
    if (flags && (flags->type != GGUF_T_ARRAY || flags->arr_type != GGUF_T_I32 || flags->arr_n != tok->arr_n))
        return ds_fail(e, DSOCR_E_FORMAT, "%s: dsocr.tokenizer.added_flags must be an i32 array as long as the tokens",
                       f->what);
    if (!rxk && !(fpre && pre.n == 11 && !memcmp(pre.s, "deepseek-v3", 11)))
        return ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: tokenizer.ggml.pre is %s'%.*s'; dsocr knows 'deepseek-v3' (or "
                       "regexes in dsocr.tokenizer.split_regexes)", f->what, fpre ? "" : "missing ",
                       fpre ? (int)(pre.n < 40 ? pre.n : 40) : 0, fpre ? pre.s : "");
    int ignore_merges = 0;
    if ((st = gguf_get_bool(f, "dsocr.tokenizer.ignore_merges", &found, &ignore_merges, e))) return st;
    char *ta = NULL, **tv = NULL, *ma = NULL, **mv = NULL, *ra = NULL, **rv = NULL;
    const char **vocab = NULL, **mpairs = NULL;
    TokenizerAddedToken *added = NULL;
    size_t n = (size_t)tok->arr_n, nm = (size_t)mer->arr_n, na = 0;
    if ((st = gguf_str_copy(f, tok, &ta, &tv, e)) || (st = gguf_str_copy(f, mer, &ma, &mv, e))) goto done;
    if (rxk && (st = gguf_str_copy(f, rxk, &ra, &rv, e))) goto done;
    vocab = calloc(n + 1, sizeof *vocab);
    mpairs = calloc(2 * nm + 1, sizeof *mpairs);
    added = calloc(n + 1, sizeof *added);
    if (!vocab || !mpairs || !added) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t fl = flags ? gguf_arr_i64(flags, i) : -1;
        int64_t ty = types ? gguf_arr_i64(types, i) : 1;
        int is_added = flags ? fl >= 0 : (ty == 3 || ty == 4);
        if (!flags) fl = ty == 3 ? TOKENIZER_ADDED_SPECIAL : TOKENIZER_ADDED_NORMALIZED;
        if (is_added) {
            if (!tv[i][0]) {
                st = ds_fail(e, DSOCR_E_FORMAT, "%s: added token %zu is empty", f->what, i);
                goto done;
            }
            added[na++] = (TokenizerAddedToken){(int32_t)i, tv[i], !!(fl & TOKENIZER_ADDED_SPECIAL),
                                                !!(fl & TOKENIZER_ADDED_NORMALIZED), !!(fl & TOKENIZER_ADDED_LSTRIP),
                                                !!(fl & TOKENIZER_ADDED_RSTRIP), !!(fl & TOKENIZER_ADDED_SINGLE_WORD)};
            if (fl & TOKENIZER_ADDED_IN_VOCAB) vocab[i] = tv[i];
        } else if (ty != 5) { /* 5: UNUSED (llama.cpp's [PADn] fillers) */
            vocab[i] = tv[i];
        }
    }
    for (size_t r = 0; r < nm; r++) {
        char *sp = strchr(mv[r], ' ');
        if (!sp || sp == mv[r] || !sp[1] || strchr(sp + 1, ' ')) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: tokenizer.ggml.merges[%zu] is not \"a b\"", f->what, r);
            goto done;
        }
        *sp = 0;
        mpairs[2 * r] = mv[r];
        mpairs[2 * r + 1] = sp + 1;
    }
    TokenizerParts parts = {.vocab = vocab, .n_vocab = n, .merges = mpairs, .n_merges = nm, .added = added,
                            .n_added = na, .split_regexes = rxk ? (const char *const *)rv : NULL,
                            .n_split_regexes = rxk ? (size_t)rxk->arr_n : 0, .ignore_merges = ignore_merges};
    st = tokenizer_new(&parts, out, e);
    if (st) ds_error_prefix(e, "%s (tokenizer metadata)", f->what);
done:
    free(ta);
    free(tv);
    free(ma);
    free(mv);
    free(ra);
    free(rv);
    free(vocab);
    free(mpairs);
    free(added);
    return st;
}

/* ---------------------------------------------------------------- tokenizer.json -> GGUF metadata */

DsocrStatus tokenizer_json_to_gguf(const char *path, int vocab_size, int bos, int eos, int dsocr_keys, GgufWriter *w,
                                   DsError *e_out) {
    char err[512] = "";
    size_t errn = sizeof err;
    char *buf;
    size_t len;
    DsocrStatus rs = ds_read_file(path, 256u << 20, &buf, &len, e_out);
    if (rs) return rs;
    cJSON *root = cJSON_ParseWithLength(buf, len);
    free(buf);
    int rc = -1;
    char **tok = NULL;
    int32_t *type = NULL, *flags = NULL;
    const char **merges = NULL;
    char **mbuf = NULL;
    const char *rx[16];
    int nrx = 0, nm = 0, n = vocab_size;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *mer = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(mer)) {
        snprintf(err, errn, "%s: no model.vocab / model.merges", path);
        goto done;
    }
    for (const cJSON *v = vocab->child; v; v = v->next)
        if (cJSON_IsNumber(v) && v->valueint >= n) n = v->valueint + 1;
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (cJSON_IsNumber(id) && id->valueint >= n) n = id->valueint + 1;
    }
    if (n > (1 << 24)) {
        snprintf(err, errn, "%s: ids up to %d", path, n);
        goto done;
    }
    tok = calloc((size_t)n, sizeof *tok);
    type = calloc((size_t)n, sizeof *type);
    flags = calloc((size_t)n, sizeof *flags);
    nm = cJSON_GetArraySize(mer);
    merges = calloc((size_t)nm + 1, sizeof *merges);
    mbuf = calloc((size_t)nm + 1, sizeof *mbuf);
    if (!tok || !type || !flags || !merges || !mbuf) {
        snprintf(err, errn, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) type[i] = 5, flags[i] = -1; /* UNUSED, not added */
    for (const cJSON *v = vocab->child; v; v = v->next) {
        if (!cJSON_IsNumber(v) || v->valueint < 0) continue;
        tok[v->valueint] = v->string;
        type[v->valueint] = 1; /* NORMAL */
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id"), *c = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || id->valueint < 0 || !cJSON_IsString(c)) continue;
        int i = id->valueint, f = 0;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special"))) f |= TOKENIZER_ADDED_SPECIAL;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "normalized"))) f |= TOKENIZER_ADDED_NORMALIZED;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "lstrip"))) f |= TOKENIZER_ADDED_LSTRIP;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "rstrip"))) f |= TOKENIZER_ADDED_RSTRIP;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "single_word"))) f |= TOKENIZER_ADDED_SINGLE_WORD;
        if (tok[i] && !strcmp(tok[i], c->valuestring)) f |= TOKENIZER_ADDED_IN_VOCAB;
        tok[i] = c->valuestring;
        type[i] = (f & TOKENIZER_ADDED_SPECIAL) ? 3 : 4; /* CONTROL, USER_DEFINED */
        flags[i] = f;
    }
    char (*pad)[24] = calloc((size_t)n, sizeof *pad);
    if (!pad) {
        snprintf(err, errn, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++)
        if (!tok[i]) {
            snprintf(pad[i], sizeof pad[i], "[PAD%d]", i);
            tok[i] = pad[i];
        }
    int k = 0;
    for (const cJSON *m = mer->child; m; m = m->next, k++) {
        if (cJSON_IsString(m)) {
            merges[k] = m->valuestring;
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            size_t a = strlen(m->child->valuestring), b = strlen(m->child->next->valuestring);
            if (!(mbuf[k] = malloc(a + b + 2))) break;
            snprintf(mbuf[k], a + b + 2, "%s %s", m->child->valuestring, m->child->next->valuestring);
            merges[k] = mbuf[k];
        } else {
            snprintf(err, errn, "%s: merges[%d] is neither \"a b\" nor [a, b]", path, k);
            free(pad);
            goto done;
        }
    }
    /* the pre-tokenizer's Split regexes, kept exactly */
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    for (const cJSON *p = seq ? seq->child : NULL; p && nrx < 16; p = p->next) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(p, "pattern"), "Regex");
        if (cJSON_IsString(ty) && !strcmp(ty->valuestring, "Split") && cJSON_IsString(r)) rx[nrx++] = r->valuestring;
    }
    gguf_writer_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_str(w, "tokenizer.ggml.pre", "deepseek-v3");
    gguf_writer_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, NULL, (size_t)n);
    gguf_writer_arr_i32(w, "tokenizer.ggml.token_type", type, (size_t)n);
    gguf_writer_arr_str(w, "tokenizer.ggml.merges", merges, NULL, (size_t)nm);
    gguf_writer_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    gguf_writer_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    gguf_writer_bool(w, "tokenizer.ggml.add_bos_token", 1);
    gguf_writer_bool(w, "tokenizer.ggml.add_eos_token", 0);
    gguf_writer_str(w, "tokenizer.chat_template", "{% for m in messages %}{{m['content']}}{% endfor %}");
    if (dsocr_keys) {
        gguf_writer_arr_i32(w, "dsocr.tokenizer.added_flags", flags, (size_t)n);
        if (nrx) gguf_writer_arr_str(w, "dsocr.tokenizer.split_regexes", rx, NULL, (size_t)nrx);
        gguf_writer_bool(w, "dsocr.tokenizer.ignore_merges",
                         cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges")));
    }
    free(pad);
    rc = 0;
done:
    if (mbuf)
        for (int i = 0; i < nm; i++) free(mbuf[i]);
    free(mbuf);
    free(merges);
    free(tok);
    free(type);
    free(flags);
    cJSON_Delete(root);
    if (rc && !err[0]) snprintf(err, errn, "%s: not a usable tokenizer.json", path);
    return rc ? ds_fail(e_out, DSOCR_E_FORMAT, "%s", err) : DSOCR_OK;
}

/* ---------------------------------------------------------------- lookups */

int32_t tokenizer_vocab_size(const Tokenizer *t) { return t->n_ids; }

int32_t tokenizer_token_id(const Tokenizer *t, const char *token) {
    size_t n = strlen(token);
    if (!n) return -1;
    for (int k = 0; k < 2; k++) {
        size_t len = 0;
        int32_t a = trie_longest(&t->trie[k], (const uint8_t *)token, n, &len);
        if (a >= 0 && len == n) return t->added[a].id;
    }
    return vocab_find(t, token, n);
}

/* ---------------------------------------------------------------- encode */

/* A candidate merge: (rank << 32) | position of its left symbol, so that integer order is BPE order (lowest rank,
 * then leftmost). An item is stale when the pair now at its position no longer has its rank; a rank names one
 * pair, so an item whose rank still matches is exactly the merge a fresh item would describe. */
typedef uint64_t HeapItem;

typedef struct Enc {
    const Tokenizer *t;
    int32_t *out;
    size_t n, cap;
    pcre2_match_data *md;
    int32_t *sym, *prev, *next; /* BPE scratch: one symbol per byte of the piece */
    HeapItem *heap;
    size_t scap, hcap;
    Buf word; /* the piece in the byte-level alphabet (ignore_merges) */
    DsError *e;
} Enc;

static int emit(Enc *c, int32_t id) {
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 256;
        int32_t *no = realloc(c->out, nc * sizeof *no);
        if (!no) return -1;
        c->out = no;
        c->cap = nc;
    }
    c->out[c->n++] = id;
    return 0;
}

static void heap_sift_down(HeapItem *h, size_t n, size_t i) {
    HeapItem x = h[i];
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        size_t m = (l + 1 < n && h[l + 1] < h[l]) ? l + 1 : l;
        if (h[m] >= x) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = x;
}

static void heap_push(HeapItem *h, size_t *n, HeapItem it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (it >= h[p]) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static HeapItem heap_pop(HeapItem *h, size_t *n) {
    HeapItem top = h[0];
    if (--*n) {
        h[0] = h[*n];
        heap_sift_down(h, *n, 0);
    }
    return top;
}

static void try_push(Enc *c, size_t *hn, int32_t pos) {
    int32_t nx = c->next[pos];
    if (nx < 0) return;
    const MSlot *m = merge_find(c->t, c->sym[pos], c->sym[nx]);
    if (m) heap_push(c->heap, hn, ((uint64_t)m->rank << 32) | (uint32_t)pos);
}

/* BPE of one piece (raw bytes), appending the ids. */
static DsocrStatus bpe_piece(Enc *c, const uint8_t *s, size_t n) {
    const Tokenizer *t = c->t;
    if (n == 1) return emit(c, t->byte_id[s[0]]) ? ds_fail(c->e, DSOCR_E_NOMEM, "out of memory") : DSOCR_OK;
    if (n > INT32_MAX) return ds_fail(c->e, DSOCR_E_TOO_LONG, "a piece of %zu bytes is too long", n);
    if (t->ignore_merges) {
        c->word.n = 0;
        for (size_t i = 0; i < n; i++)
            if (buf_put(&c->word, t->bl[s[i]].u, t->bl[s[i]].n)) return ds_fail(c->e, DSOCR_E_NOMEM, "out of memory");
        int32_t id = vocab_find(t, c->word.p, c->word.n);
        if (id >= 0) return emit(c, id) ? ds_fail(c->e, DSOCR_E_NOMEM, "out of memory") : DSOCR_OK;
    }
    if (n > c->scap) {
        size_t nc = c->scap ? c->scap : 64;
        while (nc < n) nc *= 2;
        int32_t *a = realloc(c->sym, nc * sizeof *a);
        if (a) c->sym = a;
        int32_t *b = a ? realloc(c->prev, nc * sizeof *b) : NULL;
        if (b) c->prev = b;
        int32_t *d = b ? realloc(c->next, nc * sizeof *d) : NULL;
        if (d) c->next = d;
        if (!d) return ds_fail(c->e, DSOCR_E_NOMEM, "out of memory");
        c->scap = nc;
    }
    /* Each merge pushes at most 2 items; with the n-1 initial ones the heap never holds more than 3n. */
    if (3 * n > c->hcap) {
        size_t nc = c->hcap ? c->hcap : 192;
        while (nc < 3 * n) nc *= 2;
        HeapItem *h = realloc(c->heap, nc * sizeof *h);
        if (!h) return ds_fail(c->e, DSOCR_E_NOMEM, "out of memory");
        c->heap = h;
        c->hcap = nc;
    }
    for (size_t i = 0; i < n; i++) {
        c->sym[i] = t->byte_id[s[i]];
        c->prev[i] = (int32_t)i - 1;
        c->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) { /* all first pairs, then heapify: O(n) */
        const MSlot *m = merge_find(t, c->sym[i], c->sym[i + 1]);
        if (m) c->heap[hn++] = ((uint64_t)m->rank << 32) | (uint32_t)i;
    }
    for (size_t i = hn / 2; i-- > 0;) heap_sift_down(c->heap, hn, i);
    while (hn) {
        HeapItem it = heap_pop(c->heap, &hn);
        int32_t pos = (int32_t)(uint32_t)it, nx = c->next[pos];
        if (c->sym[pos] < 0 || nx < 0) continue; /* stale: absorbed, or now last */
        const MSlot *m = merge_find(t, c->sym[pos], c->sym[nx]);
        if (!m || m->rank != (uint32_t)(it >> 32)) continue; /* stale: the pair here changed */
        c->sym[pos] = m->result;
        c->sym[nx] = -1;
        int32_t nn = c->next[nx];
        c->next[pos] = nn;
        if (nn >= 0) c->prev[nn] = pos;
        if (c->prev[pos] >= 0) try_push(c, &hn, c->prev[pos]);
        try_push(c, &hn, pos);
    }
    for (int32_t i = 0; i >= 0; i = c->next[i])
        if (emit(c, c->sym[i])) return ds_fail(c->e, DSOCR_E_NOMEM, "out of memory");
    return DSOCR_OK;
}

/* Runs split stage k on s[0..n) and everything after it. Piece boundaries are the subject's ends. */
static DsocrStatus split_stage(Enc *c, const uint8_t *s, size_t n, int k) {
    if (n == 0) return DSOCR_OK;
    if (k == c->t->n_re) return bpe_piece(c, s, n);
    size_t pos = 0, last = 0;
    DsocrStatus st;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
    while (pos < n) {
        int rc = pcre2_match(c->t->re[k], s, n, pos, PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ds_fail(c->e, DSOCR_E_TOO_LONG, "pre-tokenizer split %d failed on a %zu-byte piece: %s", k + 1, n,
                           (const char *)msg);
        }
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: no piece; move on by one character */
            pos = ms + 1;
            while (pos < n && (s[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > last && (st = split_stage(c, s + last, ms - last, k + 1))) return st;
        if ((st = split_stage(c, s + ms, me - ms, k + 1))) return st;
        last = pos = me;
    }
    if (last < n) return split_stage(c, s + last, n - last, k + 1);
    return DSOCR_OK;
}

static int is_word_byte(uint8_t b) { return (b >= '0' && b <= '9') || (unsigned)((b | 0x20) - 'a') < 26u || b == '_' || b >= 0x80; }

/* Length of the whitespace character ending at s[i-1] (0 if none), for lstrip. */
static size_t space_before(const uint8_t *s, size_t lo, size_t i) {
    if (i <= lo) return 0;
    size_t j = i - 1;
    while (j > lo && (s[j] & 0xC0) == 0x80 && i - j < 4) j--;
    int k = utf8_class(s + j, i - j);
    if (k <= 0 || (size_t)k != i - j || !is_space_cp(utf8_decode(s + j, k))) return 0;
    return i - j;
}

/* Splits s[0..n) on the added tokens of trie k (leftmost-longest); the gaps go to the next pass. */
static DsocrStatus added_pass(Enc *c, const uint8_t *s, size_t n, int k) {
    const Tokenizer *t = c->t;
    const Trie *tr = &t->trie[k];
    DsocrStatus st;
    size_t last = 0;
    for (size_t i = 0; i < n && tr->n;) {
        size_t len = 0;
        int32_t a = trie_longest(tr, s + i, n - i, &len);
        if (a < 0) {
            i++;
            continue;
        }
        const AddedTok *at = &t->added[a];
        size_t ms = i, me = i + len;
        if (at->single_word && ((ms > 0 && is_word_byte(s[ms - 1])) || (me < n && is_word_byte(s[me])))) {
            i++;
            continue;
        }
        if (at->lstrip)
            for (size_t w; (w = space_before(s, last, ms));) ms -= w;
        if (at->rstrip)
            while (me < n) {
                int q = utf8_class(s + me, n - me);
                if (q <= 0 || !is_space_cp(utf8_decode(s + me, q))) break;
                me += (size_t)q;
            }
        if (ms > last) {
            if ((st = k == 0 ? added_pass(c, s + last, ms - last, 1) : split_stage(c, s + last, ms - last, 0)))
                return st;
        }
        if (emit(c, at->id)) return ds_fail(c->e, DSOCR_E_NOMEM, "out of memory");
        last = i = me;
    }
    if (last < n) return k == 0 ? added_pass(c, s + last, n - last, 1) : split_stage(c, s + last, n - last, 0);
    return DSOCR_OK;
}

DsocrStatus tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                             DsError *e) {
    *ids = NULL;
    *n = 0;
    if (len && !text) return ds_fail(e, DSOCR_E_INVALID_ARG, "tokenizer_encode: text is NULL");
    size_t bad = utf8_valid_prefix((const uint8_t *)text, len);
    if (bad != len)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "text is not valid UTF-8: bad byte 0x%02x at offset %zu",
                       (uint8_t)text[bad], bad);
    if (!len) return DSOCR_OK;
    Enc c = {.t = t, .e = e};
    c.md = pcre2_match_data_create(1, NULL);
    DsocrStatus st = c.md ? added_pass(&c, (const uint8_t *)text, len, 0) : ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    pcre2_match_data_free(c.md);
    free(c.sym);
    free(c.prev);
    free(c.next);
    free(c.heap);
    free(c.word.p);
    if (st) {
        free(c.out);
        return st;
    }
    *ids = c.out;
    *n = c.n;
    return DSOCR_OK;
}

/* ---------------------------------------------------------------- decode */

/* Appends the lossy UTF-8 of s[0..n) to out. When final is 0, an unfinished character at the end is not
 * written; returns the number of bytes consumed (n when final). */
static int lossy_put(Buf *out, const uint8_t *s, size_t n, int final, size_t *consumed) {
    if (buf_reserve(out, n * 3 + 1)) return -1;
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && s[run] < 0x80) run++;
        if (run > i) {
            memcpy(out->p + out->n, s + i, run - i);
            out->n += run - i;
            i = run;
            if (i == n) break;
        }
        int k = utf8_class(s + i, n - i);
        if (k > 0) {
            memcpy(out->p + out->n, s + i, (size_t)k);
            out->n += (size_t)k;
            i += (size_t)k;
        } else if (k == 0 && !final) {
            break;
        } else {
            memcpy(out->p + out->n, "\xEF\xBF\xBD", 3);
            out->n += 3;
            i += k < 0 ? (size_t)-k : n - i;
        }
    }
    out->p[out->n] = 0;
    *consumed = i;
    return 0;
}

static int gather(const Tokenizer *t, const int32_t *ids, size_t n, int skip_special, Buf *raw) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids) continue;
        uint8_t k = t->kind[id];
        if (k == KIND_NONE || (skip_special && k == KIND_SPECIAL)) continue;
        if (buf_put(raw, t->arena + t->dec_off[id], t->dec_len[id])) return -1;
    }
    return 0;
}

DsocrStatus tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                             size_t *len, DsError *e) {
    *text = NULL;
    if (len) *len = 0;
    if (n && !ids) return ds_fail(e, DSOCR_E_INVALID_ARG, "tokenizer_decode: ids is NULL");
    Buf raw = {0}, out = {0};
    size_t used;
    if (gather(t, ids, n, skip_special, &raw) || lossy_put(&out, (const uint8_t *)raw.p, raw.n, 1, &used)) {
        free(raw.p);
        free(out.p);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    free(raw.p);
    *text = out.p;
    if (len) *len = out.n;
    return DSOCR_OK;
}

struct TokenizerStream {
    const Tokenizer *t;
    int skip_special;
    uint8_t held[4]; /* an unfinished character carried to the next push */
    size_t n_held;
    Buf raw, out;
};

DsocrStatus tokenizer_stream_new(const Tokenizer *t, int skip_special, TokenizerStream **out, DsError *e) {
    *out = calloc(1, sizeof **out);
    if (!*out) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    (*out)->t = t;
    (*out)->skip_special = skip_special;
    return DSOCR_OK;
}

static DsocrStatus stream_run(TokenizerStream *s, const int32_t *id, int final, const char **text, size_t *len,
                              DsError *e) {
    s->raw.n = 0;
    s->out.n = 0;
    size_t used;
    if (buf_put(&s->raw, s->held, s->n_held) || (id && gather(s->t, id, 1, s->skip_special, &s->raw)) ||
        lossy_put(&s->out, (const uint8_t *)s->raw.p, s->raw.n, final, &used))
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    s->n_held = s->raw.n - used; /* at most 3: an unfinished character */
    DS_ASSERT(s->n_held < sizeof s->held);
    if (s->n_held) memcpy(s->held, s->raw.p + used, s->n_held);
    *text = s->out.p;
    *len = s->out.n;
    return DSOCR_OK;
}

DsocrStatus tokenizer_stream_push(TokenizerStream *s, int32_t id, const char **text, size_t *len, DsError *e) {
    return stream_run(s, &id, 0, text, len, e);
}

DsocrStatus tokenizer_stream_flush(TokenizerStream *s, const char **text, size_t *len, DsError *e) {
    return stream_run(s, NULL, 1, text, len, e);
}

void tokenizer_stream_free(TokenizerStream *s) {
    if (!s) return;
    free(s->raw.p);
    free(s->out.p);
    free(s);
}
