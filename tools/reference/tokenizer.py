"""Byte-level BPE tokenizer for DeepSeek-OCR, in plain Python (reference only, not fast).

Reads a Hugging Face `tokenizer.json` (the DeepSeek-V3 vocabulary + the 12 OCR tokens) and reproduces
`tokenizers`' encode(text, add_special_tokens=False) and decode(ids) for it, following
spec/tokenizer.md §6: added tokens split out first (leftmost-longest), then the three pre-tokenizer
splits of the file (each "Isolated", each run on the pieces of the previous one), the GPT-2 byte map,
rank-based BPE (lowest rank, leftmost first), and a lossy UTF-8 byte-level decode.

The pre-tokenizer regexes are not run through a regex engine: the third one is the hand-written scanner of
spec/tokenizer.md §6.2 over Python's `unicodedata` categories (Unicode 14 in Python 3.11, the same tables as
Debian's PCRE2/Oniguruma). The loader checks that the file's patterns are the ones this scanner implements,
so a different tokenizer.json fails loudly instead of tokenizing wrongly.
"""
import json
import unicodedata

PAT_DIGITS = "\\p{N}{1,3}"
PAT_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
PAT_MAIN = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
            " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
ASCII_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def bytes_to_unicode():
    """GPT-2 byte -> character table (list of 256 one-character strings)."""
    direct = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = [None] * 256
    for b in direct:
        table[b] = chr(b)
    n = 0
    for b in range(256):
        if table[b] is None:
            table[b] = chr(0x100 + n)
            n += 1
    return table


_CAT_CACHE = {}


def _cls(ch):
    """Category class of one character: 'L', 'M', 'N', 'P', 'S', 'Z' (whitespace per Oniguruma \\s) or 'O'."""
    c = _CAT_CACHE.get(ch)
    if c is not None:
        return c
    o = ord(ch)
    gc = unicodedata.category(ch)
    if (0x09 <= o <= 0x0D) or o == 0x20 or o == 0x85 or gc in ("Zs", "Zl", "Zp"):
        c = "Z"
    elif gc[0] in "LMNPS":
        c = gc[0]
    else:
        c = "O"
    _CAT_CACHE[ch] = c
    return c


def _split_isolated(piece, match_at):
    """Generic 'Isolated' split: match_at(piece, i) returns the end of a match starting at i, or -1."""
    out, gap, i, n = [], 0, 0, len(piece)
    while i < n:
        e = match_at(piece, i)
        if e > i:
            if gap < i:
                out.append(piece[gap:i])
            out.append(piece[i:e])
            i = gap = e
        else:
            i += 1
    if gap < n:
        out.append(piece[gap:])
    return out


def _m_digits(s, i):
    if _cls(s[i]) != "N":
        return -1
    e = i + 1
    while e < len(s) and e < i + 3 and _cls(s[e]) == "N":
        e += 1
    return e


def _is_cjk(ch):
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FA5 or 0x3040 <= o <= 0x309F or 0x30A0 <= o <= 0x30FF


def _m_cjk(s, i):
    if not _is_cjk(s[i]):
        return -1
    e = i + 1
    while e < len(s) and _is_cjk(s[e]):
        e += 1
    return e


def _m_main(s, i):
    """The third pattern, branch by branch in the regex's (leftmost-first) order."""
    n = len(s)
    c = s[i]
    k = _cls(c)
    # 1. [ascii punct][A-Za-z]+
    if c in ASCII_PUNCT and i + 1 < n and s[i + 1].isascii() and s[i + 1].isalpha():
        e = i + 1
        while e < n and s[e].isascii() and s[e].isalpha():
            e += 1
        return e
    # 2. [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
    if c not in "\r\n" and k not in "LPS" and i + 1 < n and _cls(s[i + 1]) in "LM":
        e = i + 2
        while e < n and _cls(s[e]) in "LM":
            e += 1
        return e
    if k in "LM":
        e = i + 1
        while e < n and _cls(s[e]) in "LM":
            e += 1
        return e
    # 3. ' '?[\p{P}\p{S}]+[\r\n]*
    j = i + 1 if (c == " " and i + 1 < n and _cls(s[i + 1]) in "PS") else i
    if _cls(s[j]) in "PS":
        e = j + 1
        while e < n and _cls(s[e]) in "PS":
            e += 1
        while e < n and s[e] in "\r\n":
            e += 1
        return e
    # 4..6: whitespace runs
    if k == "Z":
        e = i
        last_nl = -1
        while e < n and _cls(s[e]) == "Z":
            if s[e] in "\r\n":
                last_nl = e
            e += 1
        if last_nl >= 0:                      # \s*[\r\n]+
            return last_nl + 1
        if e == n:                            # \s+(?!\S) at the end of the piece
            return e
        if e - i >= 2:                        # \s+(?!\S): all but the last
            return e - 1
        return e                              # \s+ (a single whitespace before a non-space)
    return -1


