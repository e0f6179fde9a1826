"""DeepSeek-OCR in PyTorch: SAM, CLIP, projector, image-token layout, MoE decoder with a KV cache (spec §5, §7).

Written from spec/deepseek-ocr.md (§16 included) for Debian's torch 1.13 (CPU) and recent torch alike: attention is
matmul + softmax (no F.scaled_dot_product_attention), resampling is torch's own F.interpolate.

Numerics (one code path; `rb` marks every place where the official bf16 run rounds to bf16):
  fp32  every op in fp32 from the bf16 weights (rb is the identity). Pixels are still rounded to bf16, and the
        resampled position tables are rounded to bf16 (the official code casts them back to the weight dtype).
  bf16  the Hugging Face CUDA-autocast precision: matmul/conv inputs rounded to bf16, fp32 accumulate, output
        rounded to bf16; LayerNorm/RMSNorm statistics and softmax in fp32; SAM and decoder residuals bf16;
        CLIP residual stream fp32 from pre_layrnorm on (R4); SAM LayerNorm2d mean and x-mean in bf16 (R4);
        router logits and output logits rounded to bf16 (R2, R3). Attention probabilities stay fp32 and P.V is
        accumulated in fp32 (flash-style kernels; the exact rounding inside the official kernels is not
        reproduced). MoE expert outputs are bf16, weighted and summed in fp32 in descending-probability order,
        then rounded (R2 order inside torch.topk(sorted=False) is unspecified).
All tensors are held as float32 (bf16-valued where the mode says so).
"""
import math
import os

import torch
import torch.nn.functional as F

from config import load_config
from st_io import SafeTensors


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float32)


