"""Provenance of downloaded images: the type from the bytes, sizes from the
headers, the A1111 `parameters` and `batcher` iTXt chunks inserted without
touching the pixels, and files left as downloaded when they should be."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from PIL import Image

from batcher.errors import NotAnImageError
from batcher.images import MalformedImageError, image_size, sniff
from batcher.run.manifest_line import ImageFile, ManifestLine
from batcher.run.provenance import (
    EXTENSIONS,
    finalize_image,
    insert_png_text,
    itxt_chunk,
    parameters_text,
)
from batcher.sandbox.emulator import ImageJob
from batcher.sandbox.images import render_png

LINE = ManifestLine(
    key="5f23e515f81bc5e08802",
    prompt="A red bicycle leaning on a beach hut at dawn",
    model="z-image-turbo",
    resolution="640px",
    aspect_ratio="16:9",
    tool="general",
    image_count=2,
    project_id="cmx5tfmhdqars6x186ohl7z45",
    state="complete",
    credits_charged=10,
    vars={"color": "red"},
)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(mode: str = "RGB", size: tuple[int, int] = (97, 61)) -> Image.Image:
    image = Image.new("RGB", size)
    image.putdata(
        [(x * 2 % 256, y * 4 % 256, (x + y) % 256) for y in range(size[1]) for x in range(size[0])]
    )
    return image.convert(mode)


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk of a PNG as (type, data), each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found = []
    at = 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        found.append((kind, body))
        at += 12 + length
        if kind == b"IEND":
            break
    return found


def a1111_parse(text: str) -> tuple[str, dict[str, str]]:
    """AUTOMATIC1111's reading of an infotext (modules/infotext_utils.py):
    prompt lines, then a last line of `Key: value` pairs, quoted values as JSON."""
    re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    *lines, last = text.strip().split("\n")
    assert len(re_param.findall(last)) >= 3, "A1111 would not see a settings line"
    fields = {}
    for key, value in re_param.findall(last):
        value = value.strip()
        fields[key] = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
    return "\n".join(lines), fields


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("fmt", "options", "kind"),
    [
        ("PNG", {}, "png"),
        ("JPEG", {"quality": 80}, "jpeg"),
        ("JPEG", {"progressive": True, "exif": b"Exif\x00\x00" + b"\x00" * 4000}, "jpeg"),
        ("WEBP", {"quality": 70}, "webp"),
        ("WEBP", {"lossless": True}, "webp"),
    ],
)
def test_kind_and_size_come_from_the_bytes(fmt: str, options: dict[str, object], kind: str) -> None:
    data = encoded(gradient(), fmt, **options)
    assert sniff(data[:12]) == kind
    assert image_size(io.BytesIO(data), kind) == (97, 61)  # type: ignore[arg-type]


def test_webp_with_alpha_uses_the_extended_header() -> None:
    image = gradient("RGBA", (300, 20))
    image.putalpha(Image.linear_gradient("L").resize((300, 20)))
    data = encoded(image, "WEBP", quality=60)
    assert data[12:16] == b"VP8X"
    assert image_size(io.BytesIO(data), "webp") == (300, 20)


@pytest.mark.parametrize(
    "head",
    [
        b"<!DOCTYPE html><html>",
        b'{"message": "expired"}',
        b"GIF89a\x01\x00",
        b"",
        b"RIFF\0\0\0\0WAVE",
    ],
)
def test_anything_else_is_not_an_image(head: bytes) -> None:
    assert sniff(head[:12]) is None


def test_extensions_are_the_usual_ones() -> None:
    assert EXTENSIONS == {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def test_broken_headers_are_malformed() -> None:
    with pytest.raises(MalformedImageError):
        image_size(io.BytesIO(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDX" + b"\0" * 13), "png")
    with pytest.raises(MalformedImageError):
        image_size(io.BytesIO(b"\xff\xd8\xff\xe0\x00\x10JFIF"), "jpeg")


# --------------------------------------------------------------------------- the text


def test_parameters_read_back_as_automatic1111_reads_them() -> None:
    text = parameters_text(LINE, batch="nightly, products", index=1)
    assert text.splitlines()[0] == LINE.prompt
    prompt, fields = a1111_parse(text)
    assert prompt == LINE.prompt
    assert fields == {
        "Model": "z-image-turbo",
        "Resolution": "640px",
        "Aspect ratio": "16:9",
        "Tool": "general",
        "Image": "2 of 2",
        "Project": "cmx5tfmhdqars6x186ohl7z45",
        "Batch": "nightly, products",  # quoted in the file, because of its comma
        "Item": "5f23e515f81bc5e08802",
    }
    assert 'Batch: "nightly, products"' in text
    assert "Aspect ratio: 16:9," in text


def test_an_unset_resolution_reads_auto() -> None:
    line = ManifestLine(**{**_fields(LINE), "resolution": None})
    assert "Resolution: auto," in parameters_text(line, batch="b", index=0)


def _fields(line: ManifestLine) -> dict[str, object]:
    return {name: getattr(line, name) for name in line.__slots__}  # type: ignore[attr-defined]


def test_itxt_chunk_layout() -> None:
    chunk = itxt_chunk("parameters", "é")
    length, kind = struct.unpack(">I4s", chunk[:8])
    assert kind == b"iTXt"
    assert chunk[8 : 8 + length] == b"parameters\0\0\0\0\0" + "é".encode()
    with pytest.raises(ValueError, match="keyword"):
        itxt_chunk("x" * 80, "")


# --------------------------------------------------------------------------- insertion


def sandbox_png() -> bytes:
    job = ImageJob(
        project_id="cmx5tfmhdqars6x186ohl7z45",
        index=0,
        image_count=2,
        prompt=LINE.prompt,
        model=LINE.model,
        aspect_ratio="16:9",
    )
    return render_png(job)


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(sandbox_png(), id="sandbox-palette"),
        pytest.param(encoded(gradient("RGBA"), "PNG"), id="rgba"),
        pytest.param(encoded(gradient("I;16"), "PNG"), id="16-bit"),
        pytest.param(
            encoded(gradient("RGB", (300, 200)), "PNG", pnginfo=None, compress_level=0), id="rgb"
        ),
    ],
)
def test_insertion_keeps_pixels_and_every_chunk(original: bytes) -> None:
    out = io.BytesIO()
    ours = [itxt_chunk("parameters", "p\nModel: m, A: b, C: d"), itxt_chunk("batcher", '{"k":1}')]
    insert_png_text(io.BytesIO(original), out, ours)
    result = out.getvalue()

    before, after = chunks(original), chunks(result)
    added = [c for c in after if c not in before]
    assert [c for c in after if c not in added] == before  # same chunks, same order, same bytes
    assert [kind for kind, _ in added] == [b"iTXt", b"iTXt"]
    first_idat = next(i for i, (kind, _) in enumerate(after) if kind == b"IDAT")
    assert after[first_idat - 2 : first_idat] == added  # before the pixels, where readers look

    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(result)) as b:
        assert b.info["parameters"] == "p\nModel: m, A: b, C: d"
        assert b.info["batcher"] == '{"k":1}'
        assert (a.mode, a.size) == (b.mode, b.size)
        assert a.tobytes() == b.tobytes()


def test_our_old_chunks_are_replaced_not_repeated() -> None:
    once = io.BytesIO()
    insert_png_text(io.BytesIO(sandbox_png()), once, [itxt_chunk("parameters", "old")])
    twice = io.BytesIO()
    insert_png_text(io.BytesIO(once.getvalue()), twice, [itxt_chunk("parameters", "new")])
    texts = [data for kind, data in chunks(twice.getvalue()) if kind == b"iTXt"]
    assert texts == [b"parameters\0\0\0\0\0new"]


def test_insertion_streams_a_large_png(tmp_path: Path) -> None:
    # 2400 x 2400 noise: about 17 MB that zlib cannot shrink, in many IDAT chunks.
    noise = Image.frombytes("RGB", (2400, 2400), os.urandom(2400 * 2400 * 3))
    big = tmp_path / "big.png"
    noise.save(big, compress_level=1)
    del noise
    assert big.stat().st_size > 15_000_000
    out = tmp_path / "out.png"
    tracemalloc.start()
    try:
        with big.open("rb") as src, out.open("wb") as dst:
            insert_png_text(src, dst, [itxt_chunk("parameters", "x")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"held {peak} bytes"
    assert out.stat().st_size == big.stat().st_size + len(itxt_chunk("parameters", "x"))


def test_a_truncated_png_is_malformed() -> None:
    data = sandbox_png()
    with pytest.raises(MalformedImageError):
        insert_png_text(io.BytesIO(data[: len(data) // 2]), io.BytesIO(), [])


# --------------------------------------------------------------------------- the file


def download(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / ".image.download"
    path.write_bytes(data)
    return path


def test_a_png_gets_its_provenance(tmp_path: Path) -> None:
    original = sandbox_png()
    tmp = download(tmp_path, original)
    saved = finalize_image(tmp, tmp_path / "00001-bike-5f23-2", LINE, batch="demo", index=1)

    path = Path(saved.path)
    assert path == tmp_path / "00001-bike-5f23-2.png"
    assert not tmp.exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    data = path.read_bytes()
    assert saved == ImageFile(str(path), hashlib.sha256(data).hexdigest(), len(data), 512, 288)
    with Image.open(path) as image, Image.open(io.BytesIO(original)) as before:
        assert image.tobytes() == before.tobytes()
        prompt, fields = a1111_parse(image.info["parameters"])
        document = json.loads(image.info["batcher"])
    assert prompt == LINE.prompt
    assert fields["Image"] == "2 of 2"
    assert fields["Batch"] == "demo"
    assert document["key"] == LINE.key
    assert document["vars"] == {"color": "red"}
    assert document["image"] == 2
    assert document["batch"] == "demo"
    assert "files" not in document
    assert document["downloaded"] == {
        "sha256": hashlib.sha256(original).hexdigest(),
        "bytes": len(original),
    }


def test_without_metadata_the_file_is_as_downloaded(tmp_path: Path) -> None:
    original = sandbox_png()
    tmp = download(tmp_path, original)
    saved = finalize_image(tmp, tmp_path / "img", LINE, batch="demo", index=0, metadata=False)
    assert Path(saved.path).read_bytes() == original
    assert saved.sha256 == hashlib.sha256(original).hexdigest()
    assert saved.bytes == len(original)


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_other_images_keep_their_bytes_and_get_their_extension(
    tmp_path: Path, fmt: str, suffix: str
) -> None:
    original = encoded(gradient(), fmt)
    saved = finalize_image(download(tmp_path, original), tmp_path / "img", LINE, batch="b", index=0)
    assert saved.path == str(tmp_path / f"img{suffix}")
    assert Path(saved.path).read_bytes() == original
    assert (saved.width, saved.height, saved.bytes) == (97, 61, len(original))


def test_an_error_page_is_not_an_image(tmp_path: Path) -> None:
    tmp = download(tmp_path, b"<html><body>AccessDenied</body></html>")
    with pytest.raises(NotAnImageError, match="not a PNG, JPEG or WebP"):
        finalize_image(tmp, tmp_path / "img", LINE, batch="b", index=0)
    assert tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [tmp.name]


def test_a_png_with_broken_chunks_is_kept_as_downloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = sandbox_png()
    broken = data[:-12]  # no IEND: the header reads, the chunk stream does not end
    with caplog.at_level(logging.WARNING, "batcher.run.provenance"):
        saved = finalize_image(
            download(tmp_path, broken), tmp_path / "img", LINE, batch="b", index=0
        )
    assert Path(saved.path).read_bytes() == broken
    assert "without provenance" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]


def test_manifest_line_shape() -> None:
    saved = ImageFile("out/a.png", "ab" * 32, 10, 2, 3)
    document = LINE.with_files([saved]).as_json()
    assert list(document) == [
        "key",
        "prompt",
        "model",
        "resolution",
        "aspect_ratio",
        "tool",
        "image_count",
        "vars",
        "project_id",
        "state",
        "credits_charged",
        "credits_refunded",
        "finished_at",
        "files",
        "error",
        "project_name",
        "ordinal",
    ]
    assert document["files"] == [
        {"path": "out/a.png", "sha256": "ab" * 32, "bytes": 10, "width": 2, "height": 3}
    ]
