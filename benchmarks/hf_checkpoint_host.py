"""Host cost of Hugging Face gradient checkpointing, measured with the real libraries on CPU.

`model.gradient_checkpointing_enable()` wraps every decoder layer in torch.utils.checkpoint
(reentrant): a no-grad forward that saves the RNG state, then, in the backward, a recomputed
grad-mode forward and a nested backward. Each of those steps costs host time beyond the layer's
own ops. The GPU adds none of it, so a tiny model on CPU (one thread, 16 tokens: the ops' work
is a few microseconds) measures the host side alone.

For three kinds of layer -- full fine-tuning, a frozen bf16 base, PEFT LoRA rank 16 on every
linear -- it times forward and backward at 4 and 12 layers. The slope gives the host time per
layer. It prints, per kind, the checkpointed layer's host time over that of the same layer
without checkpointing run as roofplan's step model runs it: forward twice (the first and the
recomputed one) plus the backward. hf-eager's `host_recompute_scale` is the mean of the three
ratios. The factor is a ratio of host times on one CPU, so it carries to the H100 box, whose
per-op host costs come from its traces.

Needs torch, transformers and peft (`pip install torch==2.13.0 transformers peft`; not
roofplan's dependencies). Writes benchmarks/data/hf_checkpoint_host_cpu.json with --write.

    python benchmarks/hf_checkpoint_host.py [--reps 40] [--write]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "hf_checkpoint_host_cpu.json"
KINDS = ("full", "frozen", "lora")
LAYERS = (4, 12)


def build(kind: str, layers: int, ckpt: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=64, intermediate_size=224, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=256,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if ckpt:
        model.gradient_checkpointing_enable()
    if kind == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    elif kind == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("model.norm.weight"))
        model.enable_input_require_grads()
    model.train()
    return model


def per_step(kind: str, layers: int, ckpt: bool, reps: int) -> tuple[float, float]:
    """Median host seconds of (forward, backward) of one step."""
    import torch
    model = build(kind, layers, ckpt)
    ids = torch.randint(0, 128, (1, 16))
    fwd, bwd = [], []
    for i in range(reps + 5):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        for p in model.parameters():
            p.grad = None
        if i >= 5:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(reps: int) -> dict:
    import torch
    import peft
    import transformers
    torch.manual_seed(0)
    torch.set_num_threads(1)
    per_layer = {}
    for kind in KINDS:
        for ckpt in (False, True):
            lo, hi = (per_step(kind, n, ckpt, reps) for n in LAYERS)
            span = LAYERS[1] - LAYERS[0]
            per_layer[f"{kind}{'_ckpt' if ckpt else ''}"] = {"fwd_us": round((hi[0] - lo[0]) / span * 1e6, 1),
                                                            "bwd_us": round((hi[1] - lo[1]) / span * 1e6, 1)}
    ratios = {}
    for kind in KINDS:
        plain, ck = per_layer[kind], per_layer[f"{kind}_ckpt"]
        ratios[kind] = round((ck["fwd_us"] + ck["bwd_us"]) / (2 * plain["fwd_us"] + plain["bwd_us"]), 3)
    return {"what": "host us per decoder layer (slope 4 -> 12 layers) of a tiny bf16 Llama on CPU, 1 thread, 16 tokens; "
                    "ratio = checkpointed layer / (2 x forward + backward) without checkpointing",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                         "python": platform.python_version()},
            "cpu": cpu_name(), "reps": reps,
            "per_layer": per_layer, "ratio": ratios,
            "host_recompute_scale": round(statistics.mean(ratios.values()), 3)}


def have_libraries() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(OUT.parents[2])}")
    args = ap.parse_args()
    if not have_libraries():
        # `make bench` runs every benchmark in roofplan's own environment: report the committed run
        print(f"transformers and peft are not installed (pip install torch==2.13.0 transformers peft to measure); "
              f"the committed measurement, {OUT.relative_to(OUT.parents[2])}:")
        res = json.loads(OUT.read_text())
    else:
        res = measure(args.reps)
    for name, v in res["per_layer"].items():
        print(f"{name:12s} forward {v['fwd_us']:8.1f} us  backward {v['bwd_us']:8.1f} us per layer")
    print("checkpointed / (2 x forward + backward):", ", ".join(f"{k} {v}" for k, v in res["ratio"].items()),
          f"-> host_recompute_scale {res['host_recompute_scale']}")
    if args.write and have_libraries():
        OUT.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
