"""GPU check at full size: PaliGemma-3B-448's architecture with random weights (no download); ``--backend vlm``
checks the vlm backend's default Qwen2-VL-2B-Instruct instead (``bench/gpu_check_vlm.py``, its own options:
``--backend vlm --help``).

(a) a few 4-bit LoRA optimizer steps through the project's own ``utils.models.paligemma.train.fit`` at the notebook's default batch
    size (``TrainConfig.train_batch_size``), with ``dtype="auto"`` and ``device="auto"`` exactly as the notebooks
    run it (fp16 on a T4, bf16 where it is native), printing peak GPU memory (must be < 15 GiB so the fine-tune fits
    a 16 GB T4), the measured optimizer-step time, and how many steps (and rows) a 9-hour time budget plans at the
    notebook's defaults (13,600 rows, 2 epochs, 16 rows per step);
(b) inference through ``utils.models.paligemma.infer.generate_answers`` in the ``dtype="auto"`` dtype (``--dtype float16`` forces a
    T4's): images/s at batch sizes 1, 16 (the notebook default) and 32 for prefill alone and for greedy generation
    (median of ``--repeats``, with peak memory), and the fraction of the GPU's peak FLOP/s reached by prefill (one
    image ≈ 5.2 TFLOP: ~1,030 tokens through the 2.5B Gemma decoder plus 1,024 patches through SigLIP-So400m).

The weights are random: the model is built in fp16 on the GPU from the config below (the values of
``google/paligemma-3b-ft-docvqa-448``'s config.json), saved to local disk, and loaded back through
``utils.models.paligemma.load.load_base_model`` exactly like the hub model, with ``BitsAndBytesConfig`` doing the 4-bit
quantisation. The tokenizer is the tiny one from ``utils.models.paligemma.tiny`` (vocabulary size does not change the cost:
the embedding matrix is full size). Everything must finish in under 8 minutes.

    python bench/gpu_check.py                  # on a GPU machine
    python bench/gpu_check.py --dry-run        # CPU: the same steps with the tiny model, to check the script
    python bench/gpu_check.py --backend vlm [--dry-run]
"""

from __future__ import annotations

import argparse
import gc
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

GiB = 1024**3
TFLOP_PER_IMAGE = 5.2e12
MEMORY_LIMIT_GIB = 15.0
TIME_LIMIT_S = 8 * 60

# google/paligemma-3b-ft-docvqa-448 config.json (SigLIP-So400m/14 at 448 px -> 1024 image tokens; Gemma-2B).
VISION_448 = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
    image_size=448, patch_size=14, vision_use_head=False, hidden_act="gelu_pytorch_tanh",
)
GEMMA_2B = dict(
    hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
    num_key_value_heads=1, head_dim=256, vocab_size=257216, hidden_act="gelu_pytorch_tanh",
    max_position_embeddings=8192, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=2, eos_token_id=1,
)
PALIGEMMA_448 = dict(image_token_index=257152, vocab_size=257216, projection_dim=2048, hidden_size=2048)

# Dense fp16/bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0, "V100": 125.0,
               "L40": 181.0, "P100": 18.7}


def full_config(image_token_id: int):
    """The PaliGemma-3B-448 config (random weights will be created from it)."""
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**VISION_448),
        text_config=GemmaConfig(**GEMMA_2B),
        **{**PALIGEMMA_448, "image_token_index": image_token_id},
    )
    assert config.text_config.num_image_tokens == 1024
    return config


