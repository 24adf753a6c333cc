"""Report model benchmarks, measured side by side in one run.

1. Seconds per report with a report model (default: the embedded one) on N test-split images of a
   prepared folder, one image per call and in batches.
2. QLoRA vs bf16 LoRA on the same small Idefics3 saved to disk: weight memory
   (``get_memory_footprint``), trainable parameters and seconds per LoRA step, as ratios.

    OMP_NUM_THREADS=2 python benchmarks/bench_report.py --data runs/phantom-ds-128 --n 16
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def speed(data: str, model: str | None, n: int, batch: int) -> list[tuple[str, float]]:
    from synthex.report.data import load_report_data
    from synthex.report.model import ReportModel

    examples = load_report_data(data).split("test")[:n]
    loaded = ReportModel.load(model)
    loaded.generate([examples[0].image], [examples[0].case])  # warm-up
    rows = []
    for size in (1, batch):
        t0 = time.perf_counter()
        loaded.generate([e.image for e in examples], [e.case for e in examples], batch_size=size)
        rows.append((f"{loaded.name}, batch {size}", (time.perf_counter() - t0) / len(examples)))
    return rows


def qlora_vs_lora(steps: int) -> list[tuple[str, float, int, float]]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from PIL import Image

    from synthex.models.registry import load_report_model
    from synthex.report.model import ReportArch, build_model, build_processor, build_tokenizer, prompt_text, training_batch
    from synthex.train.report import LORA_TARGETS

    arch = ReportArch(text_hidden=512, text_layers=6, text_heads=8, intermediate=1536, vision_hidden=256,
                      vision_layers=4, vision_heads=4, vocab_size=1000)
    texts = ["no acute cardiopulmonary abnormality. the heart is normal in size. small right pleural effusion."] * 50
    tok = build_tokenizer(texts, arch.vocab_size)
    proc = build_processor(tok, arch)
    folder = Path(tempfile.mkdtemp()) / "base"
    torch.manual_seed(0)
    build_model(arch, tok).save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    image = Image.new("RGB", (128, 128), 128)
    rows = []
    for name, four_bit, dtype in (("bf16 LoRA", False, torch.bfloat16), ("QLoRA (NF4, double quant, bf16 compute)", True, None)):
        loaded = load_report_model(str(folder), load_in_4bit=four_bit, dtype=dtype)
        model = loaded.model
        memory = model.get_memory_footprint()
        if four_bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS))
        batch = training_batch(proc, [image] * 4, [prompt_text(proc, "cough")] * 4, texts[:4], 64)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append((name, memory / 2**20, trainable, (time.perf_counter() - t0) / steps))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/phantom-ds-128")
    parser.add_argument("--model", default=None, help="report model (default: the embedded one)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="LoRA steps timed per variant")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| report model | seconds per report |\n|---|---:|")
    for name, sec in speed(args.data, args.model, args.n, args.batch):
        print(f"| {name} | {sec:.3f} |")
    rows = qlora_vs_lora(args.steps)
    print("\n| LoRA variant (Idefics3 with a 6-layer 512-d decoder) | weight memory (MiB) | trainable | s/step |")
    print("|---|---:|---:|---:|")
    for name, mib, trainable, sec in rows:
        print(f"| {name} | {mib:.1f} | {trainable:,} | {sec:.2f} |")
    (_, m_bf16, _, s_bf16), (_, m_q, _, s_q) = rows
    print(f"\nQLoRA / bf16 LoRA: weight memory {m_q / m_bf16:.2f}x, step time {s_q / s_bf16:.2f}x")


if __name__ == "__main__":
    main()