class Reference:
    """A loaded checkpoint folder. precision: 'fp32' or 'bf16'."""

    def __init__(self, model_dir, precision="fp32", cache_limit=600_000_000):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.dir = model_dir
        self.cfg = load_config(os.path.join(model_dir, "config.json"))
        self.precision = precision
        path = os.path.join(model_dir, "model-00001-of-000001.safetensors")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing")
        self.st = SafeTensors(path)
        missing = [n for n in self._expected() if n not in self.st.header]
        if missing:
            raise ValueError(f"{path}: {len(missing)} tensors missing, first {missing[0]}")
        n_params = sum(math.prod(e["shape"]) for e in self.st.header.values())
        self._cache = {} if n_params <= cache_limit else None
        self.rb = bf16 if precision == "bf16" else (lambda x: x)
        self._pos_cache = {}
        self.stats = None       # set to {} to collect per-layer router stats and outputs (realism tests)

    def _expected(self):
        from config import tensor_plan
        return [n for n, _ in tensor_plan(self.cfg)]

    # ------------------------------------------------------------------------------------------ helpers
    def w(self, name):
        """Weight as float32 (exact bf16 values)."""
        if self._cache is not None and name in self._cache:
            return self._cache[name]
        t = self.st.get(name).to(torch.float32)
        if self._cache is not None:
            self._cache[name] = t
        return t

    def embed(self, ids):
        """Token embeddings [T, D] (float32, bf16 values) of int64 ids; ids must be < vocab_size."""
        if int(ids.max()) >= self.cfg.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"token id out of range [0, {self.cfg.vocab_size})")
        if self._cache is not None:
            return self.w("model.embed_tokens.weight")[ids]
        if not hasattr(self, "_embed_bf16"):
            self._embed_bf16 = self.st.get("model.embed_tokens.weight")
        return self._embed_bf16[ids].to(torch.float32)

    def lin(self, x, wname, bname=None):
        """y = x W^T + b; bf16 mode: inputs rounded to bf16, fp32 accumulate, output rounded."""
        y = torch.matmul(self.rb(x), self.w(wname).t())
        if bname is not None:
            y = y + self.w(bname)
        return self.rb(y)

    def conv(self, x, wname, bname=None, stride=1, padding=0):
        b = self.w(bname) if bname else None
        return self.rb(F.conv2d(self.rb(x), self.w(wname), b, stride=stride, padding=padding))

    def attend(self, q, k, v, scale, bias=None, causal_offset=None):
        """q [B,H,Tq,d], k/v [B,H,Tk,d] -> [B,H,Tq,d]. Scores and softmax fp32; output rounded (bf16 mode).
        causal_offset: position of q row 0 in the key sequence (causal mask) or None (full attention)."""
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        if bias is not None:
            s = s + bias
        if causal_offset is not None:
            Tq, Tk = q.shape[-2], k.shape[-2]
            qi = torch.arange(Tq)[:, None] + causal_offset
            ki = torch.arange(Tk)[None, :]
            s = s.masked_fill(ki > qi, float("-inf"))
        p = torch.softmax(s, dim=-1)
        return self.rb(torch.matmul(p, v))

    # ------------------------------------------------------------------------------------------ SAM
    def sam_pos(self, g):
        """SAM absolute position table resampled to g x g: [1,g,g,C] (bicubic antialias, fp32, back to bf16)."""
        key = ("sam", g)
        if key not in self._pos_cache:
            pe = self.w("model.sam_model.pos_embed")
            if pe.shape[1] != g:
                pe = F.interpolate(pe.permute(0, 3, 1, 2), size=(g, g), mode="bicubic", antialias=True,
                                   align_corners=False)
                pe = bf16(pe.permute(0, 2, 3, 1).contiguous())
            self._pos_cache[key] = pe
        return self._pos_cache[key]

    def rel_table(self, name, size):
        """R[i][j] = R'[(i - j) + (size - 1)], R' = table linearly resized to 2*size-1 rows: [size,size,d]."""
        key = (name, size)
        if key not in self._pos_cache:
            rp = self.w(name)
            L = 2 * size - 1
            if rp.shape[0] != L:
                rp = F.interpolate(rp.t()[None], size=L, mode="linear", align_corners=False)[0].t()
                rp = bf16(rp.contiguous())
            idx = (torch.arange(size)[:, None] - torch.arange(size)[None, :]) + (size - 1)
            self._pos_cache[key] = rp[idx]
        return self._pos_cache[key]

    def sam_attn(self, x, b):
        """x [B,h,w,C] (LN1 output, windows or whole map) -> [B,h,w,C]."""
        c = self.cfg
        B, h, w_, C = x.shape
        nh, hd = c.sam_heads, c.sam_head_dim
        p = f"model.sam_model.blocks.{b}.attn."
        qkv = self.lin(x, p + "qkv.weight", p + "qkv.bias").reshape(B, h * w_, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                         # [B,nh,T,hd]
        Rh = self.rel_table(p + "rel_pos_h", h)                  # [h,h,hd]
        Rw = self.rel_table(p + "rel_pos_w", w_)                 # [w,w,hd]
        rq = q.reshape(B, nh, h, w_, hd)
        rel_h = self.rb(torch.einsum("bnhwc,hkc->bnhwk", rq, Rh))     # [B,nh,h,w,kh]
        rel_w = self.rb(torch.einsum("bnhwc,wkc->bnhwk", rq, Rw))     # [B,nh,h,w,kw]
        bias = self.rb(rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nh, h * w_, h * w_)
        o = self.attend(q, k, v, 1.0 / math.sqrt(hd), bias)           # [B,nh,T,hd]
        o = o.permute(0, 2, 1, 3).reshape(B, h, w_, C)
        return self.lin(o, p + "proj.weight", p + "proj.bias")

    def layernorm2d(self, x, wname, bname, eps=1e-6):
        """LayerNorm over channels of [B,C,H,W]; bf16 mode follows autocast (mean and x-mean in bf16)."""
        u = self.rb(x.mean(1, keepdim=True))
        d = self.rb(x - u)
        s = (d * d).mean(1, keepdim=True)
        y = d / torch.sqrt(s + eps)
        return self.w(wname)[:, None, None] * y + self.w(bname)[:, None, None]

    def sam(self, px, dump=None, view=""):
        """px [B,3,S,S] (bf16-valued) -> [B, C_out, S/64, S/64]."""
        c = self.cfg
        P = "model.sam_model."
        x = self.conv(px, P + "patch_embed.proj.weight", P + "patch_embed.proj.bias", stride=c.sam_patch)
        x = x.permute(0, 2, 3, 1)                                      # [B,g,g,C]
        g = x.shape[1]
        x = self.rb(x + self.sam_pos(g))
        if dump:
            dump(f"{view}.sam_patch", x[0])
        ws = c.sam_window
        for b in range(c.sam_layers):
            p = f"{P}blocks.{b}."
            sc = x
            y = F.layer_norm(x, (c.sam_width,), self.w(p + "norm1.weight"), self.w(p + "norm1.bias"), 1e-6)
            if b in c.sam_global:
                y = self.sam_attn(y, b)
            else:
                B = y.shape[0]
                Gp = -(-g // ws) * ws
                y = F.pad(y, (0, 0, 0, Gp - g, 0, Gp - g))             # zero-pad bottom/right after the norm
                nw = Gp // ws
                y = y.reshape(B, nw, ws, nw, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B * nw * nw, ws, ws, -1)
                y = self.sam_attn(y, b)
                y = y.reshape(B, nw, nw, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Gp, Gp, -1)
                y = y[:, :g, :g, :]
            x = self.rb(sc + y)
            m = F.layer_norm(x, (c.sam_width,), self.w(p + "norm2.weight"), self.w(p + "norm2.bias"), 1e-6)
            m = self.lin(m, p + "mlp.lin1.weight", p + "mlp.lin1.bias")
            m = self.rb(F.gelu(m))
            m = self.lin(m, p + "mlp.lin2.weight", p + "mlp.lin2.bias")
            x = self.rb(x + m)
            if dump:
                dump(f"{view}.sam_block{b}", x[0])
        x = x.permute(0, 3, 1, 2)
        x = self.conv(x, P + "neck.0.weight")
        x = self.layernorm2d(x, P + "neck.1.weight", P + "neck.1.bias")
        x = self.conv(x, P + "neck.2.weight", padding=1)
        x = self.layernorm2d(x, P + "neck.3.weight", P + "neck.3.bias")
        if dump:
            dump(f"{view}.sam_neck", x[0])
        x = self.conv(x, P + "net_2.weight", stride=2, padding=1)
        x = self.conv(x, P + "net_3.weight", stride=2, padding=1)
        if dump:
            dump(f"{view}.sam", x[0])
        return x

    # ------------------------------------------------------------------------------------------ CLIP
    def clip_pos(self, n):
        """CLIP position table for an n x n grid: [1+n^2, W] (grid resampled bicubic antialias, CLS row kept)."""
        key = ("clip", n)
        if key not in self._pos_cache:
            pe = self.w("model.vision_model.embeddings.position_embedding.weight")
            src = self.cfg.clip_grid
            if n != src:
                grid = pe[1:].reshape(1, src, src, -1).permute(0, 3, 1, 2)
                grid = F.interpolate(grid, size=(n, n), mode="bicubic", antialias=True, align_corners=False)
                grid = bf16(grid.permute(0, 2, 3, 1).reshape(n * n, -1))
                pe = torch.cat([pe[:1], grid], 0)
            self._pos_cache[key] = pe
        return self._pos_cache[key]

    def clip(self, sam_out, dump=None, view=""):
        """sam_out [B,W,n,n] -> last hidden [B,1+n^2,W] (fp32 residual in bf16 mode, no post-LN)."""
        c = self.cfg
        V = "model.vision_model."
        B, W, n, _ = sam_out.shape
        tok = sam_out.flatten(2).transpose(1, 2)                       # [B,n^2,W]
        cls = self.w(V + "embeddings.class_embedding").expand(B, 1, W)
        x = self.rb(torch.cat([cls, tok], 1) + self.clip_pos(n))
        x = F.layer_norm(x, (W,), self.w(V + "pre_layrnorm.weight"), self.w(V + "pre_layrnorm.bias"), 1e-5)
        nh = c.clip_heads
        hd = W // nh
        T = x.shape[1]
        for l in range(c.clip_layers):
            p = f"{V}transformer.layers.{l}."
            y = F.layer_norm(x, (W,), self.w(p + "layer_norm1.weight"), self.w(p + "layer_norm1.bias"), 1e-5)
            qkv = self.lin(y, p + "self_attn.qkv_proj.weight", p + "self_attn.qkv_proj.bias")
            qkv = qkv.reshape(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4)
            o = self.attend(qkv[0], qkv[1], qkv[2], 1.0 / math.sqrt(hd))
            o = o.permute(0, 2, 1, 3).reshape(B, T, W)
            x = x + self.lin(o, p + "self_attn.out_proj.weight", p + "self_attn.out_proj.bias")
            y = F.layer_norm(x, (W,), self.w(p + "layer_norm2.weight"), self.w(p + "layer_norm2.bias"), 1e-5)
            y = self.lin(y, p + "mlp.fc1.weight", p + "mlp.fc1.bias")
            y = self.rb(y * self.rb(torch.sigmoid(self.rb(1.702 * y))))          # quick_gelu
            x = x + self.lin(y, p + "mlp.fc2.weight", p + "mlp.fc2.bias")
        if dump:
            dump(f"{view}.clip", x[0])
        return x

    # ------------------------------------------------------------------------------------------ vision glue
    def encode_view(self, px, dump=None, view=""):
        """px float32 [3,S,S] (normalised) -> projected features [n^2, D]."""
        x = bf16(torch.as_tensor(px))[None]                            # pixels rounded to bf16 in both modes
        if dump:
            dump(f"{view}.input", x[0])
        s = self.sam(x, dump, view)
        cl = self.clip(s, dump, view)
        feat = torch.cat([cl[:, 1:], s.flatten(2).transpose(1, 2)], -1)
        pr = self.lin(feat, "model.projector.layers.weight", "model.projector.layers.bias")[0]
        if dump:
            dump(f"{view}.proj", pr)
        return pr

    def image_block(self, tile_feats, grid, global_feat):
        """Assembles [slots, D]: local big-grid rows + newline, global rows + newline, separator (spec §5.4/5.5)."""
        nl = self.w("model.image_newline")
        rows = []
        if grid:
            tw, th = grid
            n = int(round(math.sqrt(tile_feats[0].shape[0])))
            for ty in range(th):
                for i in range(n):
                    for tx in range(tw):
                        rows.append(tile_feats[ty * tw + tx].reshape(n, n, -1)[i])
                    rows.append(nl[None])
        n = int(round(math.sqrt(global_feat.shape[0])))
        g = global_feat.reshape(n, n, -1)
        for r in range(n):
            rows.append(g[r])
            rows.append(nl[None])
        rows.append(self.w("model.view_seperator")[None])
        return torch.cat(rows, 0)

    # ------------------------------------------------------------------------------------------ decoder
    def rmsnorm(self, x, wname):
        """HF DeepseekV2RMSNorm: fp32 statistics, normalised value rounded to the activation dtype, times weight."""
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return self.rb(self.w(wname) * self.rb(xn))

    def rope(self, pos):
        """cos, sin [T, head_dim] for integer positions `pos` (fp32 angles, NeoX layout)."""
        hd = self.cfg.head_dim
        inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        fr = torch.outer(pos.float(), inv)
        emb = torch.cat([fr, fr], -1)
        return self.rb(emb.cos()), self.rb(emb.sin())

    def apply_rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return self.rb(self.rb(x * cos) + self.rb(rot * sin))

    def swiglu(self, x, p):
        g = self.lin(x, p + "gate_proj.weight")
        u = self.lin(x, p + "up_proj.weight")
        return self.lin(self.rb(self.rb(F.silu(g)) * u), p + "down_proj.weight")

    def decoder(self, h, pos, cache, dump=None, logits_all=False):
        """h [T,D] input embeddings at positions `pos` (1-D, contiguous after the cache). Returns the logits of
        the last row [V] (or all rows [T,V] with logits_all). cache: list of (k, v) per layer, extended."""
        c = self.cfg
        nh, hd = c.num_attention_heads, c.head_dim
        T = h.shape[0]
        cos, sin = self.rope(pos)
        for L in range(c.num_hidden_layers):
            p = f"model.layers.{L}."
            a = self.rmsnorm(h, p + "input_layernorm.weight")
            q = self.lin(a, p + "self_attn.q_proj.weight").reshape(T, nh, hd).transpose(0, 1)
            k = self.lin(a, p + "self_attn.k_proj.weight").reshape(T, nh, hd).transpose(0, 1)
            v = self.lin(a, p + "self_attn.v_proj.weight").reshape(T, nh, hd).transpose(0, 1)
            q = self.apply_rope(q, cos, sin)
            k = self.apply_rope(k, cos, sin)
            if len(cache) <= L:
                cache.append((k, v))
            else:
                pk, pv = cache[L]
                cache[L] = (torch.cat([pk, k], 1), torch.cat([pv, v], 1))
            K, Vv = cache[L]
            o = self.attend(q[None], K[None], Vv[None], 1.0 / math.sqrt(hd), causal_offset=K.shape[1] - T)[0]
            o = self.lin(o.transpose(0, 1).reshape(T, nh * hd), p + "self_attn.o_proj.weight")
            if dump:
                dump(f"layer{L}.attn", o)
            h = self.rb(h + o)
            m = self.rmsnorm(h, p + "post_attention_layernorm.weight")
            if c.is_moe(L):
                st = {}
                y = self.moe_forward(m, L, st)
                if dump:
                    dump(f"layer{L}.router_logits", st["router_logits"])
                    dump(f"layer{L}.experts", st["experts"].to(torch.int32))
                if self.stats is not None:
                    self.stats.setdefault(L, []).append(st)
            else:
                y = self.swiglu(m, p + "mlp.")
            h = self.rb(h + y)
            if dump:
                dump(f"layer{L}.out", h)
            if self.stats is not None:
                self.stats.setdefault(("out", L), []).append(h)
        hn = self.rmsnorm(h if logits_all else h[-1:], "model.norm.weight")
        logits = self.rb(torch.matmul(self.rb(hn), self.w("lm_head.weight").t()))
        return logits if logits_all else logits[0]

    def moe_forward(self, x, L, stats):
        """Routed experts (weighted, summed in fp32, rounded) + shared experts (spec §7.5)."""
        c = self.cfg
        p = f"model.layers.{L}.mlp."
        logits = self.lin(x, p + "gate.weight")
        probs = torch.softmax(logits, -1)
        topw, topi = torch.topk(probs, c.num_experts_per_tok, dim=-1, sorted=True)
        if c.norm_topk_prob:
            topw = topw / topw.sum(-1, keepdim=True)
        topw = topw * c.routed_scaling_factor
        stats["router_logits"], stats["experts"], stats["probs"] = logits, topi, probs
        T, k = topi.shape
        outs = torch.zeros(T, k, x.shape[1])
        for e in torch.unique(topi).tolist():
            rows, slot = (topi == e).nonzero(as_tuple=True)
            outs[rows, slot] = self.swiglu(x[rows], f"{p}experts.{e}.")
        y = outs[:, 0] * topw[:, :1]
        for j in range(1, k):
            y = y + outs[:, j] * topw[:, j:j + 1]
        y = self.rb(y)
        if c.n_shared_experts:
            y = self.rb(y + self.swiglu(x, p + "shared_experts."))
        return y