def peak_tflops(name: str, override: float | None) -> float | None:
    """The GPU's dense fp16 peak in TFLOP/s (None when unknown)."""
    if override:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def build_checkpoint(work: Path, dry_run: bool) -> Path:
    """Random-weight model + processor saved in ``work/model`` (full size on GPU, tiny with ``--dry-run``)."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    from utils.models.paligemma.tiny import TinyConfig, build_processor, build_tiny_paligemma

    out = work / "model"
    if dry_run:
        return build_tiny_paligemma(out, TinyConfig(image_size=64, patch_size=8))
    processor = build_processor(TinyConfig(image_size=448, patch_size=14))  # image_seq_length 1024
    config = full_config(processor.image_token_id)
    t = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cuda"):
            model = PaliGemmaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"built {n / 1e9:.2f}B random parameters in fp16 and saved them in {time.perf_counter() - t:.0f} s")
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def train_step(model_dir: Path, work: Path, batch_size: int, dry_run: bool, steps: int) -> dict[str, Any]:
    """(a) ``steps`` 4-bit LoRA optimizer steps through ``utils.models.paligemma.train.fit`` (dtype and device "auto", as the
    notebooks); returns the measurements, the step time from the fit's own time-budget plan."""
    import json

    import torch

    from utils.models.paligemma.tiny import make_synthetic_set
    from utils.models.paligemma.train import fit

    rows = make_synthetic_set(work / "data", size=448 if not dry_run else 64)
    n = batch_size * steps
    rows = rows.sample(n, replace=n > len(rows), random_state=0).reset_index(drop=True)
    cuda = torch.cuda.is_available() and not dry_run
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fit(
        rows, None, work / "data" / "images", work / "train",
        model_id=str(model_dir), quantization="4bit", dtype="auto", device="auto" if cuda else "cpu",
        max_steps=steps, train_batch_size=batch_size, grad_accum=1, save_steps=1000, logging_steps=1, resume=False,
        calibration_steps=max(1, steps - 2), time_budget_hours=0,
    )
    seconds = time.perf_counter() - t
    plan = json.loads((work / "train" / "checkpoints" / "plan.json").read_text()) \
        if (work / "train" / "checkpoints" / "plan.json").is_file() else {}
    result = {"batch_size": batch_size, "steps": steps, "seconds_load_and_steps": seconds,
              "step_seconds": plan.get("step_seconds")}
    if cuda:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / GiB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
        from utils.models.paligemma.load import ModelConfig

        result["dtype"] = str(ModelConfig(device="auto").torch_dtype).removeprefix("torch.")
    return result


def budget_plan(step_seconds: float, rows_per_step: int, hours: float = 9.0, margin_minutes: float = 20.0,
                rows: int = 13600, epochs: float = 2.0, val_fraction: float = 0.1) -> str:
    """What a ``hours`` time budget plans at the notebook defaults, for a measured step time (one row per sample;
    the bench's step is ``rows_per_step`` rows, the notebook's 4 x 4 = 16)."""
    per_row = step_seconds / rows_per_step
    step = per_row * 16
    configured = int(epochs * rows * (1 - val_fraction) // 16)
    fits = int((hours * 3600 - margin_minutes * 60) // step)
    planned = min(configured, fits)
    return (f"a {hours:g}-hour budget plans {planned} of {configured} configured steps "
            f"({planned * 16:,} rows seen of {int(epochs * rows * (1 - val_fraction)):,}; {step:.1f} s per 16-row "
            f"step)")


def inference(model_dir: Path, work: Path, batch_sizes: list[int], new_tokens: int, dry_run: bool,
              repeats: int, dtype: str = "auto") -> list[dict[str, Any]]:
    """(b) prefill and generation throughput through ``generate_answers`` in ``dtype`` ("auto": as the notebooks)."""
    import torch

    from utils.data.tables import make_prompt
    from utils.data.images import image_path, load_image
    from utils.models.paligemma.data import IMAGE_TOKEN
    from utils.models.paligemma.infer import generate_answers
    from utils.models.paligemma.load import ModelConfig, load_base_model, load_processor

    cuda = torch.cuda.is_available() and not dry_run
    cfg = ModelConfig(model_id=str(model_dir), quantization="none", dtype=dtype if cuda else "auto",
                      device="cuda" if cuda else "cpu")
    model = load_base_model(cfg).eval()
    processor = load_processor(model_dir)
    rows = make_synthetic_set_rows(work)
    pool = [load_image(image_path(work / "data" / "images", u)) for u in rows["image_link"]]
    prompts_pool = [make_prompt(e) for e in rows["entity_name"]]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    results = []
    for bs in batch_sizes:
        images = [pool[i % len(pool)] for i in range(bs)]
        prompts = [prompts_pool[i % len(pool)] for i in range(bs)]
        batch = processor(images=images, text=[IMAGE_TOKEN + p for p in prompts], return_tensors="pt",
                          padding="longest")
        inputs = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                           "token_type_ids")}
        inputs["pixel_values"] = batch["pixel_values"].to(model.device, model.dtype)
        with torch.inference_mode():
            model(**inputs, logits_to_keep=1)  # warm-up
            sync()
            t = time.perf_counter()
            for _ in range(repeats):
                model(**inputs, logits_to_keep=1)
            sync()
            prefill_s = (time.perf_counter() - t) / repeats
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        generate_answers(model, processor, images, prompts, max_new_tokens=new_tokens)  # warm-up, same shapes
        sync()
        gen_times = []
        for _ in range(repeats):
            t = time.perf_counter()
            generate_answers(model, processor, images, prompts, max_new_tokens=new_tokens)
            sync()
            gen_times.append(time.perf_counter() - t)
        gen_s = statistics.median(gen_times)
        result = {"batch_size": bs, "prefill_img_s": bs / prefill_s, "generate_img_s": bs / gen_s,
                  "generate_spread": (max(gen_times) - min(gen_times)) / gen_s,
                  "tokens_per_image": inputs["input_ids"].shape[1]}
        if cuda:
            result["generate_peak_gib"] = torch.cuda.max_memory_allocated() / GiB
        results.append(result)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return results


