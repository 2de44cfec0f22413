"""Step-by-step GPU diagnostic of the hybrid model on fla kernels (prints timings; dumps stacks if stuck)."""
import faulthandler, os, sys, time, traceback
faulthandler.dump_traceback_later(int(os.environ.get("DIAG_TIMEOUT", "150")), exit=True)
import torch
sys.path.insert(0, "tests")
from tests.gpu.test_kda_gpu import _student, rel

def step(name, fn):
    t = time.perf_counter()
    try:
        r = fn(); torch.cuda.synchronize()
        print(f"[{time.perf_counter()-t:7.1f}s] {name}: {r}", flush=True)
    except Exception:
        print(f"[{time.perf_counter()-t:7.1f}s] {name}: EXCEPTION", flush=True); traceback.print_exc()

for dtype in (torch.float32, torch.bfloat16):
    s = _student(dtype)
    x = torch.randint(0, 4096, (2, 700), device="cuda")
    out = {}
    def fast():
        with torch.no_grad(): out["fast"] = s(x, use_cache=False).logits.float()
        return f"finite={torch.isfinite(out['fast']).all().item()}"
    step(f"{dtype} fla forward", fast)
    step(f"{dtype} fla forward again", fast)
    def ref():
        os.environ["GENDISTILL_KDA_BACKEND"] = "torch"
        with torch.no_grad(): r = s.float()(x, use_cache=False).logits
        os.environ.pop("GENDISTILL_KDA_BACKEND")
        return f"rel={rel(out['fast'], r):.2e} finite={torch.isfinite(r).all().item()}"
    step(f"{dtype} reference (torch path fp32) vs fla", ref)
    # per-layer: find where they diverge
    def per_layer():
        layer = s.model.layers[1].linear_attn
        h = torch.randn(2, 700, layer.hidden_size, device="cuda")
        with torch.no_grad():
            a = layer(h)
            os.environ["GENDISTILL_KDA_BACKEND"] = "torch"; b = layer(h); os.environ.pop("GENDISTILL_KDA_BACKEND")
        return f"layer-1 KDA rel={rel(a, b):.2e}"
    step(f"{dtype} single KDA layer fla vs torch", per_layer)
