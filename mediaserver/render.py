"""Deterministic procedural images drawn with Pillow.

The same (prompt, style, seed, kind, width, height) always gives the same PNG
bytes (with the same Pillow and zlib). The style fixes the colour family, so
all images of one world look related; prompt and seed vary the composition.
Avatars are round portraits (transparent outside the circle); posts are
landscape scenes with a few words of the prompt as a caption.
"""

import colorsys
import hashlib
import io
import math
import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

RENDERER = "worldgen-procedural-renderer/1"
MIN_SIZE, MAX_SIZE = 16, 2048
KINDS = ("avatar", "post")
SUPERSAMPLE_UP_TO = 1024  # draw at 2x and downscale (smooth edges) up to this size

Color = tuple[int, int, int]


def render_png(*, prompt: str, style: str, seed: int, width: int, height: int, kind: str) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = random.Random(_digest(kind, style, prompt, str(seed)))
    palette = _palette(rng, style)
    scale = 2 if max(width, height) <= SUPERSAMPLE_UP_TO else 1
    draw_scene = _avatar if kind == "avatar" else _post
    image = draw_scene(rng, palette, width * scale, height * scale, prompt)
    if scale > 1:
        image = image.reduce(scale)  # box-filter downscale: smooth edges at a fraction of LANCZOS's cost
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)  # fast zlib: ~4x cheaper to encode, files ~1.5x larger
    return out.getvalue()


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest(), "big")


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))


def _palette(rng: random.Random, style: str) -> dict[str, Color]:
    mood = _digest("style", style.strip().lower())
    hue = (mood % 1000) / 1000 + rng.uniform(-0.06, 0.06)  # the world's hue, jittered per image
    sat = 0.35 + (mood // 1000 % 50) / 100  # 0.35 .. 0.84
    accent = hue + rng.choice((0.5, 0.42, 0.58, 0.33))
    return {
        "sky_top": _hsv(hue, sat, rng.uniform(0.25, 0.6)),
        "sky_bottom": _hsv(hue + 0.08, sat * 0.6, rng.uniform(0.8, 1.0)),
        "accent": _hsv(accent, sat + 0.1, 0.95),
        "dark": _hsv(hue - 0.05, sat, 0.18),
        "mid": _hsv(hue + 0.03, sat * 0.8, 0.5),
        "cloth": _hsv(accent + rng.uniform(-0.1, 0.1), sat, rng.uniform(0.4, 0.8)),
        "hair": _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.1, 0.7)),
    }


def _gradient(w: int, h: int, top: Color, bottom: Color) -> Image.Image:
    column = Image.linear_gradient("L").resize((1, h))  # 0 at the top, 255 at the bottom
    sky = Image.composite(Image.new("RGB", (1, h), bottom), Image.new("RGB", (1, h), top), column)
    return sky.resize((w, h), Image.Resampling.NEAREST)


def _glow(image: Image.Image, cx: float, cy: float, r: float, color: Color, strength: float = 0.6) -> None:
    q = 4  # a blurred glow has no detail: draw and blur it at a quarter of the resolution, in its own box
    reach = r * 2.5  # the ellipse plus ~3 sigma of blur
    box = (
        max(0, int(cx - reach)),
        max(0, int(cy - reach)),
        min(image.width, int(cx + reach) + 1),
        min(image.height, int(cy + reach) + 1),
    )
    if box[0] >= box[2] or box[1] >= box[3]:
        return
    size = (box[2] - box[0], box[3] - box[1])
    mask = Image.new("L", (max(1, size[0] // q), max(1, size[1] // q)), 0)
    x, y = (cx - box[0]) / q, (cy - box[1]) / q
    ImageDraw.Draw(mask).ellipse((x - r / q, y - r / q, x + r / q, y + r / q), fill=round(255 * strength))
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, r / 2 / q))).resize(size, Image.Resampling.BILINEAR)
    image.paste(color, box, mask)


