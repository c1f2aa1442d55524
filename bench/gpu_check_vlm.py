"""GPU check of the vlm backend at full size: Qwen2-VL-2B-Instruct's architecture with random weights (no download).

``python bench/gpu_check.py --backend vlm`` runs this (so does ``python bench/gpu_check_vlm.py``):

(a) a few LoRA optimizer steps through the backend's own ``utils.models.vlm.train.fit`` at its default batch
    (``VlmTrainConfig.train_batch_size``, one forward pass per step here; the default optimizer step is
    ``grad_accum`` of them, which changes the time, not the memory) and its default image budget
    (``VlmModelConfig.max_pixels``), once with 16-bit weights (``quantization="none"``, the default) and once in
    4-bit NF4 where bitsandbytes works; prints the GPU memory held by the loaded model, the peak of the training
    steps and of the whole fit, and the measured step time with what a 9-hour budget plans from it;
(b) inference of the 16-bit base model through ``utils.models.vlm.infer.generate`` (the backend's batched greedy
    answers): images/s at a few batch sizes for prefill alone and for generation, with peak memory;
(c) the arithmetic for one 16 GB T4 (weights, a LoRA step, the KV cache, speed at an assumed share of the T4's
    peak), from the real configs, for the default 2B in 16 bits and in 4 bits and for Qwen2-VL-7B in 4 bits.

Random weights: built on the GPU from ``Qwen/Qwen2-VL-2B-Instruct``'s config.json values (below; 2.21 B
parameters), saved, loaded back through ``utils.models.vlm.load`` like the hub model. The tokenizer is the tiny one of
``utils.models.vlm.tiny`` with Qwen's chat template (the embedding matrix is full size; the real template's system
turn adds ~20 tokens to the ~500 image tokens). ``--dry-run``: the same with a scaled-down config on the CPU, to check
the script ((c) is always for the full-size configs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from gpu_check import budget_plan, peak_tflops  # noqa: E402 - bench/ (this file's folder) is on sys.path
from utils.models.finetune.device import free_memory  # noqa: E402

GiB = 1024**3
MEMORY_LIMIT_GIB = 15.0  # what a 16 GB T4 leaves for tensors (CUDA context and allocator slack aside)
TIME_LIMIT_S = 8 * 60
T4 = {"name": "T4", "tflops": 65.0, "bandwidth_gbs": 320.0}  # dense fp16 tensor-core peak, memory bandwidth
TEXT_TOKENS = 40  # the real template's system turn, the prompt and the answer, besides the image tokens
NF4_BITS = 4.127  # NF4 with nested quantisation: 4 bits + the double-quantised absmax per 64 weights

# Qwen/Qwen2-VL-2B-Instruct config.json (field names as transformers' Qwen2VLConfig in 5.23 reads them).
QWEN2_VL_2B = {
    "text": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
                 rms_norm_eps=1e-6, rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                 use_sliding_window=False, sliding_window=32768, max_window_layers=28),
    "vision": dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, in_channels=3,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu"),
    "tie_word_embeddings": True,
}
# Qwen/Qwen2-VL-7B-Instruct: the 4-bit option's arithmetic only (never built here).
QWEN2_VL_7B = {
    "text": {**QWEN2_VL_2B["text"], "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
             "num_attention_heads": 28, "num_key_value_heads": 4},
    "vision": {**QWEN2_VL_2B["vision"], "hidden_size": 3584},
    "tie_word_embeddings": False,
}
# --dry-run: the same architecture scaled down (head_dim 16, so the mrope sections sum to 8).
DRY_RUN = {
    "text": {**QWEN2_VL_2B["text"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_window_layers": 2,
             "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
    "vision": {**QWEN2_VL_2B["vision"], "depth": 1, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2,
               "num_heads": 2},
    "tie_word_embeddings": True,
}


def qwen2_vl_config(spec: dict, text_ids: dict[str, Any] | None = None, token_ids: dict[str, int] | None = None):
    """A ``Qwen2VLConfig`` from ``spec`` (one of the dicts above); the ids from the processor it goes with."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(text_config={**spec["text"], **(text_ids or {})}, vision_config=dict(spec["vision"]),
                         tie_word_embeddings=spec["tie_word_embeddings"], **(token_ids or {}))