class Tokenizer:
    """encode(text) -> list of ids (no BOS); decode(ids, skip_special=False) -> str."""

    def __init__(self, path):
        with open(path, "rb") as f:
            tj = json.load(f)
        pre = tj.get("pre_tokenizer") or {}
        pats = [p.get("pattern", {}).get("Regex") for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
        if pats != [PAT_DIGITS, PAT_CJK, PAT_MAIN]:
            raise ValueError(f"{path}: pre-tokenizer is not the DeepSeek-V3 one this reference implements")
        model = tj["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"{path}: model type {model.get('type')!r} is not BPE")
        self.vocab = dict(model["vocab"])
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.ranks = {}
        for r, m in enumerate(model["merges"]):
            a, b = m.split(" ") if isinstance(m, str) else m
            self.ranks[(a, b)] = r
        self.added = {}       # content -> id
        self.special_ids = set()
        for t in tj.get("added_tokens", []):
            self.added[t["content"]] = t["id"]
            if t.get("special"):
                self.special_ids.add(t["id"])
        self.id_to_tok = {i: s for s, i in self.vocab.items()}
        self.id_to_added = {i: s for s, i in self.added.items()}
        self.byte_enc = bytes_to_unicode()
        self.byte_dec = {ch: b for b, ch in enumerate(self.byte_enc)}
        self._by_first = {}
        for s in sorted(self.added, key=len, reverse=True):
            self._by_first.setdefault(s[0], []).append(s)
        self._cache = {}

    def token_id(self, s):
        """Id of an added token or vocab entry, or None."""
        if s in self.added:
            return self.added[s]
        return self.vocab.get(s)

    def _split_added(self, text):
        """Yields (is_added, str) pieces, added tokens matched leftmost-longest."""
        start = i = 0
        n = len(text)
        while i < n:
            hit = None
            for s in self._by_first.get(text[i], ()):
                if text.startswith(s, i):
                    hit = s
                    break
            if hit is None:
                i += 1
                continue
            if start < i:
                yield False, text[start:i]
            yield True, hit
            i += len(hit)
            start = i
        if start < n:
            yield False, text[start:]

    def pre_tokenize(self, text):
        """Pre-tokenizer pieces (strings) of a text holding no added tokens."""
        pieces = [text] if text else []
        for fn in (_m_digits, _m_cjk, _m_main):
            nxt = []
            for p in pieces:
                nxt.extend(_split_isolated(p, fn))
            pieces = nxt
        return pieces

    def _bpe(self, word):
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        if self.ignore_merges and word in self.vocab:
            ids = [self.vocab[word]]
        else:
            syms = list(word)
            ranks = self.ranks
            while len(syms) > 1:
                best, bi = None, -1
                for j in range(len(syms) - 1):
                    r = ranks.get((syms[j], syms[j + 1]))
                    if r is not None and (best is None or r < best):
                        best, bi = r, j
                if best is None:
                    break
                syms[bi:bi + 2] = [syms[bi] + syms[bi + 1]]
            ids = [self.vocab[s] for s in syms]
        if len(self._cache) < 200000:
            self._cache[word] = ids
        return ids

    def encode(self, text):
        """Ids of `text` as HF encode(text, add_special_tokens=False)."""
        out = []
        for is_added, piece in self._split_added(text):
            if is_added:
                out.append(self.added[piece])
                continue
            for p in self.pre_tokenize(piece):
                word = "".join(self.byte_enc[b] for b in p.encode("utf-8"))
                out.extend(self._bpe(word))
        return out

    def decode(self, ids, skip_special=False):
        """Text of `ids` as HF decode: unknown ids dropped, byte-level map, lossy UTF-8."""
        buf = bytearray()
        for i in ids:
            i = int(i)
            s = self.id_to_added.get(i)
            if s is not None:
                if skip_special and i in self.special_ids:
                    continue
            else:
                s = self.id_to_tok.get(i)
                if s is None:
                    continue
            if all(ch in self.byte_dec for ch in s):
                buf.extend(self.byte_dec[ch] for ch in s)
            else:
                buf.extend(s.encode("utf-8"))
        return buf.decode("utf-8", errors="replace")
