/* tokenizer.h: DeepSeek-OCR's text tokenizer, a byte-level BPE that matches Hugging Face `tokenizers` to the id
 * and to the byte (facts: spec/tokenizer.md).
 *
 * Encode: added tokens are split out first (leftmost-longest; tokens with normalized=false, then those with
 * normalized=true), then the pre-tokenizer's regex splits run one after another (each on every piece of the
 * previous one, behaviour Isolated), each piece goes through the GPT-2 byte->char map and rank-ordered BPE.
 * Decode: byte-level back to bytes, lossy UTF-8 (each maximal ill-formed subsequence becomes U+FFFD, as Rust's
 * from_utf8_lossy), special tokens kept or skipped, unknown ids dropped.
 *
 * What it is not: a general `tokenizers` clone. Only no-op normalizers, BPE models over a complete byte-level
 * alphabet, and pre-tokenizers made of Split(Isolated) and ByteLevel(add_prefix_space=false) stages are accepted;
 * anything else is refused at load with DSOCR_E_UNSUPPORTED naming the part. The post-processor is ignored:
 * encode never adds BOS (the caller prepends id 0 where the model wants it).
 *
 * Regexes run on PCRE2 (UTF + UCP, JIT) with `\s`/`\S` rewritten to Oniguruma's set (U+0009-000D, U+0020,
 * U+0085, Z*), which reproduces the Rust pre-tokenizer except on code points unassigned in PCRE2's Unicode 14
 * tables.
 *
 * Malformed UTF-8 in the text to encode is rejected with DSOCR_E_INVALID_ARG naming the byte offset (Hugging Face
 * cannot receive such text: its input is a Rust &str).
 *
 * Threads: a Tokenizer is immutable after construction and may be used by any number of threads at once (no
 * caches). A TokenizerStream belongs to one thread at a time.
 */
#ifndef DSOCR_TOKENIZER_H
#define DSOCR_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct Tokenizer Tokenizer;
typedef struct TokenizerStream TokenizerStream;

/* One added token (Hugging Face `added_tokens` entry). content is UTF-8, NUL-terminated, not empty. */
typedef struct TokenizerAddedToken {
    int32_t id;
    const char *content;
    int special;     /* dropped by decode when skip_special */
    int normalized;  /* matched in the second pass (after normalization, a no-op here) */
    int lstrip;      /* the match also swallows whitespace on its left */
    int rstrip;      /* ... and on its right */
    int single_word; /* only matches when not glued to word characters (ASCII alnum, '_', non-ASCII) */
} TokenizerAddedToken;

/* Everything a tokenizer is made of, e.g. as read from a GGUF file. All strings are UTF-8 and NUL-terminated;
 * nothing is kept after tokenizer_new returns (it copies what it needs). */
typedef struct TokenizerParts {
    const char *const *vocab;  /* [n_vocab]: the byte-level string of id i, or NULL where id i has none */
    size_t n_vocab;
    const char *const *merges; /* [n_merges * 2]: merge r joins merges[2r] and merges[2r+1]; rank = r */
    size_t n_merges;
    const TokenizerAddedToken *added; /* [n_added] */
    size_t n_added;
    const char *const *split_regexes; /* [n_split_regexes] Split(Isolated) stages in order; NULL = DeepSeek-V3's */
    size_t n_split_regexes;
    int ignore_merges; /* 1: a piece that is itself in the vocab becomes that one id without BPE */
} TokenizerParts;

/* Builds a tokenizer from parts. Fails with DSOCR_E_FORMAT naming the problem (a merge whose halves or result
 * are not in the vocab, a duplicate token or id, a missing byte-level symbol, a regex that does not compile). */
DsocrStatus tokenizer_new(const TokenizerParts *parts, Tokenizer **out, DsError *e);

/* Loads a Hugging Face tokenizer.json (merges as "a b" strings or ["a","b"] arrays, with or without
 * ignore_merges, any post-processor). On failure *out is NULL and e names the file and what is wrong. */
DsocrStatus tokenizer_load_json(const char *path, Tokenizer **out, DsError *e);
/* The same from bytes in memory (json need not be NUL-terminated). */
DsocrStatus tokenizer_load_json_buffer(const char *json, size_t len, Tokenizer **out, DsError *e);