def build_checkpoint(work: Path, dry_run: bool) -> Path:
    """Random-weight Qwen2-VL + processor (tiny tokenizer, Qwen's chat template) saved in ``work/model``."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from utils.models.vlm.load import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, images_only_processor
    from utils.models.vlm.tiny import QWEN_SPECIAL, QWEN_TEMPLATE, save_processor, train_tokenizer

    out = work / "model"
    tok = train_tokenizer(QWEN_SPECIAL)
    images = Qwen2VLImageProcessorPil(min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
    processor = images_only_processor(Qwen2VLProcessor, images, tok, QWEN_TEMPLATE)
    ids = {"image_token_id": processor.image_token_id, "video_token_id": processor.video_token_id,
           "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
           "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>")}
    spec = DRY_RUN if dry_run else QWEN2_VL_2B
    text_ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": None,
                **({"vocab_size": -(-len(tok) // 64) * 64} if dry_run else {})}  # full size: the real vocabulary
    config = qwen2_vl_config(spec, text_ids, ids)
    t = time.perf_counter()
    default = torch.get_default_dtype()
    torch.manual_seed(0)
    if not dry_run:
        torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cpu" if dry_run else "cuda"):
            model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [eot, tok.eos_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    save_processor(processor, out)
    print(f"built {n / 1e6:,.1f} M random parameters ({'scaled down, fp32' if dry_run else 'fp16'}) and saved them "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    del model
    free_memory()
    return out


def bnb_works() -> str | None:
    """None when bitsandbytes imports (the fit then tries 4-bit), else why not."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means: no 4-bit here
        return f"bitsandbytes does not import ({type(err).__name__}: {err})"
    return None


def memory_probe():
    """A TrainerCallback: GPU memory held as training begins (model and LoRA) and the peak from there to its end."""
    import torch
    from transformers import TrainerCallback

    class MemoryProbe(TrainerCallback):
        def __init__(self) -> None:
            self.held = self.peak = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            if torch.cuda.is_available():
                self.held = torch.cuda.memory_allocated() / GiB
                torch.cuda.reset_peak_memory_stats()

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if torch.cuda.is_available():
                self.peak = torch.cuda.max_memory_allocated() / GiB

    return MemoryProbe()


def render_rows(work: Path, dry_run: bool):
    """Rendered product-like images, large enough (800 px) that the default budget sets the token count."""
    from utils.models.paligemma.tiny import make_synthetic_set

    return make_synthetic_set(work / "data", size=128 if dry_run else 800)


