"""The embedded synthetic domain pair: dashcam-like street scenes in two photometric styles.

``source`` is a flat, saturated "game" style; ``target`` is a dark, low-contrast, textured, noisy "dusk camera"
style whose per-class colours come from the source palette by a strong global transform plus per-class gains that
swap the brightness order of some class pairs (road vs sidewalk, pole vs sidewalk, ...), so colour alone does not
transfer. Pure numpy + cv2 and deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from adapt.data.labels import IGNORE_INDEX
from adapt.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = ("road", "sidewalk", "building", "sky", "vegetation", "terrain", "car", "person",
                                "pole", "sign")
ROAD, SIDEWALK, BUILDING, SKY, VEGETATION, TERRAIN, CAR, PERSON, POLE, SIGN = range(10)

# Source ("game") base colours, RGB.
_SOURCE_PALETTE = np.array([(128, 128, 132), (232, 190, 150), (196, 110, 80), (110, 185, 250), (50, 170, 60),
                            (160, 205, 90), (220, 40, 40), (190, 50, 190), (80, 80, 90), (250, 210, 0)], np.float32)
_CAR_COLOURS = np.array([(220, 40, 40), (40, 90, 220), (240, 200, 40), (235, 235, 235), (30, 160, 170)], np.float32)
# Target per-class gains after the global dusk transform: they reorder class brightness (wet bright road,
# dark sidewalk and vegetation, shiny pole).
_TARGET_GAIN = np.array([1.35, 0.75, 0.8, 1.0, 0.8, 1.0, 0.9, 1.2, 1.6, 1.0], np.float32)
_TINTS = np.array([(255, 130, 50), (50, 90, 210)], np.float32)  # dusk orange / blue hour


def _poly(img: np.ndarray, pts, value: int) -> None:
    cv2.fillConvexPoly(img, np.round(np.asarray(pts, np.float64)).astype(np.int32), int(value))


def render_layout(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Random street scene layout: uint8 [H, W] class-index map (indices into CLASS_NAMES)."""
    H, W = size
    lab = np.full((H, W), SKY, np.uint8)
    hy = H * rng.uniform(0.35, 0.5)
    vx = W * rng.uniform(0.4, 0.6)
    u = lambda a, b: a + (b - a) * float(rng.random())  # noqa: E731
    # Edge lines as (x at horizon, x at image bottom), signed outwards: road, sidewalk outer, building front.
    tw, stw, ttw = W * u(0.005, 0.02), W * u(0.01, 0.03), W * u(0.0, 0.04)
    half = {s: W * u(0.35, 0.55) for s in (-1, 1)}
    sw = {s: W * u(0.15, 0.35) for s in (-1, 1)}
    ts = {s: W * u(0.1, 0.4) for s in (-1, 1)}
    road = {s: (vx + s * tw, vx + s * half[s]) for s in (-1, 1)}
    side = {s: (vx + s * (tw + stw), vx + s * (half[s] + sw[s])) for s in (-1, 1)}
    front = {s: (vx + s * (tw + stw + ttw), vx + s * (half[s] + sw[s] + ts[s])) for s in (-1, 1)}
    at = lambda line, y: line[0] + (line[1] - line[0]) * (y - hy) / (H - hy)  # noqa: E731

    # Distant skyline standing on the horizon, with gaps.
    x = -u(0, 6)
    while x < W:
        w = u(3, 10)
        if rng.random() > 0.3:
            top = hy - H * u(0.02, 0.12)
            _poly(lab, [(x, top), (x + w, top), (x + w, hy + 1), (x, hy + 1)], BUILDING)
        x += w
    lab[int(round(hy)):] = TERRAIN
    # Facades along both sides, converging to the vanishing point; s = 0 at the horizon, 1 at the image bottom.
    crowns = []
    for s_ in (-1, 1):
        xt, xb = front[s_]
        s_max = (xt if s_ < 0 else W - xt) / abs(xb - xt) + 0.05
        s = u(0.0, 0.05)
        while s < s_max:
            ds = u(0.3, 0.8) * s + 0.03
            tall = u(0.4, 2.0) * hy
            if rng.random() > 0.2:
                corners = [(xt + (xb - xt) * t, y) for t in (s, s + ds) for y in (hy - t * tall, hy + t * (H - hy))]
                _poly(lab, [corners[0], corners[2], corners[3], corners[1]], BUILDING)
                if rng.random() < 0.25:  # tree crowns over the building
                    crowns.append((hy + s * (H - hy), xt + (xb - xt) * (s + ds / 2), hy - s * tall, ds * H * 0.5))
            s += ds
    for s_ in (-1, 1):
        _poly(lab, [(side[s_][0], hy), (road[s_][0], hy), (road[s_][1], H), (side[s_][1], H)], SIDEWALK)
    _poly(lab, [(road[-1][0], hy), (road[1][0], hy), (road[1][1], H), (road[-1][1], H)], ROAD)

    objects = []  # (base y, tie, draw function) drawn far to near
    for yb, xc, yc, r in crowns:
        objects.append((yb, 0, lambda xc=xc, yc=yc, r=r: cv2.circle(lab, (round(xc), round(yc)), max(2, round(r)),
                                                                     VEGETATION, -1)))
    for i in range(int(rng.integers(1, 4))):  # roadside trees on the terrain strip
        s, side_ = u(0.15, 0.9), int(rng.choice([-1, 1]))
        y = hy + s * (H - hy)
        x = u(at(side[side_], y), at(front[side_], y))
        r = s * u(0.12, 0.22) * H + 1.5
        trunk = r * 1.2

        def tree(x=x, y=y, r=r, trunk=trunk):
            cv2.rectangle(lab, (round(x - r * 0.12), round(y - trunk)), (round(x + r * 0.12), round(y)), VEGETATION, -1)
            for dx, dy, k in ((0, 0, 1.0), (-0.6, 0.3, 0.7), (0.6, 0.3, 0.7)):
                cv2.circle(lab, (round(x + dx * r), round(y - trunk - r * 0.6 + dy * r)), max(2, round(r * k)),
                           VEGETATION, -1)
        objects.append((y, 1, tree))
    for i in range(int(rng.integers(0, 5))):  # cars on the road
        s = u(0.12, 1.1)
        y = hy + s * (H - hy)
        w = max(3.0, s * W * u(0.22, 0.32))
        h = w * u(0.55, 0.75)
        xc = u(at(road[-1], y) + w / 2, max(at(road[-1], y) + w / 2, at(road[1], y) - w / 2))

        def car(xc=xc, y=y, w=w, h=h):
            _poly(lab, [(xc - w / 2, y - 0.6 * h), (xc + w / 2, y - 0.6 * h), (xc + w / 2, y), (xc - w / 2, y)], CAR)
            _poly(lab, [(xc - 0.35 * w, y - h), (xc + 0.35 * w, y - h), (xc + 0.4 * w, y - 0.55 * h),
                        (xc - 0.4 * w, y - 0.55 * h)], CAR)
        objects.append((y, 2, car))
    for i in range(int(rng.integers(0, 4))):  # persons on the sidewalks
        s, side_ = u(0.15, 0.95), int(rng.choice([-1, 1]))
        y = hy + s * (H - hy)
        x = u(at(road[side_], y), at(side[side_], y))
        h = s * H * u(0.3, 0.45) + 3

        def person(x=x, y=y, h=h):
            cv2.rectangle(lab, (round(x - 0.12 * h), round(y - 0.78 * h)), (round(x + 0.12 * h), round(y)), PERSON, -1)
            cv2.ellipse(lab, (round(x), round(y - 0.88 * h)), (max(1, round(0.09 * h)), max(1, round(0.12 * h))),
                        0, 0, 360, PERSON, -1)
        objects.append((y, 3, person))
    for i in range(int(rng.integers(1, 4))):  # poles at the kerb, most with a sign
        s, side_ = u(0.2, 0.95), int(rng.choice([-1, 1]))
        y = hy + s * (H - hy)
        x = at(road[side_], y) + side_ * u(0.1, 0.8) * (abs(at(side[side_], y) - at(road[side_], y)))
        h, pw = s * H * u(0.9, 1.4), max(1.0, s * W * 0.012)
        sign = i == 0 or rng.random() < 0.6
        round_sign, sr = rng.random() < 0.5, max(2.0, s * H * u(0.05, 0.08))

        def pole(x=x, y=y, h=h, pw=pw, sign=sign, round_sign=round_sign, sr=sr, side_=side_):
            _poly(lab, [(x - pw / 2, y - h), (x + pw / 2, y - h), (x + pw / 2, y), (x - pw / 2, y)], POLE)
            if sign:
                cx, cy = x - side_ * (sr + pw / 2), y - h + sr
                if round_sign:
                    cv2.circle(lab, (round(cx), round(cy)), round(sr), SIGN, -1)
                else:
                    _poly(lab, [(cx - sr, cy - sr), (cx + sr, cy - sr), (cx + sr, cy + sr), (cx - sr, cy + sr)], SIGN)
        objects.append((y, 4, pole))
    for _, _, draw in sorted(objects, key=lambda o: (o[0], o[1])):
        draw()
    return lab


