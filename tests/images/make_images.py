"""Makes the small test images in tests/images/ (committed; rerun only to change them).

  small.png     320x200 RGB PNG, under 640 px (no tiles in gundam mode)
  portrait.jpg  700x1000 JPEG (tiles in gundam mode)
  wide.png      2000x300 RGB PNG (very wide: 1xN grids, heavy padding)
  exif_rgba.png 500x760 RGBA PNG with an EXIF orientation 6 (rotate 90 clockwise) and transparent areas
Content is drawn text, lines and boxes on a light page, so views are not flat.
Run with Debian's python3 (Pillow 9.4): /usr/bin/python3 tests/images/make_images.py
"""
import os
import random

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))


def page(w, h, seed, mode="RGB"):
    rnd = random.Random(seed)
    bg = (250, 248, 240, 255) if mode == "RGBA" else (250, 248, 240)
    img = Image.new(mode, (w, h), bg)
    d = ImageDraw.Draw(img)
    y = 10
    while y < h - 20:
        x = 10
        while x < w - 40:
            word = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
            col = tuple(rnd.randint(0, 80) for _ in range(3))
            d.text((x, y), word, fill=col + ((255,) if mode == "RGBA" else ()))
            x += 8 * len(word) + 12
        y += rnd.choice([14, 16, 22])
        if rnd.random() < 0.1:
            d.rectangle([10, y, w - 10, y + 30], outline=(20, 20, 120), width=2)
            y += 36
    for _ in range(6):
        x0, y0 = rnd.randint(0, w - 1), rnd.randint(0, h - 1)
        col = tuple(rnd.randint(0, 255) for _ in range(3))
        d.line([x0, y0, rnd.randint(0, w - 1), rnd.randint(0, h - 1)], fill=col + ((255,) if mode == "RGBA" else ()), width=3)
    return img


def main():
    page(320, 200, 1).save(os.path.join(HERE, "small.png"))
    page(700, 1000, 2).save(os.path.join(HERE, "portrait.jpg"), quality=90)
    page(2000, 300, 3).save(os.path.join(HERE, "wide.png"))
    img = page(500, 760, 4, "RGBA")
    alpha = img.getchannel("A")
    a = alpha.load()
    for y in range(0, 120):
        for x in range(0, 500):
            a[x, y] = 0  # transparent band at the top (its stored RGB stays)
    for y in range(300, 400):
        for x in range(100, 300):
            a[x, y] = 128
    img.putalpha(alpha)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(os.path.join(HERE, "exif_rgba.png"), exif=exif.tobytes())


if __name__ == "__main__":
    main()
