"""Rebuild a colour training corpus from Debian's icon themes and clip art.

    python bench/icons_corpus.py [--out data/icons] [--size 128] [--themes papirus,breeze]
                                 [--clipart 4000] [--jobs 2] [--min-size 48] [--seed 0]

Icon themes draw the same freedesktop icon names (`folder`, `user-trash`, ...) each in its own
style, so one name across themes is "the same thing drawn in another style". `make icons-corpus`
installs the Debian packages (ICON_PACKAGES in the Makefile) and runs this.

Themes: every /usr/share/icons/<Theme> with an index.theme, less hicolor/locolor/default and the
dark/light/mono recolourings. Per theme: the directories its index.theme lists with a design size
>= --min-size, not the Animations or Emotes contexts, no `-symbolic` or `face-*` icon (faces are
emoji-like, and emoji are kept for independent evaluation). Per name the largest drawing wins (an
SVG over a PNG of equal pixels). Links are resolved and names whose files have the same bytes are
one drawing, written once under the name most themes use (the freedesktop standard names are the
ones every theme ships), then a real file over a link, then the shorter name. SVGs are rasterised
with rsvg-convert, PNGs resized; each becomes an RGBA --size square, padded transparent. A file
with the same bytes as one written before (an earlier theme's, alphabetically) is deleted: a copy
is no other style (gnome-icon-theme and Adwaita share ~120 drawings).

Clip art: --clipart files sampled (seeded, from the sorted list, duplicates by content dropped;
people/smilies, shapes/stars and posters over 16 MP left out) from openclipart-png, the longer side
resized to --size, named `clipart-<path>` so a stem never meets an icon name.

Writes OUT/<theme>/<name>.png (for the trainer's `--group-by name`: one stem in several folders is
one group), OUT/clipart/clipart-*.png and OUT/manifest.csv (path,group,theme; group empty for clip
art). Files already there at --size are kept, so a rerun only checks; a folder's files no longer
chosen are removed. Prints the themes found, a line per theme, the shared names of every theme pair
and the held-out pair.

Held out for cross-style evaluation: HELD_OUT = breeze and oxygen. Breeze is KDE Plasma's flat
set (plain shapes, no gradients), oxygen KDE 4's skeuomorphic one (glossy gradients, perspective);
they share 334 names, the most of any pair outside papirus (papirus/breeze 479 are both flat,
papirus/oxygen 309 but papirus has a sibling in paper), and neither has a near-copy in another
theme. Train on every other theme and the clip art; evaluate by querying each oxygen icon against
the breeze icons (and back) and counting the same name among the nearest.
"""

from __future__ import annotations

import argparse
import configparser
import csv
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from PIL import Image

ICON_ROOT = Path("/usr/share/icons")
CLIPART_ROOT = Path("/usr/share/openclipart/png")
HELD_OUT = ("breeze", "oxygen")
SKIP_THEME = re.compile(
    r"^(default|hicolor|locolor|epapirus.*)$|dark|light|mono|ambiance|radiance", re.IGNORECASE
)
SKIP_CONTEXTS = {"animations", "emotes"}
SKIP_NAME = re.compile(r"symbolic(-rtl)?$|^face-")  # also Adwaita's x-symbolic.symbolic.png
# smilies and flags: emoji-like (emoji are kept for independent evaluation); stars: 1,378
# generated rosettes.
SKIP_CLIPART = ("people/smilies/", "signs_and_symbols/flags/", "shapes/stars/")
MAX_PIXELS = 16_000_000  # 19 clip-art posters are 100-600 MP: slow, and no better at 96 px


@dataclass(frozen=True)
class Icon:
    """One drawing to write: `src` (an SVG or PNG) becomes OUT/`folder`/`name`.png."""

    folder: str
    name: str
    src: Path
    group: str


def theme_folders(root: Path = ICON_ROOT) -> list[Path]:
    """Theme directories worth reading, sorted; skipped ones are left out."""
    return sorted(
        d for d in root.iterdir() if (d / "index.theme").is_file() and not SKIP_THEME.search(d.name)
    )


def theme_dirs(theme: Path, min_size: int) -> list[tuple[str, int, int]]:
    """(subdir, design size, scale) of every index.theme directory that may hold our icons."""
    index = configparser.ConfigParser(interpolation=None, strict=False)
    index.optionxform = str  # type: ignore[assignment,method-assign]
    index.read(theme / "index.theme", encoding="utf-8")
    listed = index.get("Icon Theme", "Directories", fallback="")
    listed += "," + index.get("Icon Theme", "ScaledDirectories", fallback="")
    out = []
    for sub in dict.fromkeys(s.strip() for s in listed.split(",") if s.strip()):
        if sub not in index or "symbolic" in sub:
            continue
        section = index[sub]
        size, scale = int(section.get("Size", "0")), int(section.get("Scale", "1"))
        if size >= min_size and section.get("Context", "").lower() not in SKIP_CONTEXTS:
            out.append((sub, size, scale))
    return out