/* Loads the tokenizer from a GGUF file's metadata (llama.cpp's keys: tokenizer.ggml.model "gpt2",
 * tokenizer.ggml.tokens / token_type / merges / pre; docs/gguf.md). Added tokens are the CONTROL (special) and
 * USER_DEFINED (not special, normalized) ids, unless dsocr.tokenizer.added_flags gives each id's exact
 * Hugging Face flags; the pre-tokenizer is DeepSeek-V3's for tokenizer.ggml.pre "deepseek-v3" (llama.cpp's
 * name) or the regexes in dsocr.tokenizer.split_regexes. Anything else is DSOCR_E_UNSUPPORTED naming it. */
struct GgufFile;
DsocrStatus tokenizer_load_gguf(const struct GgufFile *f, Tokenizer **out, DsError *e);

/* Writes a tokenizer.json as GGUF metadata in llama.cpp's keys (tokenizer.ggml.model "gpt2", pre "deepseek-v3",
 * tokens padded to vocab_size with UNUSED "[PADn]" entries, token_type, merges as "a b", bos/eos) and, with
 * dsocr_keys, dsocr.tokenizer.added_flags / split_regexes / ignore_merges, which make the load exact. */
struct GgufWriter;
DsocrStatus tokenizer_json_to_gguf(const char *path, int vocab_size, int bos, int eos, int dsocr_keys,
                                   struct GgufWriter *w, DsError *e);

/* Bits of dsocr.tokenizer.added_flags (one i32 per id; -1 for ids that are not added tokens). */
enum {
    TOKENIZER_ADDED_SPECIAL = 1,
    TOKENIZER_ADDED_NORMALIZED = 2,
    TOKENIZER_ADDED_LSTRIP = 4,
    TOKENIZER_ADDED_RSTRIP = 8,
    TOKENIZER_ADDED_SINGLE_WORD = 16,
    TOKENIZER_ADDED_IN_VOCAB = 32, /* the id is also a vocab entry with the same string */
};

void tokenizer_free(Tokenizer *t);

/* Number of ids: one past the largest id of the vocab and the added tokens (128827 for DeepSeek-OCR). */
int32_t tokenizer_vocab_size(const Tokenizer *t);

/* The id of an added token's content (e.g. "<image>" -> 128815), else of a vocab entry written in the
 * byte-level alphabet (e.g. "Ġthe"); -1 when there is none. */
int32_t tokenizer_token_id(const Tokenizer *t, const char *token);

/* Encodes len bytes of UTF-8 text (NUL bytes allowed). *ids is malloc'd (caller frees; NULL when *n == 0).
 * No BOS is added. Fails with DSOCR_E_INVALID_ARG on malformed UTF-8, DSOCR_E_NOMEM on allocation failure. */
DsocrStatus tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                             DsError *e);

/* Decodes n ids to UTF-8: *text is malloc'd and NUL-terminated (caller frees), *len its length without the NUL
 * (len may be NULL). Ids outside the vocabulary are dropped; with skip_special, added tokens marked special are
 * dropped too. Bytes that do not form UTF-8 become U+FFFD, so the result is always valid UTF-8. */
DsocrStatus tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                             size_t *len, DsError *e);

/* Streaming decode for generation: push ids one at a time and get the text they complete. Bytes of a character
 * that is not finished yet are held back, so every piece returned is valid UTF-8, and the concatenation of all
 * pieces (pushes, then flush) equals tokenizer_decode of all the ids. The stream keeps a pointer to t. */
DsocrStatus tokenizer_stream_new(const Tokenizer *t, int skip_special, TokenizerStream **out, DsError *e);
/* Adds one id. *text points into the stream (valid until its next call), *len may be 0. */
DsocrStatus tokenizer_stream_push(TokenizerStream *s, int32_t id, const char **text, size_t *len, DsError *e);
/* Ends the sequence: held-back bytes come out as U+FFFD. The stream may then be reused for a new sequence. */
DsocrStatus tokenizer_stream_flush(TokenizerStream *s, const char **text, size_t *len, DsError *e);
void tokenizer_stream_free(TokenizerStream *s);

#endif
