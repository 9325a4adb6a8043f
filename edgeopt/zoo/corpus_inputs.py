"""Realistic inputs for the corpus models, made here (no data set downloads), the same on every machine.

Random noise is no input for a text detector: PP-OCR det answers it with
probabilities of 1e-5, so relative errors measure float noise. These makers
render text lines and pages with Pillow's built-in font, draw simple scenes,
and synthesize voiced audio, each seeded, preprocessed the way the model's
own pipeline does (PP-OCR: (x / 255 - 0.5) / 0.5 for cls and rec, ImageNet
mean / std for det; YOLOv8: x / 255; silero VAD: 16 kHz chunks of 512
samples plus 64 of context, state zeros, sr 16000).
"""

from __future__ import annotations

import numpy as np

WORDS = ("invoice", "total", "2026-12-02", "edge", "Myriad X", "49.90", "camera", "VNNI", "depthwise",
         "quantize", "ReLU6", "batch", "ONNX", "kernel", "latency", "Raspberry Pi", "Jetson", "Kirin 970",
         "stride", "channel", "pruning", "float16", "export", "opset 11")


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _line_text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 4))))


def _text_line(rng, height: int, width: int) -> np.ndarray:
    """One dark-on-light text line, resized to `height` and padded to `width` like PP-OCR does."""
    from PIL import Image, ImageDraw

    text = _line_text(rng)
    font = _font(32)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("RGB", (right - left + 16, bottom - top + 16), tuple(int(v) for v in rng.integers(200, 256, 3)))
    ImageDraw.Draw(canvas).text((8 - left, 8 - top), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
    scaled_w = min(width, max(1, round(canvas.width * height / canvas.height)))
    line = np.asarray(canvas.resize((scaled_w, height), Image.BILINEAR), dtype=np.float32)
    out = np.zeros((height, width, 3), np.float32)  # PP-OCR pads with zeros after normalizing
    out[:, :scaled_w] = (line / 255 - 0.5) / 0.5
    return out.transpose(2, 0, 1)


def ocr_lines(n: int, height: int, width: int, seed: int, flip_every: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lines = [_text_line(rng, height, width) for _ in range(n)]
    if flip_every:  # the angle classifier tells 0 from 180 degrees: give it both
        lines = [l[:, ::-1, ::-1].copy() if i % flip_every else l for i, l in enumerate(lines)]
    return np.stack(lines)


def ocr_page(n: int, size: int, seed: int) -> np.ndarray:
    """Pages of scattered text lines, ImageNet-normalized (PP-OCR det's preprocessing)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(n):
        page = Image.new("RGB", (size, size), (235, 235, 228))
        draw = ImageDraw.Draw(page)
        y = 8
        while y < size - 24:
            font = _font(int(rng.integers(14, 26)))
            draw.text((int(rng.integers(4, size // 3)), y), _line_text(rng), font=font, fill=(20, 20, 30))
            y += int(rng.integers(24, 44))
        x = np.asarray(page, dtype=np.float32) / 255
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        pages.append(x.transpose(2, 0, 1))
    return np.stack(pages).astype(np.float32)


def scene(n: int, size: int, seed: int) -> np.ndarray:
    """Simple scenes: a gradient background, filled shapes and a caption, scaled to [0, 1]."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None]
        base = (np.stack([ramp * 120 + 60, ramp * 60 + 90, 200 - ramp * 80], axis=-1) * np.ones((1, size, 1)))
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 7))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 40, 2))
            w, h = (int(v) for v in rng.integers(20, size // 2, 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
        draw.text((10, size - 30), _line_text(rng), font=_font(20), fill=(255, 255, 255))
        images.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255)
    return np.stack(images).astype(np.float32)


def voiced_audio(n: int, samples: int, seed: int, rate: int = 16000) -> np.ndarray:
    """Chunks of vowel-like audio (a glottal harmonic series shaped by two formants) and one of noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    chunks = []
    for i in range(n):
        if i == n - 1:
            chunks.append(rng.normal(0, 0.005, samples))
            continue
        f0 = rng.uniform(100, 220)
        formants = rng.uniform(400, 900), rng.uniform(1000, 2400)
        wave = np.zeros(samples)
        for k in range(1, int(3500 // f0)):
            f = k * f0
            gain = sum(1 / (1 + ((f - fm) / 150) ** 2) for fm in formants) / k
            wave += gain * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        wave *= rng.uniform(0.1, 0.3) / (np.abs(wave).max() + 1e-9)
        chunks.append(wave + rng.normal(0, 0.002, samples))
    return np.stack(chunks).astype(np.float32)


def make_inputs(kind: str) -> dict[str, np.ndarray]:
    """The feeds (by graph input name) for one corpus model's input kind."""
    if kind == "ocr_cls":
        return {"x": ocr_lines(8, 48, 192, seed=1, flip_every=2)}
    if kind == "ocr_rec":
        return {"x": ocr_lines(8, 48, 320, seed=2)}
    if kind == "ocr_page":
        return {"x": ocr_page(2, 320, seed=3)}
    if kind == "scene":
        return {"images": scene(2, 320, seed=4)}
    audio = voiced_audio(4, 576, seed=5)  # 512 samples + 64 of context at 16 kHz
    if kind == "audio_seq":
        zeros = np.zeros((1, 1, 128), np.float32)
        return {"input": audio, "h": zeros, "c": zeros.copy()}
    feeds = {"input": audio, "state": np.zeros((2, len(audio), 128), np.float32)}
    if kind == "audio_sr":
        feeds["sr"] = np.array(16000, dtype=np.int64)
    elif kind not in ("audio", "audio_fixed"):
        raise ValueError(f"unknown corpus input kind {kind!r}")
    return feeds