def candidates(theme: Path, min_size: int) -> dict[str, Path]:
    """Name -> the largest drawing of that name in the theme (a symlink, not yet resolved)."""
    best: dict[str, tuple[tuple[int, int, bool], Path]] = {}
    for sub, size, scale in theme_dirs(theme, min_size):
        folder = theme / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".svg", ".png") or SKIP_NAME.search(path.stem):
                continue
            if not path.resolve().is_file():  # a broken link
                continue
            key = (size, size * scale, path.suffix == ".svg")
            if path.stem not in best or key > best[path.stem][0]:
                best[path.stem] = (key, path)
    return {name: path for name, (_, path) in sorted(best.items())}


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def dedupe(found: dict[str, Path], popularity: Counter[str]) -> tuple[dict[str, Path], int]:
    """One name per drawing (same bytes after resolving links); returns (name -> file, merged)."""
    by_drawing: dict[str, list[str]] = {}
    for name, path in found.items():
        by_drawing.setdefault(digest(path.resolve()), []).append(name)

    def rank(name: str) -> tuple[int, bool, int, str]:
        return (-popularity[name], found[name].is_symlink(), len(name), name)

    kept = {min(names, key=rank) for names in by_drawing.values()}
    return {n: p.resolve() for n, p in found.items() if n in kept}, len(found) - len(kept)


def drop_copies(folder: Path, names: Iterable[str], taken: set[str]) -> set[str]:
    """Delete folder/<name>.png whose bytes were already written (`taken`, updated); the rest."""
    kept = set()
    for name in sorted(names):
        path = folder / f"{name}.png"
        if not path.exists():  # failed to render
            continue
        if (h := digest(path)) in taken:
            path.unlink()
        else:
            taken.add(h)
            kept.add(name)
    return kept


