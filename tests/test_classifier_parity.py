"""The Rust classifier against tools/reference.py (Pillow + onnxruntime): identical top-1 on
every image, bit-identical input tensors, logits within 1e-4."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run

MODEL = ROOT / "models" / "efficientnet-lite0"
FIXTURES = ROOT / "services/classifier/tests/fixtures"
# Pillow writes neither arithmetic coding (these are by `jpegtran -arithmetic [-progressive]`) nor
# interlaced PNGs (these are by pypng).
ARITHMETIC = [FIXTURES / n for n in ("arithmetic.jpg", "arithmetic_progressive.jpg")]
INTERLACED = [FIXTURES / f"interlaced_{n}.png" for n in ("rgb", "grey4", "grey16", "tiny_rgba")]


def make_variants(photo: Path, thumb: Path, out: Path) -> list[Path]:
    """Encodings and colour modes the test set lacks, made with Pillow from real pictures."""
    out.mkdir(parents=True, exist_ok=True)
    big = Image.open(photo).convert("RGB")
    small = Image.open(thumb).convert("RGB")
    grey = np.asarray(big.convert("L")).astype(np.uint16)
    # Alpha from 0 to 255 across the picture: Pillow drops it, whatever it hides.
    alpha = Image.linear_gradient("L").resize(big.size)
    files = {
        "gray.jpg": (big.convert("L"), {}),
        "progressive.jpg": (big, {"progressive": True, "quality": 85}),
        "subsampling444.jpg": (big, {"subsampling": 0, "quality": 92}),
        "subsampling422.jpg": (big, {"subsampling": 1, "quality": 75}),
        "odd_size.jpg": (big.resize((333, 251)), {}),
        # Shrunk vertical pass first by Pillow (the height shrinks by over twice what the width does).
        "narrow_portrait.jpg": (big.resize((223, 1000)), {}),
        "tall_strip.png": (big.resize((300, 2000)), {}),
        "cmyk.jpg": (big.convert("CMYK"), {}),
        "restart_markers.jpg": (big, {"restart_marker_blocks": 4}),
        "huge_upscale.jpg": (small.resize((2000, 1500)), {"quality": 90}),
        "one_pixel.png": (small.resize((1, 1)), {}),
        "rgb.png": (big, {}),
        "rgba.png": (big.convert("RGBA"), {}),
        "gray.png": (big.convert("L"), {}),
        "gray_alpha.png": (big.convert("LA"), {}),
        "palette.png": (big.convert("P", palette=Image.Palette.ADAPTIVE), {}),
        "bilevel.png": (big.convert("1"), {}),
        "graded_alpha.png": (Image.merge("RGBA", (*big.split(), alpha)), {}),
        "palette_transparency.png": (big.convert("P", palette=Image.Palette.ADAPTIVE), {"transparency": 0}),
        # 16-bit grey opens as mode I;16, whose conversion clamps at 255 where other modes scale.
        "grey16.png": (Image.fromarray(grey * 257), {}),
        "grey16_low.png": (Image.fromarray(grey), {}),
    }
    paths = []
    for name, (image, options) in files.items():
        path = out / name
        image.save(path, **options)
        paths.append(path)
    return paths


def read_f32(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4")


@pytest.fixture(scope="module")
def images(datasets, darknet_photos, tmp_path_factory):
    thumbs = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    assert len(thumbs) == 100
    variants = make_variants(darknet_photos[0], thumbs[0], tmp_path_factory.mktemp("variants"))
    return thumbs + darknet_photos + variants + ARITHMETIC + INTERLACED


def test_rust_and_reference_agree_on_every_image(app_tier, images, tmp_path):
    names = [p.name for p in images]
    assert len(set(names)) == len(names)
    rust = run([app_tier, "classify", "--model", MODEL, "--dump", tmp_path / "rust", *images])
    assert rust.returncode == 0, rust.stderr
    ref = run([sys.executable, "tools/reference.py", "--model", MODEL, "--dump", tmp_path / "ref", *images])
    assert ref.returncode == 0, ref.stderr

    rust_labels = dict(line.split(",", 1) for line in rust.stdout.splitlines())
    ref_labels = dict(line.split(",", 1) for line in ref.stdout.splitlines())
    assert list(rust_labels) == names
    disagree = {n: (rust_labels[n], ref_labels[n]) for n in names if rust_labels[n] != ref_labels[n]}

    worst_logit, tensor_mismatch = 0.0, []
    for name in names:
        rt, pt = read_f32(tmp_path / "rust" / f"{name}.input.f32"), read_f32(tmp_path / "ref" / f"{name}.input.f32")
        if rt.shape != pt.shape or not np.array_equal(rt, pt):
            diff = np.abs(rt - pt).max() if rt.shape == pt.shape else "shape"
            tensor_mismatch.append((name, diff))
        rl, pl = read_f32(tmp_path / "rust" / f"{name}.logits.f32"), read_f32(tmp_path / "ref" / f"{name}.logits.f32")
        worst_logit = max(worst_logit, float(np.abs(rl - pl).max()))
    print(f"\n{len(names)} images: {len(disagree)} label differences, {len(tensor_mismatch)} tensor differences, "
          f"largest absolute logit difference {worst_logit:.3g}")
    assert not disagree, disagree
    assert not tensor_mismatch, tensor_mismatch
    assert worst_logit < 1e-4


def damaged(sources: list[Path], out: Path, per_source: int, seed: int) -> list[Path]:
    """Files as they arrive broken: a few bytes changed, a run cut out or inserted, cut short, or
    cut at their end with the start of a segment left after the image data."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in sources:
        data = source.read_bytes()
        for i in range(per_source):
            b = bytearray(data)
            at = rng.randrange(len(b))
            kind = rng.choice(["change", "change", "cut short", "cut out", "insert", "stray segment"])
            if kind == "change":
                for at in rng.sample(range(len(b)), rng.randint(1, 4)):
                    b[at] = rng.randrange(256)
            elif kind == "cut short":
                del b[at:]
            elif kind == "cut out":
                del b[at:at + rng.randint(1, 64)]
            elif kind == "insert":
                b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            else:  # its EOI replaced by a COM or APPn segment longer than what follows
                b[-2:] = bytes([0xFF, rng.choice([0xFE, 0xE1, 0xEE]), 0x01, 0x00]) + b"cut"
            path = out / f"{source.stem}-{i}{source.suffix}"
            path.write_bytes(bytes(b))
            paths.append(path)
    return paths


