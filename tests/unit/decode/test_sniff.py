"""A decoder refuses a large file that is no image from its first bytes, with the message it gives after
reading the whole file, and still decodes large real images exactly as before (decode/sniff.py)."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest

from octbatch.decode.base import SNIFF_ABOVE, DecodeError, read_bytes
from octbatch.decode.cpu import CpuDecoder, PillowDecoder, decode_image, decode_reference
from octbatch.decode.sniff import HEAD_BYTES, NOT_AN_IMAGE, sniff_image, sniff_pillow
from octbatch.preprocess import Preprocessing

ZEROS = 400 * 1024 * 1024


class CountingZeros(io.RawIOBase):
    """A seekable stream of `size` zero bytes that counts what is read from it (allocates nothing)."""

    def __init__(self, size: int):
        self.size, self.pos, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self.size - self.pos))
        b[:n] = bytes(n)
        self.pos += n
        self.read_bytes += n
        return n


def _spec() -> Preprocessing:
    return Preprocessing(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.25,))


def _noise_jpeg(w: int, h: int) -> bytes:
    import simplejpeg

    rng = np.random.default_rng(0)
    return simplejpeg.encode_jpeg(rng.integers(0, 256, (h, w, 1), np.uint8), quality=100, colorspace="GRAY")


def _zeros_file(tmp_path, size: int = ZEROS):
    p = tmp_path / "zeros.jpeg"
    with open(p, "wb") as f:
        f.truncate(size)  # sparse: no disk, but reading it whole would cost `size` bytes of memory
    return p


@pytest.mark.parametrize("sniff", [sniff_image, sniff_pillow])
def test_a_stream_of_zeros_is_refused_from_its_head(sniff):
    f = CountingZeros(ZEROS)
    with pytest.raises(DecodeError) as exc:
        sniff(io.BufferedReader(f), 64_000_000)
    assert str(exc.value) == "not a recognised image (expected JPEG, PNG or TIFF)" == NOT_AN_IMAGE
    assert f.read_bytes <= HEAD_BYTES + 16 * 1024


@pytest.mark.parametrize("decoder_cls", [CpuDecoder, PillowDecoder])
def test_a_400_mb_zeros_file_is_refused_without_reading_it(tmp_path, decoder_cls):
    path = str(_zeros_file(tmp_path))
    dec = decoder_cls(_spec(), threads=1)
    tracemalloc.start()
    try:
        batch = dec.decode_batch([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        dec.close()
    assert batch.errors == ["not a recognised image (expected JPEG, PNG or TIFF)"]
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes allocated while refusing a file of zeros"


def test_the_refusal_is_the_one_the_full_read_gives(tmp_path):
    small = tmp_path / "small-zeros.jpeg"
    small.write_bytes(bytes(SNIFF_ABOVE))  # not sniffed: read whole, refused by the decoder itself
    dec = CpuDecoder(_spec(), threads=1)
    try:
        whole, sniffed = dec.decode_batch([str(small), str(_zeros_file(tmp_path))]).errors
    finally:
        dec.close()
    assert whole == sniffed == NOT_AN_IMAGE


def test_a_bomb_over_the_sniff_size_is_refused_from_its_header_with_the_decoders_message(tmp_path):
    data = _noise_jpeg(2000, 1000)
    assert len(data) > SNIFF_ABOVE
    p = tmp_path / "big.jpeg"
    p.write_bytes(data)
    with pytest.raises(DecodeError) as full:
        decode_image(data, _spec(), max_pixels=1_000_000)
    for cls in (CpuDecoder, PillowDecoder):
        dec = cls(_spec(), threads=1, max_pixels=1_000_000)
        try:
            assert dec.decode_batch([str(p)]).errors == [str(full.value)]
        finally:
            dec.close()
    assert str(full.value).startswith("image header claims 2000x1000 = 2 MP, over the 1 MP limit")


def test_large_real_images_still_decode_as_before(tmp_path):
    import simplejpeg
    from PIL import Image

    jpeg = _noise_jpeg(2000, 1000)
    # A JPEG whose header runs past the sniffed head (a 65 KB comment before the frame header).
    padded = jpeg[:2] + b"\xff\xfe" + (65533).to_bytes(2, "big") + bytes(65531) + jpeg[2:]
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg_header(padded[:HEAD_BYTES])  # so the sniffer leaves it to the decoder
    tif = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (1000, 1500), np.uint8)).save(tif, format="TIFF")
    files = {"a.jpeg": jpeg, "padded.jpeg": padded, "scan.tif": tif.getvalue()}
    paths = []
    for name, data in files.items():
        assert len(data) > SNIFF_ABOVE
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    for cls, ref in ((CpuDecoder, decode_image), (PillowDecoder, decode_reference)):
        dec = cls(_spec(), threads=1)
        try:
            got = dec.decode_batch(paths)
        finally:
            dec.close()
        assert got.errors == [None, None, None]
        for i, data in enumerate(files.values()):
            img, size = ref(data, _spec())
            assert got.sizes[i] == size
            np.testing.assert_array_equal(got.images[i], img)


def test_read_bytes_without_a_sniffer_reads_whole(tmp_path):
    p = tmp_path / "z.bin"
    p.write_bytes(bytes(SNIFF_ABOVE + 1))
    assert read_bytes(str(p)) == bytes(SNIFF_ABOVE + 1)
    seen = []
    assert read_bytes(str(p), sniff=lambda f: seen.append(f.read(4))) == bytes(SNIFF_ABOVE + 1)
    assert seen == [b"\0\0\0\0"]


def test_dali_triage_refuses_a_zeros_file_without_reading_it(tmp_path):
    pytest.importorskip("nvidia.dali")
    from octbatch.decode.dali import DaliDecoder

    dec = DaliDecoder(_spec(), threads=1, device="cpu", batch_size=2)
    tracemalloc.start()
    try:
        batch = dec.decode_batch([str(_zeros_file(tmp_path))])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        dec.close()
    assert batch.errors == [NOT_AN_IMAGE]
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes allocated while refusing a file of zeros"
