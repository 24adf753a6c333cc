"""The report model: an Idefics3 (SmolVLM's architecture) with its processor.

One code path serves the embedded model (a small Idefics3 built from :class:`ReportArch`, with a
byte-level BPE trained offline on the report texts) and the real SmolVLM weights a user brings:
both are a transformers model folder that :func:`synthex.models.registry.load_report_model`
loads (the only ``from_pretrained`` site), both are prompted through the processor's chat
template with the instruction and the clinical case (cut to :data:`CASE_CHARS` characters), and
both answer in the four-field format of :mod:`synthex.report.format`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from synthex.errors import ConfigError, SynthexError
from synthex.report.format import StructuredReport, parse_report

logger = logging.getLogger(__name__)

CASE_CHARS = 500
INSTRUCTION = "Write the structured report of this chest X-ray: image labels, gender, age, image caption."
END = "<end_of_utterance>"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<global-img>", END,
                  *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))
# SmolVLM's chat template, less its <|im_start|> (the tiny tokenizer has no such token)
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] | capitalize }}"
                 "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
                 "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
                 "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
                 "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


@dataclass
class ReportArch:
    """The embedded model's shape (a tiny SigLIP-style vision tower + a small Llama decoder)."""

    image_size: int = 128
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    scale_factor: int = 2
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    intermediate: int = 512
    vocab_size: int = 1500
    max_positions: int = 512

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor ** 2

    def validate(self, where: str = "") -> None:
        problems = [f"{f.name} {getattr(self, f.name)!r} must be a positive integer"
                    for f in dataclasses.fields(self)
                    if not isinstance(getattr(self, f.name), int) or getattr(self, f.name) < 1]
        if not problems:
            grid = self.image_size // self.patch_size
            if self.image_size % self.patch_size or grid % self.scale_factor:
                problems.append(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size} "
                                f"times scale_factor {self.scale_factor}")
            for hidden, heads, what in ((self.vision_hidden, self.vision_heads, "vision"),
                                        (self.text_hidden, self.text_heads, "text")):
                if hidden % heads:
                    problems.append(f"{what}_hidden {hidden} must be divisible by {what}_heads {heads}")
        if problems:
            raise ConfigError(f"{where}invalid report arch: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Building the embedded model and its processor
# ---------------------------------------------------------------------------------------------
def build_tokenizer(texts: Sequence[str], vocab_size: int):
    """A lower-casing byte-level BPE trained on ``texts``, holding Idefics3's image tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", additional_special_tokens=list(SPECIAL_TOKENS[4:]))


def build_processor(tokenizer, arch: ReportArch):
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    size = {"longest_edge": arch.image_size}
    images = Idefics3ImageProcessorPil(do_resize=True, size=size, max_image_size=size, do_image_splitting=False,
                                       image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=arch.image_seq_len,
                             chat_template=CHAT_TEMPLATE)


def build_model(arch: ReportArch, tokenizer):
    """A randomly initialised Idefics3ForConditionalGeneration of ``arch`` (seed it outside)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("pad", "<pad>"), ("bos", "<s>"), ("eos", END), ("image", "<image>"))}
    config = Idefics3Config(
        image_token_id=ids["image"], scale_factor=arch.scale_factor, tie_word_embeddings=True, pad_token_id=ids["pad"],
        vision_config=dict(hidden_size=arch.vision_hidden, intermediate_size=2 * arch.vision_hidden,
                           num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
                           image_size=arch.image_size, patch_size=arch.patch_size, num_channels=3),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=arch.text_hidden,
                         intermediate_size=arch.intermediate, num_hidden_layers=arch.text_layers,
                         num_attention_heads=arch.text_heads, num_key_value_heads=arch.text_heads,
                         max_position_embeddings=arch.max_positions, pad_token_id=ids["pad"],
                         bos_token_id=ids["bos"], eos_token_id=ids["eos"], tie_word_embeddings=True))
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    return model