def pixel_budget(dry_run: bool) -> dict[str, int]:
    """The backend's default image budget (the dry run's: 4 to 16 image tokens)."""
    from utils.models.vlm.load import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    if dry_run:
        return {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    return {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS}


def train_step(model_dir: Path, work: Path, quantization: str, dtype: str, batch_size: int, steps: int,
               dry_run: bool) -> dict[str, Any]:
    """(a) ``steps`` LoRA optimizer steps of one forward pass each through ``utils.models.vlm.train.fit``."""
    import json

    import torch

    from utils.models.vlm.train import fit

    rows = render_rows(work, dry_run)
    n = batch_size * steps
    rows = rows.sample(n, replace=n > len(rows), random_state=0).reset_index(drop=True)
    cuda = torch.cuda.is_available() and not dry_run
    if cuda:
        free_memory()
        torch.cuda.reset_peak_memory_stats()
    probe = memory_probe()
    out = work / f"train_{quantization}"
    t = time.perf_counter()
    fit(rows, None, work / "data" / "images", out, callbacks=[probe], model_id=str(model_dir),
        quantization=quantization, dtype=dtype if cuda else "auto", device="cuda" if cuda else "cpu",
        max_steps=steps, train_batch_size=batch_size, grad_accum=1, save_steps=1000, logging_steps=1,
        resume=False, calibration_steps=max(1, steps - 2), time_budget_hours=0, eval_max_rows=0,
        wandb_mode="disabled", **pixel_budget(dry_run))
    result: dict[str, Any] = {"quantization": quantization, "batch_size": batch_size, "steps": steps,
                              "seconds": time.perf_counter() - t}
    plan = out / "checkpoints" / "plan.json"
    result["step_seconds"] = json.loads(plan.read_text()).get("step_seconds") if plan.is_file() else None
    if cuda:
        result.update(fit_peak=torch.cuda.max_memory_allocated() / GiB, held=probe.held, train_peak=probe.peak,
                      reserved=torch.cuda.max_memory_reserved() / GiB)
    return result


def train_line(r: dict[str, Any], dtype: str, dry_run: bool) -> tuple[str, bool]:
    """The printed line of (a) and whether it is within the T4 limit."""
    what = "16-bit weights" if r["quantization"] == "none" else f"{r['quantization']} weights"
    budget = "the dry run's 112 x 112 image budget" if dry_run else "the default image budget"
    line = (f"(a) LoRA, {what}, {dtype} compute, batch {r['batch_size']} at {budget}: load + "
            f"{r['steps']} steps {r['seconds']:.0f} s")
    if r.get("step_seconds"):
        line += (f"; {r['step_seconds']:.2f} s per {r['batch_size']}-row step; "
                 + budget_plan(r["step_seconds"], r["batch_size"], epochs=1.0))
    ok = True
    if r.get("train_peak") is not None:
        ok = max(r["train_peak"], r["fit_peak"]) < MEMORY_LIMIT_GIB
        line += (f"; GPU memory: model + LoRA held {r['held']:.2f} GiB, training peak {r['train_peak']:.2f} GiB, "
                 f"whole fit {r['fit_peak']:.2f} GiB ({r['reserved']:.2f} reserved): "
                 f"{'OK' if ok else 'TOO MUCH'} (limit {MEMORY_LIMIT_GIB} GiB)")
    return line, ok


def inference(model_dir: Path, work: Path, batch_sizes: list[int], new_tokens: int, dry_run: bool, repeats: int,
              dtype: str) -> list[dict[str, Any]]:
    """(b) prefill and generation throughput of the 16-bit base model through ``generate`` (the backend's answers)."""
    import torch

    from utils.data.images import image_path, load_image
    from utils.data.tables import make_prompt
    from utils.models.finetune.device import float_dtype
    from utils.models.vlm.data import encode_prompts
    from utils.models.vlm.infer import generate
    from utils.models.vlm.load import VlmModelConfig, load_for_inference, load_processor

    cuda = torch.cuda.is_available() and not dry_run
    cfg = VlmModelConfig(model_id=str(model_dir), dtype=dtype if cuda else "auto", device="cuda" if cuda else "cpu",
                         **pixel_budget(dry_run))
    model = load_for_inference(cfg)
    processor = load_processor(model_dir, cfg.min_pixels, cfg.max_pixels)
    rows = render_rows(work, dry_run)
    pool = [load_image(image_path(work / "data" / "images", u), 1280) for u in rows["image_link"]]
    prompts_pool = [make_prompt(e) for e in rows["entity_name"]]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    results = []
    for bs in batch_sizes:
        images = [pool[i % len(pool)] for i in range(bs)]
        prompts = [prompts_pool[i % len(pool)] for i in range(bs)]
        batch = encode_prompts(processor, images, prompts)
        inputs = {k: v.to(model.device) for k, v in batch.items() if torch.is_tensor(v)}
        inputs["pixel_values"] = inputs["pixel_values"].to(float_dtype(model))
        image_tokens = int((inputs["input_ids"][0] == processor.image_token_id).sum())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            model(**inputs, logits_to_keep=1)  # warm-up
            sync()
            t = time.perf_counter()
            for _ in range(repeats):
                model(**inputs, logits_to_keep=1)
            sync()
            prefill_s = (time.perf_counter() - t) / repeats
        generate(model, processor, images, prompts, max_new_tokens=new_tokens)  # warm-up, same shapes
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            generate(model, processor, images, prompts, max_new_tokens=new_tokens)
            sync()
            times.append(time.perf_counter() - t)
        gen_s = statistics.median(times)
        result = {"batch_size": bs, "prefill_img_s": bs / prefill_s, "generate_img_s": bs / gen_s,
                  "spread": (max(times) - min(times)) / gen_s, "tokens": int(inputs["input_ids"].shape[1]),
                  "image_tokens": image_tokens}
        if cuda:
            result["peak_gib"] = torch.cuda.max_memory_allocated() / GiB
        results.append(result)
    del model
    free_memory()
    return results


# ------------------------------------------------------------------------------------------- (c) T4 arithmetic


def count_params(spec: dict, lora_r: int, lora_targets: tuple[str, ...]) -> dict[str, float]:
    """Parameter counts of the real architecture, from a model built on the meta device (no memory): all, the
    vision tower, the decoder's linear weights (what NF4 quantises), the rest, and the LoRA adapters'."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    config = qwen2_vl_config(spec)
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    quantised = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name and ".visual." not in f".{name}":
            quantised += module.weight.numel()
            if name.rsplit(".", 1)[-1] in lora_targets:
                lora += lora_r * (module.in_features + module.out_features)
    return {"total": total, "vision": vision, "quantised": quantised, "other": total - quantised, "lora": lora,
            "vision_blocks": vision - sum(p.numel() for n, p in model.model.visual.merger.named_parameters())}


def costs(spec: dict, quantization: str, image_tokens: int, train_batch: int, new_tokens: int,
          lora_r: int = 16) -> dict[str, float]:
    """Bytes and FLOPs of one model at one image budget (estimates from the architecture; (a) and (b) measure)."""
    from utils.models.vlm.load import LORA_TARGETS

    c = count_params(spec, lora_r, LORA_TARGETS)
    text, vision = spec["text"], spec["vision"]
    h, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    seq = image_tokens + TEXT_TOKENS
    patches = image_tokens * vision["spatial_merge_size"] ** 2
    embed, wide = vision["embed_dim"], vision["embed_dim"] * vision["mlp_ratio"]
    out = dict(c, seq=seq, fp16=c["total"] * 2, lora_bytes=c["lora"] * 16)  # LoRA: fp32 weight, grad, 2 moments
    if quantization == "4bit":  # peft's k-bit preparation casts every unquantised parameter to fp32 for training
        out["train_weights"] = c["quantised"] * NF4_BITS / 8 + c["other"] * 4
        out["infer_weights"] = c["quantised"] * NF4_BITS / 8 + c["other"] * 2
    else:
        out["train_weights"] = out["infer_weights"] = out["fp16"]
    # Gradient checkpointing keeps each layer's input; one layer is recomputed at a time with its backward:
    # ~ (5 x intermediate + 12 x hidden) values per token (MLP, attention, LoRA inputs), twice for the gradients;
    # the frozen vision tower keeps nothing, its largest transient is one block over all patches.
    out["activations"] = 2 * train_batch * (seq * (layers * h + (5 * inter + 12 * h) * 2)
                                             + patches * (6 * embed + 2 * wide))
    out["step"] = out["train_weights"] + out["lora_bytes"] + out["activations"]
    out["kv_token"] = 2 * layers * text["num_key_value_heads"] * (h // text["num_attention_heads"]) * 2
    out["kv_image"] = out["kv_token"] * (seq + new_tokens)
    out["infer_transient"] = max(seq * (3 * inter + 4 * h), patches * (6 * embed + 2 * wide)) * 2  # per image
    # FLOPs: 2 per weight and token; the vision tower runs over the patches (4 per image token) with full attention.
    vision_flop = 2 * c["vision_blocks"] * patches + 4 * vision["depth"] * patches**2 * embed
    text_flop = 2 * c["quantised"] * seq + 2 * layers * seq**2 * h
    out["prefill_flop"] = vision_flop + text_flop
    out["row_flop"] = vision_flop + 3 * text_flop  # frozen vision forward; text forward, recompute, input gradients
    return out


def infer_bytes(c: dict[str, float], batch: int) -> float:
    return c["infer_weights"] + batch * (c["kv_image"] + c["infer_transient"])


def t4_arithmetic(name: str, spec: dict, quantization: str, image_tokens: int, train_batch: int,
                  infer_batches: list[int], new_tokens: int, efficiency: float) -> list[str]:
    """Lines of the T4 arithmetic for one model and quantisation (estimates; the measured figures are (a)/(b))."""
    c = costs(spec, quantization, image_tokens, train_batch, new_tokens)
    limit = MEMORY_LIMIT_GIB * GiB
    flops = T4["tflops"] * 1e12 * efficiency
    decode_s = c["infer_weights"] / (T4["bandwidth_gbs"] * 1e9 * 0.7)  # a decode step reads every weight once

    def gib(x: float) -> str:
        return f"{x / GiB:.2f} GiB"

    def rate(b: int) -> float:
        return b / (b * c["prefill_flop"] / flops + new_tokens * decode_s)

    largest = max((b for b in range(1, 257) if infer_bytes(c, b) < limit), default=0)
    what = "16-bit (fp16)" if quantization == "none" else quantization
    lines = [f"(c) {name}, {what} weights, {image_tokens} image + ~{TEXT_TOKENS} text tokens per row:",
             f"    weights: {c['total'] / 1e9:.2f} B parameters ({c['vision'] / 1e9:.2f} B vision tower, "
             f"{c['quantised'] / 1e9:.2f} B in the decoder's linear layers); "
             + (f"training {gib(c['train_weights'])} (NF4 decoder, the rest cast to fp32 by peft), inference "
                f"{gib(c['infer_weights'])} (the rest in fp16); merged fp16 model {gib(c['fp16'])}"
                + ("" if c["fp16"] < limit else " (does NOT fit: answer with merge_adapter=false, "
                   "infer_quantization='4bit')")
                if quantization == "4bit" else f"fp16 {gib(c['fp16'])}"),
             f"    LoRA step (batch {train_batch}, r=16, gradient checkpointing): adapters {c['lora'] / 1e6:.1f} M "
             f"parameters, {gib(c['lora_bytes'])} with gradients and Adam; activations ~{gib(c['activations'])}; "
             f"total ~{gib(c['step'])} of a T4's {MEMORY_LIMIT_GIB:.0f} GiB "
             f"({'fits' if c['step'] < limit else 'does NOT fit'})",
             f"    inference: KV cache {c['kv_token'] / 1024:.0f} KiB per token, {c['kv_image'] / 2**20:.0f} MiB per "
             f"image ({c['seq']} + {new_tokens} tokens); peak ~" + ", ".join(
                 f"{gib(infer_bytes(c, b))} at batch {b}" for b in infer_batches)
             + f"; up to batch {largest} fits"]
    step_s = 16 * c["row_flop"] / flops
    from utils.models.vlm.infer import VlmInferConfig

    test_h = 131187 / rate(VlmInferConfig().batch_size) / 3600  # at the backend's default batch
    slower = " (4-bit: slower, bitsandbytes dequantises on the fly)" if quantization != "none" else ""
    lines.append(f"    speed at {efficiency:.0%} of the T4's {T4['tflops']:.0f} TFLOP/s{slower}: prefill "
                 f"{c['prefill_flop'] / 1e12:.1f} TFLOP per image; answers "
                 f"({new_tokens} tokens) " + ", ".join(f"batch {b} {rate(b):.1f} img/s" for b in infer_batches)
                 + f"; at batch {VlmInferConfig().batch_size} the 131,187 test images {test_h:.1f} h on one T4 "
                 f"({test_h / 2:.1f} h on Kaggle's two); "
                 f"training {c['row_flop'] / 1e12:.1f} TFLOP per row, {step_s:.1f} s per 16-row optimizer step, "
                 f"{16 * 3600 / step_s:,.0f} rows per hour")
    return lines


# ------------------------------------------------------------------------------------------------------ main


def parser() -> argparse.ArgumentParser:
    from utils.models.vlm.infer import VlmInferConfig
    from utils.models.vlm.train import VlmTrainConfig

    p = argparse.ArgumentParser(description="Qwen2-VL-2B-Instruct GPU check of the vlm backend (random weights)")
    p.add_argument("--backend", default="vlm", choices=("vlm",), help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="scaled-down model on CPU: checks the script only")
    p.add_argument("--train-batch-size", type=int, default=VlmTrainConfig().train_batch_size,
                   help="rows per training step (default: the backend's, VlmTrainConfig.train_batch_size)")
    p.add_argument("--train-steps", type=int, default=6, help="optimizer steps timed in (a)")
    p.add_argument("--quantizations", default="none,4bit", help="(a) base weights, comma separated")
    p.add_argument("--dtype", default="float16", choices=("auto", "float16", "bfloat16"),
                   help="compute dtype on the GPU (default float16: a T4's; auto: bf16 where native)")
    b = VlmInferConfig().batch_size
    p.add_argument("--batch-sizes", default=f"1,{b},{2 * b},{4 * b}",
                   help=f"inference batch sizes, comma separated (the backend's default is {b})")
    p.add_argument("--new-tokens", type=int, default=12, help="tokens generated per answer when timing")
    p.add_argument("--repeats", type=int, default=3, help="timed prefill and generate passes per batch size")
    p.add_argument("--peak-tflops", type=float, default=None, help="override this GPU's fp16 peak in (b)")
    p.add_argument("--t4-efficiency", type=float, default=0.25,
                   help="share of the T4's fp16 peak assumed in the arithmetic (c)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run (a), (b) and (c); exit 1 when the memory or time limit is broken."""
    args = parser().parse_args(argv)
    batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    quants = [q.strip() for q in args.quantizations.split(",") if q.strip()]
    if not batch_sizes or min(batch_sizes) < 1 or args.train_batch_size < 1 or args.train_steps < 1:
        parser().error("batch sizes and steps must be positive integers")
    if not set(quants) <= {"none", "4bit", "8bit"}:
        parser().error("--quantizations takes none, 4bit and 8bit")

    import torch

    from utils.models.vlm.load import DEFAULT_MAX_PIXELS

    start = time.perf_counter()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if not args.dry_run else "CPU (dry run, scaled-down Qwen2-VL)"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    dtype = args.dtype if not args.dry_run else "fp32"
    arithmetic = (sorted({1, *batch_sizes}), args.new_tokens)  # (c) at the asked sizes, also in the dry run
    new_tokens, steps, repeats = args.new_tokens, args.train_steps, args.repeats
    if args.dry_run:  # the script's every step, cheaply: a 112 x 112 image budget, fewer steps and batch sizes
        new_tokens, steps, repeats, batch_sizes = min(new_tokens, 4), min(steps, 2), 1, batch_sizes[:2]
    peak = None if args.dry_run else peak_tflops(name, args.peak_tflops)
    ok = True
    image_tokens = None
    with tempfile.TemporaryDirectory(prefix="gpu_check_vlm_") as tmp:
        work = args.work or Path(tmp)
        model_dir = build_checkpoint(work, args.dry_run)
        for quant in [] if args.skip_train else quants:
            why = bnb_works() if quant != "none" else None
            if why:
                print(f"(a) {quant}: skipped, {why}", flush=True)
                continue
            try:
                r = train_step(model_dir, work, quant, args.dtype, args.train_batch_size, steps, args.dry_run)
            except Exception as err:  # noqa: BLE001 - a bitsandbytes build without this device's kernels
                if quant == "none":
                    raise
                print(f"(a) {quant}: failed here ({type(err).__name__}: {str(err)[:300]})", flush=True)
                free_memory()
                continue
            line, fits = train_line(r, dtype, args.dry_run)
            ok &= fits
            print(line, flush=True)
        if not args.skip_infer:
            for r in inference(model_dir, work, batch_sizes, new_tokens, args.dry_run, repeats, args.dtype):
                image_tokens = r["image_tokens"]
                frac = "peak unknown"
                if peak:
                    flop = costs(QWEN2_VL_2B, "none", image_tokens, 1, new_tokens)["prefill_flop"]
                    frac = f"{r['prefill_img_s'] * flop / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s"
                print(f"(b) {dtype} batch {r['batch_size']:>3}: prefill {r['prefill_img_s']:7.2f} img/s ({frac}); "
                      f"generate {new_tokens} tokens {r['generate_img_s']:7.2f} img/s (median of {repeats}, spread "
                      f"{r['spread']:.0%}" + (f", peak {r['peak_gib']:.2f} GiB" if "peak_gib" in r else "")
                      + f"); {r['tokens']} tokens/row, {r['image_tokens']} of them image tokens", flush=True)
    # (c) always for the real configs; the image tokens a square photo gets at the default budget unless measured.
    tokens = image_tokens if image_tokens and not args.dry_run else int(DEFAULT_MAX_PIXELS**0.5 // 28) ** 2
    for label, spec, quant in (("Qwen2-VL-2B-Instruct", QWEN2_VL_2B, "none"),
                               ("Qwen2-VL-2B-Instruct", QWEN2_VL_2B, "4bit"),
                               ("Qwen2-VL-7B-Instruct", QWEN2_VL_7B, "4bit")):
        for line in t4_arithmetic(label, spec, quant, tokens, args.train_batch_size, *arithmetic, args.t4_efficiency):
            print(line, flush=True)
    elapsed = time.perf_counter() - start
    in_time = elapsed < TIME_LIMIT_S
    ok &= in_time
    print(f"total {elapsed:.0f} s ({'OK' if in_time else 'TOO SLOW'}, limit {TIME_LIMIT_S} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
