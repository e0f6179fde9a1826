"""Model configuration read from a checkpoint's config.json, and the checkpoint's tensor list.

Every size comes from config.json (spec §2), with the official defaults for keys the sparse file omits.
Two keys are OUR extensions (absent in the official file, which then means the official value):
vision_config.width.sam_vit_b.window_size (default 14) and .out_chans (neck width, default 256).
Fixed by the architecture (not configurable): SAM patch 16, SAM MLP 4 x width, CLIP MLP 4 x width.
"""
import json
from dataclasses import dataclass, field

LANG_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
             "first_k_dense_replace", "vocab_size", "max_position_embeddings"]


@dataclass
class Config:
    # decoder
    hidden_size: int = 1280
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    intermediate_size: int = 6848
    moe_intermediate_size: int = 896
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    vocab_size: int = 129280
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    bos_token_id: int = 0
    eos_token_id: int = 1
    # SAM
    image_size: int = 1024          # vision_config.image_size: SAM pos_embed grid = image_size / 16
    sam_patch: int = 16
    sam_width: int = 768
    sam_layers: int = 12
    sam_heads: int = 12
    sam_global: list = field(default_factory=lambda: [2, 5, 8, 11])
    sam_window: int = 14
    sam_out_chans: int = 256
    sam_down: list = field(default_factory=lambda: [512, 1024])
    # CLIP
    clip_width: int = 1024
    clip_heads: int = 16
    clip_layers: int = 24
    clip_image_size: int = 224
    clip_patch: int = 14
    # projector
    proj_in: int = 2048
    proj_out: int = 1280

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def sam_head_dim(self):
        return self.sam_width // self.sam_heads

    @property
    def sam_grid(self):
        return self.image_size // self.sam_patch

    @property
    def clip_grid(self):
        return self.clip_image_size // self.clip_patch

    def is_moe(self, layer):
        return (self.n_routed_experts > 0 and layer >= self.first_k_dense_replace
                and layer % self.moe_layer_freq == 0)

    def check(self):
        """Raises ValueError when the sizes do not fit together."""
        errs = []
        if self.hidden_size % self.num_attention_heads:
            errs.append("hidden_size not divisible by num_attention_heads")
        if self.num_key_value_heads != self.num_attention_heads:
            errs.append("only plain MHA (num_key_value_heads == num_attention_heads) is supported")
        if self.sam_width % self.sam_heads or self.clip_width % self.clip_heads:
            errs.append("vision width not divisible by heads")
        if self.sam_down[-1] != self.clip_width:
            errs.append("SAM net_3 channels must equal the CLIP width")
        if self.proj_in != self.clip_width + self.sam_down[-1]:
            errs.append("projector input_dim must be CLIP width + SAM net_3 channels")
        if self.proj_out != self.hidden_size:
            errs.append("projector n_embed must equal hidden_size")
        if self.num_experts_per_tok > self.n_routed_experts:
            errs.append("num_experts_per_tok > n_routed_experts")
        if errs:
            raise ValueError("config.json: " + "; ".join(errs))
        return self


def load_config(path):
    """Config from a config.json (official sparse layout; flat top-level language keys win, as in HF)."""
    with open(path) as f:
        cj = json.load(f)
    c = Config()
    lang = dict(cj.get("language_config") or {})
    for k in LANG_KEYS + ["moe_layer_freq", "rms_norm_eps", "rope_theta", "norm_topk_prob", "routed_scaling_factor",
                          "bos_token_id", "eos_token_id"]:
        v = cj.get(k, lang.get(k))
        if k in cj and k in lang and cj[k] != lang[k]:
            raise ValueError(f"{path}: {k} differs between the top level ({cj[k]}) and language_config ({lang[k]})")
        if v is not None:
            setattr(c, k, type(getattr(c, k))(v))
    vc = cj.get("vision_config") or {}
    c.image_size = int(vc.get("image_size", c.image_size))
    w = vc.get("width") or {}
    sam = w.get("sam_vit_b") or {}
    c.sam_width = int(sam.get("width", c.sam_width))
    c.sam_layers = int(sam.get("layers", c.sam_layers))
    c.sam_heads = int(sam.get("heads", c.sam_heads))
    c.sam_global = [int(x) for x in sam.get("global_attn_indexes", c.sam_global)]
    c.sam_down = [int(x) for x in sam.get("downsample_channels", c.sam_down)]
    c.sam_window = int(sam.get("window_size", c.sam_window))
    c.sam_out_chans = int(sam.get("out_chans", c.sam_out_chans))
    clip = w.get("clip-l-14-224") or {}
    c.clip_width = int(clip.get("width", c.clip_width))
    c.clip_heads = int(clip.get("heads", c.clip_heads))
    c.clip_layers = int(clip.get("layers", c.clip_layers))
    c.clip_image_size = int(clip.get("image_size", c.clip_image_size))
    c.clip_patch = int(clip.get("patch_size", c.clip_patch))
    pc = cj.get("projector_config") or {}
    c.proj_in = int(pc.get("input_dim", c.proj_in))
    c.proj_out = int(pc.get("n_embed", c.proj_out))
    return c.check()