def _hsv_adjust(rgb: np.ndarray, dh: float, sat: float, val: float) -> np.ndarray:
    a = np.asarray(rgb, np.float32).reshape(1, -1, 3) / 255.0
    hsv = cv2.cvtColor(np.clip(a, 0, 1), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + dh) % 360
    hsv[..., 1] *= sat
    hsv[..., 2] *= val
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(np.shape(rgb)) * 255.0


def render_image(label: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """Paint a layout in `style` ("source" or "target"): uint8 [H, W, 3] RGB."""
    if style not in ("source", "target"):
        raise ValueError(f"style must be 'source' or 'target', got {style!r}")
    H, W = label.shape
    yy = np.arange(H, dtype=np.float32)[:, None]
    n, comp, stats, _ = cv2.connectedComponentsWithStats((label == CAR).astype(np.uint8), connectivity=4)
    car_idx = rng.integers(0, len(_CAR_COLOURS), size=max(n, 1))  # one body colour per car instance
    windows = np.zeros((H, W), bool)  # the window band of each car
    for k, (x0, y0, w, h, _) in enumerate(stats[1:], start=1):
        rows = slice(y0 + int(0.1 * h), y0 + int(0.45 * h) + 1)
        windows[rows, x0:x0 + w] |= comp[rows, x0:x0 + w] == k

    if style == "source":
        pal = np.clip(_SOURCE_PALETTE + rng.integers(-10, 11, size=(10, 3)), 0, 255).astype(np.float32)
        cars = _CAR_COLOURS[car_idx] + rng.integers(-10, 11, size=(len(car_idx), 3))
        img = pal[label]
        if n > 1:
            img[comp > 0] = cars[comp[comp > 0]]
        img[windows] = (60, 70, 90)
        img *= (1.06 - 0.12 * yy / H)[..., None]  # gentle top-lit gradient
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    # Target: dusk camera. Global transform of the source palette, then per-class gains and textures.
    f, dh, sat, con = rng.uniform(0.45, 0.6), rng.uniform(-15, 15), rng.uniform(0.5, 0.7), rng.uniform(0.6, 0.8)
    tint, tw = _TINTS[rng.integers(0, 2)], rng.uniform(0.1, 0.25)

    def dusk(c):
        c = _hsv_adjust(c, dh, sat, f) * (1 - tw) + tint * f * tw
        return 64 * f + (c - 64 * f) * con

    pal = dusk(_SOURCE_PALETTE + rng.integers(-10, 11, size=(10, 3))) * _TARGET_GAIN[:, None]
    cars = dusk(_CAR_COLOURS[car_idx]) * 0.9
    img = pal[label].astype(np.float32)
    hf = rng.standard_normal((H, W)).astype(np.float32)
    lf = cv2.resize(rng.standard_normal((H // 6 + 2, W // 6 + 2)).astype(np.float32), (W, H),
                    interpolation=cv2.INTER_CUBIC)
    m = label == ROAD  # asphalt speckle
    img[m] += (hf[m] * 7 + lf[m] * 5 + (rng.random(m.sum()) < 0.03) * 30)[:, None]
    m = label == VEGETATION  # leafy
    img[m] *= (1 + 0.35 * lf[m] + 0.15 * hf[m])[:, None]
    m = label == TERRAIN
    img[m] *= (1 + 0.12 * lf[m])[:, None]
    m = (label == SIDEWALK) & ((yy.astype(int) % 5 == 0) | (np.arange(W)[None] % 9 == 0))  # paving tiles
    img[m] *= 0.75
    py, px = int(rng.integers(5, 8)), int(rng.integers(5, 9))  # window grid, some windows lit
    lit = rng.random((64, 64)) < 0.25
    ya, xa = np.arange(H)[:, None], np.arange(W)[None]
    win = (label == BUILDING) & (ya % py >= 1) & (ya % py <= py // 2) & (xa % px >= 1) & (xa % px <= px // 2)
    is_lit = win & lit[(ya // py) % 64, (xa // px) % 64]
    img[win & ~is_lit] *= 0.5
    img[is_lit] = np.array((220, 170, 90), np.float32) * (0.7 + 0.3 * f)
    if n > 1:
        img[comp > 0] = cars[comp[comp > 0]]
    img[windows] *= 0.35
    sky_rows = np.flatnonzero((label == SKY).any(axis=1))
    hy = sky_rows.max() + 1 if sky_rows.size else 1
    t = np.clip(yy / hy, 0, 1)[..., None] ** 1.2  # sky gradient: deep blue -> orange at the horizon
    top, low = dusk(_SOURCE_PALETTE[SKY]) * 1.1, np.array((235, 150, 100), np.float32) * f * 1.6
    sky = np.broadcast_to(top * (1 - t) + low * t, (H, W, 3))
    img[label == SKY] = sky[label == SKY]
    glow = np.zeros((H, W, 3), np.float32)  # tail/head lights
    for k in range(1, n):
        x0, y0, w, h, _ = stats[k]
        if w >= 4:
            colour = (255, 50, 30) if rng.random() < 0.7 else (255, 240, 200)
            for cx in (x0 + 0.15 * w, x0 + 0.85 * w):
                cv2.circle(glow, (round(cx), round(y0 + 0.7 * h)), max(1, round(w * 0.07)), colour, -1)
    img += glow * 0.6 + cv2.GaussianBlur(glow, (0, 0), 2.0) * 0.8
    r2 = ((xa / (W - 1) * 2 - 1) ** 2 + (ya / (H - 1) * 2 - 1) ** 2) / 2
    img *= (1 - rng.uniform(0.25, 0.45) * r2)[..., None].astype(np.float32)
    k = int(rng.choice([3, 5]))
    img = cv2.GaussianBlur(img, (k, k), 0)
    img += rng.standard_normal(img.shape).astype(np.float32) * rng.uniform(6, 10)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def write_pair(output: str, num_images: int = 200, size: tuple[int, int] = (96, 128), seed: int = 0,
               val_fraction: float = 0.25) -> tuple[Path, Path]:
    """Write the embedded synthetic domain pair as two folder datasets, ``output/source`` and ``output/target``.

    Returns (source_root, target_root).

    Args:
        output: the folder to write (gets source/ and target/).
        num_images: images per domain.
        size: (height, width) of the images.
        seed: the scenes' seed (the same seed writes the same pair).
        val_fraction: share of each domain in its ``val`` split (the rest is ``train``).
    """
    if num_images < 2 or min(size) < 32 or not 0 < val_fraction < 1:
        raise ConfigError(f"data synth: num_images {num_images} must be at least 2, size {tuple(size)} at least "
                          f"(32, 32) and val_fraction {val_fraction} in (0, 1)")
    roots = []
    n_val = int(round(num_images * val_fraction))
    for domain, (style, prefix) in enumerate((("source", "src"), ("target", "tgt"))):
        root = Path(output) / style
        for sub in ("images", "labels", "splits"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        names = [f"{prefix}_{i:05d}" for i in range(num_images)]
        for i, name in enumerate(names):
            rng = np.random.default_rng([seed, domain, i])
            label = render_layout(rng, size)
            image = render_image(label, style, rng)
            cv2.imwrite(str(root / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / "labels" / f"{name}.png"), label)
        split = num_images - n_val
        (root / "splits" / "train.txt").write_text("".join(f"{n}\n" for n in names[:split]))
        (root / "splits" / "val.txt").write_text("".join(f"{n}\n" for n in names[split:]))
        doc = {"ignore_index": IGNORE_INDEX, "classes": [{"id": i, "name": c} for i, c in enumerate(CLASS_NAMES)]}
        look = "flat game" if domain == 0 else "dusk camera"
        (root / "classes.yaml").write_text(f"# Synthetic street scenes, {style} domain ({look} style), written by "
                                           f"adapt.data.synthetic\n{yaml.safe_dump(doc, sort_keys=False)}")
        roots.append(root)
    return roots[0], roots[1]