def square(image: Image.Image, size: int, pad: bool = True) -> Image.Image:
    """RGBA, the longer side `size`; centred on a transparent `size` square when `pad`."""
    image = image.convert("RGBA")
    scale = size / max(image.size)
    w, h = (max(1, round(d * scale)) for d in image.size)
    if (w, h) != image.size:
        image = image.resize((w, h), Image.Resampling.LANCZOS)
    if not pad or w == h:
        return image
    canvas = Image.new("RGBA", (size, size))
    canvas.paste(image, ((size - w) // 2, (size - h) // 2))
    return canvas


def render(src: Path, dst: Path, size: int, pad: bool = True) -> str:
    """Write dst from src unless it is already there at `size`: 'new', 'kept' or 'failed'."""
    if dst.exists():
        try:
            with Image.open(dst) as done:
                if max(done.size) == size:
                    return "kept"
        except OSError:
            pass
    tmp, raster = dst.with_name(f".{dst.name}.tmp"), dst.with_name(f".{dst.name}.svg.tmp")
    try:
        if src.suffix == ".svg":
            size_args = ["-w", str(size), "-h", str(size), "-a"]
            subprocess.run(
                ["rsvg-convert", *size_args, "-o", str(raster), str(src)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            src = raster
        with Image.open(src) as image:
            square(image, size, pad).save(tmp, format="PNG", optimize=False)
        os.replace(tmp, dst)
        return "new"
    except (OSError, ValueError, subprocess.SubprocessError, Image.DecompressionBombError):
        tmp.unlink(missing_ok=True)
        return "failed"
    finally:
        raster.unlink(missing_ok=True)


def write_all(icons: list[Icon], out: Path, size: int, jobs: int, pad: bool = True) -> Counter:
    """Render every icon into out/<folder>/<name>.png; removes that folder's stale PNGs."""
    for folder in {i.folder for i in icons}:
        (out / folder).mkdir(parents=True, exist_ok=True)
        wanted = {f"{i.name}.png" for i in icons if i.folder == folder}
        for old in (out / folder).glob("*.png"):
            if old.name not in wanted:
                old.unlink()
    with ThreadPoolExecutor(jobs) as pool:
        results = pool.map(
            lambda i: render(i.src, out / i.folder / f"{i.name}.png", size, pad), icons
        )
        return Counter(results)


def small_enough(path: Path) -> bool:
    try:
        with warnings.catch_warnings(action="ignore"), Image.open(path) as image:
            return image.width * image.height <= MAX_PIXELS
    except (OSError, Image.DecompressionBombError):
        return False


def clipart_sample(root: Path, n: int, seed: int) -> list[Icon]:
    """Up to n distinct clip-art PNGs, the same ones for the same files and seed."""
    if n <= 0 or not root.is_dir():
        return []
    seen, files = set(), []
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(SKIP_CLIPART) or not path.resolve().is_file() or not small_enough(path):
            continue
        h = digest(path.resolve())
        if h not in seen:
            seen.add(h)
            files.append((rel, path.resolve()))
    picked = sorted(random.Random(seed).sample(files, min(n, len(files))))
    icons: dict[str, Icon] = {}
    for rel, src in picked:
        name = "clipart-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", rel[:-4])
        if name in icons:  # x+.png and x-.png
            name += "-" + hashlib.sha1(rel.encode()).hexdigest()[:6]
        icons[name] = Icon("clipart", name, src, "")
    return list(icons.values())


def overlap_table(names: dict[str, set[str]]) -> str:
    """Shared names of every theme pair, as a text table."""
    themes = sorted(names)
    width = max(7, *(len(t) for t in themes)) + 1
    lines = [" " * width + "".join(f"{t[:7]:>8}" for t in themes)]
    for a in themes:
        row = "".join(f"{len(names[a] & names[b]):>8}" for b in themes)
        lines.append(f"{a:<{width}}{row}")
    return "\n".join(lines)


def build(
    out: Path,
    size: int = 96,
    themes: Iterable[str] | None = None,
    clipart: int = 4000,
    jobs: int = 2,
    min_size: int = 48,
    seed: int = 0,
    icon_root: Path = ICON_ROOT,
    clipart_root: Path = CLIPART_ROOT,
    log: Callable[[str], None] = print,
) -> dict[str, set[str]]:
    """Write the corpus and its manifest; returns theme -> icon names written."""
    folders = theme_folders(icon_root)
    log(f"themes installed: {', '.join(d.name for d in folders) or 'none'}")
    if themes is not None:
        wanted = {t.lower() for t in themes}
        folders = [d for d in folders if d.name.lower() in wanted]
        if missing := wanted - {d.name.lower() for d in folders}:
            log(f"not installed (skipped): {', '.join(sorted(missing))}")
    found = {d.name.lower(): candidates(d, min_size) for d in folders}
    popularity = Counter(name for names in found.values() for name in names)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, set[str]] = {}
    rows: list[tuple[str, str, str]] = []
    taken: set[str] = set()  # digests of the files written: a copy of one is dropped
    for theme, names in found.items():
        if not names:
            log(f"{theme}: no icons of size >= {min_size}, skipped")
            continue
        start = time.monotonic()
        kept, merged = dedupe(names, popularity)
        icons = [Icon(theme, name, src, name) for name, src in kept.items()]
        counts = write_all(icons, out, size, jobs)
        written[theme] = drop_copies(out / theme, kept, taken)
        rows += [(f"{theme}/{n}.png", n, theme) for n in sorted(written[theme])]
        copies = len(kept) - counts["failed"] - len(written[theme])
        log(
            f"{theme}: {len(written[theme])} drawings ({merged} aliases merged, {copies} copies "
            f"dropped; {counts['new']} new, {counts['kept']} kept, {counts['failed']} failed) "
            f"{time.monotonic() - start:.1f}s"
        )
    art = clipart_sample(clipart_root, clipart, seed)
    if art:
        start = time.monotonic()
        counts = write_all(art, out, size, jobs, pad=False)
        ok = [i for i in art if (out / "clipart" / f"{i.name}.png").exists()]
        rows += [(f"clipart/{i.name}.png", "", "clipart") for i in ok]
        log(
            f"clipart: {len(ok)} files ({counts['new']} new, {counts['kept']} kept, "
            f"{counts['failed']} failed) {time.monotonic() - start:.1f}s"
        )
    with open(out / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "group", "theme"), *rows])
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/icons"))
    parser.add_argument("--size", type=int, default=128, help="output side in pixels")
    parser.add_argument("--themes", help="comma-separated theme folders (default: all found)")
    parser.add_argument("--clipart", type=int, default=4000, help="clip-art files to sample")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=48, help="smallest design size taken")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not shutil.which("rsvg-convert"):
        sys.exit("rsvg-convert not found: apt-get install librsvg2-bin")
    start = time.monotonic()
    themes = args.themes.split(",") if args.themes else None
    written = build(args.out, args.size, themes, args.clipart, args.jobs, args.min_size, args.seed)
    counts = Counter(n for names in written.values() for n in names)
    files = [p for p in args.out.rglob("*.png") if p.is_file()]
    print("\nper theme:", ", ".join(f"{t} {len(n)}" for t, n in written.items()))
    print(f"names in >= 2 themes (cross-style groups): {sum(c >= 2 for c in counts.values())}")
    print(f"names in >= 3 themes: {sum(c >= 3 for c in counts.values())}")
    print(f"files: {len(files)}, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB")
    if len(written) > 1:
        print("\nshared names per theme pair:\n" + overlap_table(written))
        pairs = sorted(combinations(written, 2), key=lambda p: -len(written[p[0]] & written[p[1]]))
        print(
            "largest overlaps:",
            ", ".join(f"{a}/{b} {len(written[a] & written[b])}" for a, b in pairs[:5]),
        )
    a, b = HELD_OUT
    if a in written and b in written:
        print(f"held out for evaluation: {a}, {b} ({len(written[a] & written[b])} shared names)")
    print(f"wall time: {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