def tensor_plan(c):
    """[(name, shape)] of every checkpoint tensor, in the official index's order (spec §3.1)."""
    t = []
    S, sw, sd = "model.sam_model.", c.sam_width, c.sam_head_dim
    g = c.sam_grid
    t.append((S + "pos_embed", [1, g, g, sw]))
    t.append((S + "patch_embed.proj.weight", [sw, 3, c.sam_patch, c.sam_patch]))
    t.append((S + "patch_embed.proj.bias", [sw]))
    for b in range(c.sam_layers):
        p = f"{S}blocks.{b}."
        rel = 2 * g - 1 if b in c.sam_global else 2 * c.sam_window - 1
        t += [(p + "norm1.weight", [sw]), (p + "norm1.bias", [sw]),
              (p + "attn.rel_pos_h", [rel, sd]), (p + "attn.rel_pos_w", [rel, sd]),
              (p + "attn.qkv.weight", [3 * sw, sw]), (p + "attn.qkv.bias", [3 * sw]),
              (p + "attn.proj.weight", [sw, sw]), (p + "attn.proj.bias", [sw]),
              (p + "norm2.weight", [sw]), (p + "norm2.bias", [sw]),
              (p + "mlp.lin1.weight", [4 * sw, sw]), (p + "mlp.lin1.bias", [4 * sw]),
              (p + "mlp.lin2.weight", [sw, 4 * sw]), (p + "mlp.lin2.bias", [sw])]
    oc = c.sam_out_chans
    t += [(S + "neck.0.weight", [oc, sw, 1, 1]), (S + "neck.1.weight", [oc]), (S + "neck.1.bias", [oc]),
          (S + "neck.2.weight", [oc, oc, 3, 3]), (S + "neck.3.weight", [oc]), (S + "neck.3.bias", [oc]),
          (S + "net_2.weight", [c.sam_down[0], oc, 3, 3]),
          (S + "net_3.weight", [c.sam_down[1], c.sam_down[0], 3, 3])]
    V, cw = "model.vision_model.", c.clip_width
    t += [(V + "embeddings.class_embedding", [cw]),
          (V + "embeddings.patch_embedding.weight", [cw, 3, c.clip_patch, c.clip_patch]),
          (V + "embeddings.position_embedding.weight", [c.clip_grid ** 2 + 1, cw])]
    for l in range(c.clip_layers):
        p = f"{V}transformer.layers.{l}."
        t += [(p + "self_attn.qkv_proj.weight", [3 * cw, cw]), (p + "self_attn.qkv_proj.bias", [3 * cw]),
              (p + "self_attn.out_proj.weight", [cw, cw]), (p + "self_attn.out_proj.bias", [cw]),
              (p + "mlp.fc1.weight", [4 * cw, cw]), (p + "mlp.fc1.bias", [4 * cw]),
              (p + "mlp.fc2.weight", [cw, 4 * cw]), (p + "mlp.fc2.bias", [cw]),
              (p + "layer_norm1.weight", [cw]), (p + "layer_norm1.bias", [cw]),
              (p + "layer_norm2.weight", [cw]), (p + "layer_norm2.bias", [cw])]
    t += [(V + "pre_layrnorm.weight", [cw]), (V + "pre_layrnorm.bias", [cw])]
    D = c.hidden_size
    t += [("model.projector.layers.weight", [D, c.proj_in]), ("model.projector.layers.bias", [D]),
          ("model.image_newline", [D]), ("model.view_seperator", [D]),
          ("model.embed_tokens.weight", [c.vocab_size, D]), ("model.norm.weight", [D]),
          ("lm_head.weight", [c.vocab_size, D])]
    hd = c.head_dim
    for L in range(c.num_hidden_layers):
        p = f"model.layers.{L}."
        t += [(p + "self_attn.q_proj.weight", [c.num_attention_heads * hd, D]),
              (p + "self_attn.k_proj.weight", [c.num_key_value_heads * hd, D]),
              (p + "self_attn.v_proj.weight", [c.num_key_value_heads * hd, D]),
              (p + "self_attn.o_proj.weight", [D, c.num_attention_heads * hd])]
        if c.is_moe(L):
            mi, sh = c.moe_intermediate_size, c.moe_intermediate_size * c.n_shared_experts
            t.append((p + "mlp.gate.weight", [c.n_routed_experts, D]))
            if c.n_shared_experts:
                t += [(p + "mlp.shared_experts.gate_proj.weight", [sh, D]),
                      (p + "mlp.shared_experts.up_proj.weight", [sh, D]),
                      (p + "mlp.shared_experts.down_proj.weight", [D, sh])]
            for e in range(c.n_routed_experts):
                q = f"{p}mlp.experts.{e}."
                t += [(q + "gate_proj.weight", [mi, D]), (q + "up_proj.weight", [mi, D]),
                      (q + "down_proj.weight", [D, mi])]
        else:
            I = c.intermediate_size
            t += [(p + "mlp.gate_proj.weight", [I, D]), (p + "mlp.up_proj.weight", [I, D]),
                  (p + "mlp.down_proj.weight", [D, I])]
        t += [(p + "input_layernorm.weight", [D]), (p + "post_attention_layernorm.weight", [D])]
    return t