def _post(rng: random.Random, pal: dict[str, Color], w: int, h: int, prompt: str) -> Image.Image:
    image = _gradient(w, h, pal["sky_top"], pal["sky_bottom"])
    unit = min(w, h)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:  # a night-ish sky: stars
        for _ in range(rng.randint(20, 80)):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h * 0.5), unit * rng.uniform(0.002, 0.006)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_mix(pal["sky_bottom"], (255, 255, 255), 0.7))
    # Sun or moon, with a soft glow.
    cx, cy, r = rng.uniform(0.15, 0.85) * w, rng.uniform(0.12, 0.4) * h, unit * rng.uniform(0.06, 0.13)
    _glow(image, cx, cy, r * 2.2, pal["accent"])
    draw = ImageDraw.Draw(image)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_mix(pal["accent"], (255, 255, 255), 0.35))
    # Ridges from far (hazy) to near (dark); each ridge is a sum of sines.
    layers = rng.randint(3, 5)
    for i in range(layers):
        depth = (i + 1) / layers
        base = h * (0.45 + 0.4 * depth)
        waves = [
            (rng.uniform(1, 6), rng.uniform(0, 2 * math.pi), h * rng.uniform(0.02, 0.09) * (1.2 - depth))
            for _ in range(3)
        ]
        step = max(1, w // 120)
        ridge = [
            (x, base - sum(a * math.sin(f * x / w * 2 * math.pi + p) for f, p, a in waves))
            for x in range(0, w + step, step)
        ]
        color = _mix(_mix(pal["sky_bottom"], pal["mid"], 0.5), pal["dark"], depth)
        draw.polygon([(0, h), *ridge, (w, h)], fill=color)
        if i == layers - 1:  # trees or towers on the nearest ridge
            tower = rng.random() < 0.3
            for _ in range(rng.randint(3, 12)):
                x, y = ridge[rng.randrange(len(ridge))]
                tw, th = unit * rng.uniform(0.015, 0.04), unit * rng.uniform(0.05, 0.16)
                if tower:
                    draw.rectangle((x - tw / 2, y - th, x + tw / 2, y + 2), fill=color)
                    draw.rectangle((x - tw / 5, y - th * 0.8, x + tw / 5, y - th * 0.7), fill=pal["accent"])
                else:
                    draw.polygon([(x - tw, y + 2), (x, y - th), (x + tw, y + 2)], fill=color)
    _caption(image, prompt, unit)
    return image


def _caption(image: Image.Image, prompt: str, unit: int) -> None:
    words = " ".join(prompt.split()[:4])
    size = max(8, unit // 16)
    if not words or unit < 96:
        return
    font = ImageFont.load_default(size=size)
    w, h = image.size
    image.paste((0, 0, 0), (0, h - size * 2, w, h), Image.new("L", (w, size * 2), 110))  # a darker band
    ImageDraw.Draw(image).text((size * 0.6, h - size * 1.6), words, font=font, fill=(245, 245, 245))


SKIN_TONES = [(255, 224, 196), (241, 194, 152), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 56, 32)]


def _avatar(rng: random.Random, pal: dict[str, Color], w: int, h: int, prompt: str) -> Image.Image:
    image = _gradient(w, h, pal["sky_top"], pal["sky_bottom"])
    unit = min(w, h)
    cx = w / 2
    for _ in range(rng.randint(3, 7)):  # soft background circles
        bx, by, br = rng.uniform(0, w), rng.uniform(0, h), unit * rng.uniform(0.05, 0.2)
        _glow(image, bx, by, br, pal["accent"], strength=rng.uniform(0.2, 0.5))
    draw = ImageDraw.Draw(image)
    # Fantasy worlds: sometimes a non-human skin colour from the palette.
    skin = _mix(pal["accent"], (255, 255, 255), 0.3) if rng.random() < 0.25 else rng.choice(SKIN_TONES)
    head_y, head_rx, head_ry = h * rng.uniform(0.4, 0.46), unit * rng.uniform(0.16, 0.21), unit * rng.uniform(0.2, 0.25)
    long_hair = rng.random() < 0.5
    if long_hair:
        draw.rounded_rectangle(
            (cx - head_rx * 1.3, head_y - head_ry * 1.15, cx + head_rx * 1.3, head_y + head_ry * 1.6),
            radius=head_rx,
            fill=pal["hair"],
        )
    # Shoulders and neck.
    draw.ellipse((cx - unit * 0.42, h * 0.78, cx + unit * 0.42, h * 1.3), fill=pal["cloth"])
    draw.rectangle(
        (cx - head_rx * 0.4, head_y + head_ry * 0.6, cx + head_rx * 0.4, h * 0.82), fill=_mix(skin, (0, 0, 0), 0.15)
    )
    draw.ellipse((cx - head_rx, head_y - head_ry, cx + head_rx, head_y + head_ry), fill=skin)
    # Hair on top: a cap; sometimes horns or a crown for the fantastical ones.
    draw.chord(
        (cx - head_rx * 1.05, head_y - head_ry * 1.12, cx + head_rx * 1.05, head_y + head_ry * 0.5),
        180,
        360,
        fill=pal["hair"],
    )
    extra = rng.random()
    if extra < 0.2:
        for side in (-1, 1):
            bx = cx + side * head_rx * 0.6
            draw.polygon(
                [
                    (bx - head_rx * 0.15, head_y - head_ry * 0.8),
                    (bx + side * head_rx * 0.35, head_y - head_ry * 1.6),
                    (bx + head_rx * 0.15, head_y - head_ry * 0.85),
                ],
                fill=pal["dark"],
            )
    elif extra < 0.35:
        top = head_y - head_ry * 1.05
        points = [(cx - head_rx * 0.7, top)]
        for k in range(5):
            points += [
                (cx - head_rx * 0.7 + head_rx * 0.35 * (k + 0.5), top - head_ry * 0.35 * (k % 2 == 0)),
                (cx - head_rx * 0.7 + head_rx * 0.35 * (k + 1), top),
            ]
        draw.polygon(points, fill=pal["accent"])
    # Face: eyes and a mouth.
    eye_y, eye_dx, eye_r = head_y - head_ry * 0.05, head_rx * 0.4, unit * rng.uniform(0.014, 0.024)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - eye_r * 1.6, eye_y - eye_r, ex + eye_r * 1.6, eye_y + eye_r), fill=(250, 250, 250))
        draw.ellipse((ex - eye_r * 0.8, eye_y - eye_r * 0.8, ex + eye_r * 0.8, eye_y + eye_r * 0.8), fill=pal["dark"])
    mouth_w = head_rx * rng.uniform(0.3, 0.55)
    draw.arc(
        (cx - mouth_w, head_y + head_ry * 0.25, cx + mouth_w, head_y + head_ry * 0.6),
        20,
        160,
        fill=_mix(skin, (120, 20, 40), 0.6),
        width=max(1, unit // 100),
    )
    # Round: transparent outside the central circle.
    mask = Image.new("L", (w, h), 0)
    r = unit / 2
    ImageDraw.Draw(mask).ellipse((cx - r, h / 2 - r, cx + r, h / 2 + r), fill=255)
    image.putalpha(mask)
    return image
