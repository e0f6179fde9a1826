"""End-to-end reference run: image -> views -> image block -> prompt ids -> greedy generation (spec §6, §7.6, §8).

Prompt: [BOS 0] + encode(text before <image>) + slots x 128815 + encode(text after) (hf strips the prompt first;
exactly one <image> is required). Generation: greedy over the raw logits after the profile's no-repeat n-gram
ban (hf: n=20 over prompt+output; vllm: n=30 within the last 90 output tokens, <td>/</td> exempt), argmax taking
the lowest index on ties, stop at EOS (id 1) unless ignore_eos. Dumps (DUMP.md) record the raw logits BEFORE
the ban; `generated` holds every chosen token, a final EOS included.
"""
import json
import os

import torch

from preprocess import PROFILES, load_image, make_views, normalize, resolve_mode
from st_io import write_dump

PROMPTS = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
}
IMAGE_ID = 128815


def prompt_text(name):
    """Prompt string of a prompt name: a key of PROMPTS, 'locate:TEXT' or 'raw:TEXT'."""
    if name in PROMPTS:
        return PROMPTS[name]
    if name.startswith("locate:"):
        return f"<image>\nLocate <|ref|>{name[7:]}<|/ref|> in the image."
    if name.startswith("raw:"):
        return name[4:]
    raise ValueError(f"unknown prompt {name!r} (expected {', '.join(PROMPTS)}, locate:TEXT or raw:TEXT)")


def build_ids(tok, prompt, slots, compat="hf", bos=0):
    """Prompt ids with `slots` image placeholders (spec §6.1)."""
    if compat == "hf":
        prompt = prompt.strip()
    parts = prompt.split("<image>")
    if len(parts) != 2:
        raise ValueError(f"the prompt must hold exactly one <image> tag, it holds {len(parts) - 1}")
    return [bos] + tok.encode(parts[0]) + [IMAGE_ID] * slots + tok.encode(parts[1])


def banned_tokens(seq, out, compat):
    """Token ids the profile's no-repeat n-gram guard bans next. seq = prompt + output ids, out = output ids."""
    pr = PROFILES[compat]
    n = pr["ngram"]
    if pr["window"] is None:                                   # transformers no_repeat_ngram_size
        toks = seq
        lo = 0
    else:                                                      # DeepSeek vLLM NoRepeatNGramLogitsProcessor
        toks = out
        lo = max(0, len(toks) - pr["window"])
    if len(toks) < n - (1 if pr["window"] is None else 0) or n < 1:
        return set()
    prefix = toks[len(toks) - (n - 1):] if n > 1 else []
    ban = set()
    for i in range(lo, len(toks) - n + 1):
        if toks[i:i + n - 1] == prefix:
            ban.add(toks[i + n - 1])
    return ban - set(pr["whitelist"])


class Dumper:
    """Writes DIR/NAME.bin files (st_io.write_dump); a no-op when dir is None."""

    def __init__(self, d):
        self.dir = d
        if d:
            os.makedirs(d, exist_ok=True)

    def __bool__(self):
        return self.dir is not None

    def __call__(self, name, t, code=None):
        if self.dir:
            write_dump(os.path.join(self.dir, name + ".bin"), t, code)


def encode_image(ref, img, base_size, image_size, crop_mode, compat, dump=None):
    """(image block [slots, D], plan, view names)."""
    views, plan = make_views(img, base_size, image_size, crop_mode, compat)
    feats = {}
    for name, px in views:
        if dump:
            dump(f"{name}.pixels", torch.from_numpy(px.copy()))
        feats[name] = ref.encode_view(normalize(px), dump, name)
    tiles = [feats[n] for n, _ in views if n != "global"]
    block = ref.image_block(tiles, plan["grid"], feats["global"])
    if block.shape[0] != plan["slots"]:
        raise AssertionError(f"image block has {block.shape[0]} rows, plan says {plan['slots']}")
    return block, plan, [n for n, _ in views]


def generate(ref, tok, image, mode="gundam", base_size=None, image_size=None, crop_mode=None, prompt="markdown",
             compat="hf", max_tokens=8192, ignore_eos=False, dump_dir=None, forced=None, keep_logits=False):
    """Runs the reference. Returns dict(text, generated, prompt_ids, plan, logits (list of raw [V] rows when
    keep_logits or dumping), views). `forced`: token ids to feed instead of the argmax (teacher forcing)."""
    if compat not in PROFILES:
        raise ValueError(f"compat must be one of {', '.join(PROFILES)}")
    b, i, c = resolve_mode(mode, base_size, image_size, crop_mode)
    text = prompt_text(prompt)
    dump = Dumper(dump_dir)
    img = load_image(image, compat)
    block, plan, views = encode_image(ref, img, b, i, c, compat, dump)
    ids = build_ids(tok, text, plan["slots"], compat, ref.cfg.bos_token_id)
    T = len(ids)
    limit = min(max_tokens, ref.cfg.max_position_embeddings - T)
    if limit < 1:
        raise ValueError(f"prompt of {T} tokens leaves no room under max_position_embeddings")
    idt = torch.tensor(ids, dtype=torch.int64)
    h = ref.embed(idt)
    h[idt == IMAGE_ID] = block
    dump("prompt_ids", idt.to(torch.int32))
    dump("image_embeds", block)
    cache = []
    logits = ref.decoder(h, torch.arange(T), cache, dump=dump)
    out, rows = [], []
    keep = keep_logits or bool(dump)
    eos = ref.cfg.eos_token_id
    while True:
        if keep:
            rows.append(logits.clone())
        if forced is not None and len(out) < len(forced):
            t = int(forced[len(out)])
        else:
            ban = banned_tokens(ids + out, out, compat)
            masked = logits
            if ban:
                masked = logits.clone()
                masked[torch.tensor(sorted(ban))] = float("-inf")
            t = int(torch.argmax(masked))
        out.append(t)
        if (t == eos and not ignore_eos) or len(out) >= limit:
            break
        if forced is not None and len(out) >= len(forced):
            break
        logits = ref.decoder(ref.embed(torch.tensor([t])), torch.tensor([T + len(out) - 1]), cache)
    dump("generated", torch.tensor(out, dtype=torch.int32))
    if rows and dump:
        dump("logits", torch.stack(rows))
    body = out[:-1] if (out and out[-1] == eos and not ignore_eos) else out
    res = {"text": tok.decode(body), "generated": out, "prompt_ids": ids, "plan": plan, "views": views,
           "logits": rows if keep else None}
    if dump:
        meta = {"mode": mode, "base_size": b, "image_size": i, "crop_mode": c, "compat": compat,
                "precision": ref.precision, "prompt": text, "prompt_name": prompt, "image": str(image),
                "image_wh": list(img.size), "grid": plan["grid"], "global_side": plan["global_side"],
                "tile_side": plan["tile_side"], "slots": plan["slots"], "views": views, "n_prompt": T,
                "steps": len(out), "ignore_eos": ignore_eos, "max_tokens": max_tokens,
                "ngram": PROFILES[compat]["ngram"], "ngram_window": PROFILES[compat]["window"],
                "ngram_whitelist": list(PROFILES[compat]["whitelist"]), "logits_before_ban": True,
                "forced": forced is not None, "text": res["text"],
                "config": {k: getattr(ref.cfg, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size",
                                                            "n_routed_experts", "num_experts_per_tok")}}
        with open(os.path.join(dump.dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
    return res
