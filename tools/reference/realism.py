"""Realism figures of a (random) checkpoint, as issue 3 defines them; used by tests/test_realism.py.

  residual_ratio[L]   median over tokens of the per-token RMS of layer L's output, over layer 0's
  topk_mass           median over tokens and MoE layers of the router's top-k probability mass
  router_gap          median over tokens and MoE layers of (k-th - (k+1)-th) router logit
  logit_margin        median over generated steps of (top-1 - top-2) raw output logit
  distinct            distinct ids among the generated tokens (EOS ignored)
  finite              no NaN/inf in any layer output, router logit or output logit
Tokens = the prefill rows and every decode step.
"""
import torch

from pipeline import generate


def measure(ref, tok, image, mode="small", steps=64, prompt="free", compat="hf"):
    ref.stats = {}
    try:
        res = generate(ref, tok, image, mode=mode, prompt=prompt, compat=compat, max_tokens=steps,
                       ignore_eos=True, keep_logits=True)
        st = ref.stats
    finally:
        ref.stats = None
    c = ref.cfg
    finite = True
    rms = []
    for L in range(c.num_hidden_layers):
        h = torch.cat(st[("out", L)], 0)
        finite &= bool(torch.isfinite(h).all())
        rms.append(float(h.pow(2).mean(-1).sqrt().median()))
    mass, gap = [], []
    k = c.num_experts_per_tok
    for L in range(c.num_hidden_layers):
        if not c.is_moe(L):
            continue
        lg = torch.cat([s["router_logits"] for s in st[L]], 0)
        pr = torch.cat([s["probs"] for s in st[L]], 0)
        finite &= bool(torch.isfinite(lg).all())
        srt = lg.sort(-1, descending=True).values
        gap.append(srt[:, k - 1] - srt[:, k])
        mass.append(pr.sort(-1, descending=True).values[:, :k].sum(-1))
    logits = torch.stack(res["logits"])
    finite &= bool(torch.isfinite(logits).all())
    top2 = logits.topk(2, -1).values
    return {"residual_rms": rms, "residual_ratio": [r / rms[0] for r in rms],
            "topk_mass": float(torch.cat(mass).median()) if mass else None,
            "router_gap": float(torch.cat(gap).median()) if gap else None,
            "logit_margin": float((top2[:, 0] - top2[:, 1]).median()),
            "distinct": len(set(res["generated"])), "finite": finite, "generated": res["generated"]}