# ---------------------------------------------------------------------------------------------
# Prompts and batches (shared by training and inference)
# ---------------------------------------------------------------------------------------------
def prompt_text(processor, case: str | None) -> str:
    """The chat-template prompt: the image, the instruction, the case cut to 500 characters."""
    case = " ".join(str(case or "").split())[:CASE_CHARS]
    text = INSTRUCTION + (f" Clinical case: {case}" if case else "")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def rgb_image(path_or_image):
    """A PIL RGB image (grayscale X-rays are repeated over three channels, as SmolVLM expects)."""
    from synthex.io import open_image

    image = open_image(path_or_image) if isinstance(path_or_image, (str, Path)) else path_or_image
    return image.convert("RGB")


def training_batch(processor, images: list, prompts: list[str], targets: list[str], max_tokens: int):
    """Tokenised prompt + target (+ end token), labels -100 on the prompt, the padding and
    past ``max_tokens`` target tokens."""
    import torch

    tok = processor.tokenizer
    full = [p + " " + t.strip() + END for p, t in zip(prompts, targets)]
    tok.padding_side = "right"
    batch = processor(text=full, images=[[im] for im in images], return_tensors="pt", padding=True)
    prompt_lens = [len(ids) for ids in processor(text=prompts, images=[[im] for im in images])["input_ids"]]
    labels = batch["input_ids"].clone()
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = -100
        labels[row, n + max_tokens:] = -100
    labels[batch["attention_mask"] == 0] = -100
    keep = int(min(batch["input_ids"].shape[1], max(prompt_lens) + max_tokens + 1))
    out = {k: v[:, :keep] if k in ("input_ids", "attention_mask") else v for k, v in batch.items()}
    out["labels"] = labels[:, :keep]
    return out


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
class ReportModel:
    """A loaded report model (eval mode) and its processor."""

    def __init__(self, model, processor, name: str, folder: Path | None = None, info: dict[str, Any] | None = None):
        self.model, self.processor, self.name, self.folder, self.info = model, processor, name, folder, info or {}

    @classmethod
    def load(cls, model: str | Path | None = None, *, adapter: str | Path | None = None,
             load_in_4bit: bool = False) -> "ReportModel":
        """``model``: a preset name (default: the embedded one), a folder or a hub id (resolved by
        the registry, offline first); ``adapter``: a LoRA folder of ``synthex train report``."""
        from synthex.models.registry import load_report_model

        loaded = load_report_model(model, adapter=adapter, load_in_4bit=load_in_4bit)
        return cls(loaded.model.eval(), loaded.processor, loaded.name, loaded.folder, loaded.info)

    def generate(self, images: Sequence[Any], cases: Sequence[str | None] | None = None, *, max_new_tokens: int = 160,
                 batch_size: int = 8, num_beams: int = 1,
                 callback: Callable[[int, int], None] | None = None) -> list[StructuredReport]:
        """One report per image (greedy by default: the same image gives the same report)."""
        import torch

        cases = list(cases) if cases is not None else [None] * len(images)
        if len(cases) != len(images):
            raise SynthexError(f"{len(images)} images but {len(cases)} clinical cases; give one case per image")
        tok = self.processor.tokenizer
        out: list[StructuredReport] = []
        for start in range(0, len(images), batch_size):
            chunk = [rgb_image(im) for im in images[start:start + batch_size]]
            prompts = [prompt_text(self.processor, c) for c in cases[start:start + batch_size]]
            tok.padding_side = "left"
            batch = self.processor(text=prompts, images=[[im] for im in chunk], return_tensors="pt", padding=True)
            with torch.inference_mode():
                ids = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          num_beams=num_beams, eos_token_id=tok.convert_tokens_to_ids(END),
                                          pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [parse_report(t.strip(), c) for t, c in zip(texts, cases[start:start + batch_size])]
            if callback:
                callback(len(out), len(images))
        return out