def make_synthetic_set_rows(work: Path):
    """The synthetic rows already rendered by the training step (re-rendered when absent)."""
    from utils.models.paligemma.tiny import make_synthetic_set

    return make_synthetic_set(work / "data", size=448)


def main(argv: list[str] | None = None) -> int:
    """Run (a) and (b); exit 1 when the memory or time limit is broken. ``--backend vlm``: the vlm backend's check."""
    from utils.models.paligemma.train import TrainConfig

    backends = ("paligemma", "vlm")
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--backend", default="paligemma", choices=backends)
    known, rest = first.parse_known_args(argv)
    if known.backend == "vlm":
        from gpu_check_vlm import main as vlm_main  # bench/ (this file's folder) is on sys.path

        return vlm_main(rest)
    parser = argparse.ArgumentParser(description="PaliGemma-3B-448 GPU check (random weights)")
    parser.add_argument("--backend", default="paligemma", choices=backends,
                        help="paligemma (these options) or vlm (Qwen2-VL-2B; see --backend vlm --help)")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU: checks the script only")
    parser.add_argument("--train-batch-size", type=int, default=TrainConfig().train_batch_size,
                        help="rows in the training step (default: the notebook's, TrainConfig.train_batch_size)")
    parser.add_argument("--train-steps", type=int, default=6, help="optimizer steps timed in (a)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16"),
                        help="inference dtype; auto: as the notebooks (fp16 on a T4, bf16 where native)")
    parser.add_argument("--batch-sizes", default="1,16,32", help="inference batch sizes, comma separated")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per answer when timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed prefill and generate passes per batch size")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's fp16 peak")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-infer", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) < 1 or args.train_batch_size < 1:
        parser.error("batch sizes must be positive integers")

    import torch

    start = time.perf_counter()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if not args.dry_run else "CPU (dry run, tiny model)"
    print(f"device: {name}; torch {torch.__version__}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = args.work or Path(tmp)
        model_dir = build_checkpoint(work, args.dry_run)
        if not args.skip_train:
            r = train_step(model_dir, work, args.train_batch_size, args.dry_run, args.train_steps)
            line = (f"(a) 4-bit LoRA, dtype auto ({r.get('dtype', 'cpu')}), batch {r['batch_size']}: "
                    f"load + {r['steps']} steps {r['seconds_load_and_steps']:.0f} s")
            if r["step_seconds"]:
                line += (f"; {r['step_seconds']:.2f} s per optimizer step; "
                         + budget_plan(r["step_seconds"], r["batch_size"]))
            if "peak_gib" in r:
                fits = r["peak_gib"] < MEMORY_LIMIT_GIB
                ok &= fits
                line += (f", peak GPU memory {r['peak_gib']:.2f} GiB allocated ({r['peak_reserved_gib']:.2f} "
                         f"reserved): {'OK' if fits else 'TOO MUCH'} (limit {MEMORY_LIMIT_GIB} GiB)")
            print(line, flush=True)
        if not args.skip_infer:
            peak = peak_tflops(name, args.peak_tflops) if not args.dry_run else None
            for r in inference(model_dir, work, batch_sizes, args.new_tokens, args.dry_run, args.repeats,
                               args.dtype):
                frac = (f"{r['prefill_img_s'] * TFLOP_PER_IMAGE / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s"
                        if peak else "peak unknown")
                print(f"(b) {args.dtype if not args.dry_run else 'fp32'} batch {r['batch_size']:>3}: prefill {r['prefill_img_s']:7.2f} img/s ({frac}); "
                      f"generate {args.new_tokens} tokens {r['generate_img_s']:7.2f} img/s "
                      f"(median of {args.repeats}, spread {r['generate_spread']:.0%}"
                      + (f", peak {r['generate_peak_gib']:.1f} GiB" if "generate_peak_gib" in r else "")
                      + f"); {r['tokens_per_image']} tokens/image", flush=True)
    elapsed = time.perf_counter() - start
    in_time = elapsed < TIME_LIMIT_S
    ok &= in_time
    print(f"total {elapsed:.0f} s ({'OK' if in_time else 'TOO SLOW'}, limit {TIME_LIMIT_S} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