def test_damaged_jpegs_are_accepted_or_refused_as_the_reference_does(app_tier, images, tmp_path):
    """What Pillow decodes, the service decodes to the same pixels; what it refuses, the service
    refuses; but for images past `image_limits` (a changed size byte makes a 24896x64 strip, which
    Pillow decodes and the service refuses by design)."""
    jpegs = [p for p in images if p.suffix.lower() in (".jpg", ".jpeg")]
    sources = jpegs[:4] + [p for p in jpegs if p.name in {"progressive.jpg", "gray.jpg", "cmyk.jpg",
                                                         "restart_markers.jpg", "subsampling422.jpg"}]
    sources += ARITHMETIC
    assert len(sources) == 11
    files = damaged(sources, tmp_path / "damaged", 100, seed=1)
    rust = run([app_tier, "classify", "--model", MODEL, "--dump", tmp_path / "rust", *files])
    ref = run([sys.executable, "tools/reference.py", "--model", MODEL, "--dump", tmp_path / "ref", *files])
    assert "panicked" not in rust.stderr
    rust_labels = dict(line.split(",", 1) for line in rust.stdout.splitlines())
    ref_labels = dict(line.split(",", 1) for line in ref.stdout.splitlines())
    reasons = dict(line.split(": ", 1) for line in rust.stderr.splitlines() if ": " in line)
    over_limits = {n for n in ref_labels if "larger than" in reasons.get(n, "")}
    print(f"\n{len(files)} damaged JPEGs: {len(ref_labels)} decoded by the reference, {len(rust_labels)} here, "
          f"{len(over_limits)} of them past image_limits here")
    assert 0.3 < len(ref_labels) / len(files) < 0.9  # the damage leaves some readable, not all
    assert set(rust_labels) == set(ref_labels) - over_limits, (
        {n: reasons.get(n) for n in set(ref_labels) - set(rust_labels) - over_limits},
        set(rust_labels) - set(ref_labels))
    for name in rust_labels:
        rt, pt = read_f32(tmp_path / "rust" / f"{name}.input.f32"), read_f32(tmp_path / "ref" / f"{name}.input.f32")
        assert rt.shape == pt.shape and np.array_equal(rt, pt), name
    assert rust_labels == {n: ref_labels[n] for n in rust_labels}


def test_damaged_pngs_are_accepted_or_refused_as_the_reference_does(app_tier, images, tmp_path):
    """As for JPEGs: Pillow checks the CRCs of the chunks before the image data and zlib's
    checksum, and stops reading once every row is out (a bad IDAT CRC, a cut IEND: read)."""
    small = tmp_path / "small"
    small.mkdir()
    sources = []
    for path in (p for p in images if p.suffix == ".png"):
        if path in INTERLACED:  # small already, and Pillow would write them not interlaced
            sources.append(path)
            continue
        with Image.open(path) as im:
            if im.width > 160:  # keeps its mode (palette, 16-bit grey, alpha, 1-bit)
                im = im.resize((160, max(1, im.height * 160 // im.width)), Image.Resampling.NEAREST)
            im.save(small / path.name)
        sources.append(small / path.name)
    assert len(sources) == 16
    files = damaged(sources, tmp_path / "damaged", 60, seed=3)
    rust = run([app_tier, "classify", "--model", MODEL, "--dump", tmp_path / "rust", *files])
    ref = run([sys.executable, "tools/reference.py", "--model", MODEL, "--dump", tmp_path / "ref", *files])
    assert "panicked" not in rust.stderr and "Traceback" not in ref.stderr, ref.stderr[-2000:]
    rust_labels = dict(line.split(",", 1) for line in rust.stdout.splitlines())
    ref_labels = dict(line.split(",", 1) for line in ref.stdout.splitlines())
    print(f"\n{len(files)} damaged PNGs: {len(ref_labels)} decoded by the reference, {len(rust_labels)} here")
    assert 0.1 < len(ref_labels) / len(files) < 0.9
    assert set(rust_labels) == set(ref_labels), (set(ref_labels) - set(rust_labels), set(rust_labels) - set(ref_labels))
    for name in rust_labels:
        rt, pt = read_f32(tmp_path / "rust" / f"{name}.input.f32"), read_f32(tmp_path / "ref" / f"{name}.input.f32")
        assert rt.shape == pt.shape and np.array_equal(rt, pt), name
    assert rust_labels == ref_labels


def test_classify_reports_unreadable_files_and_still_classifies_the_rest(app_tier, datasets, tmp_path):
    good = datasets / "imagenet-100" / "test_0.JPEG"
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"definitely not a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:400])
    result = run([app_tier, "classify", "--model", MODEL, garbage, good, tmp_path / "missing.png", truncated])
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("test_0.JPEG,")
    errors = result.stderr.strip().splitlines()
    assert [e.split(":")[0] for e in errors] == ["garbage.jpg", "missing.png", "truncated.jpg"], errors
    assert "panicked" not in result.stderr
