import numpy as np
import pytest

from octbatch.decode import DecodeError
from octbatch.decode.cpu import CpuDecoder, PillowDecoder, decode_image, decode_reference
from octbatch.preprocess import Preprocessing, crop_box, dct_min_size, normalize_into
from tests.helpers.files import DATA_DIR, bomb_jpeg, jpeg_bytes, scan

SPEC = Preprocessing(input_size=(128, 128), mean=(0.2,), std=(0.2,))


def test_crop_box_is_centred_square_of_short_side():
    assert crop_box(512, 496, SPEC) == (8, 0, 504, 496)
    assert crop_box(1536, 496, SPEC) == (520, 0, 1016, 496)
    assert crop_box(512, 512, SPEC) == (0, 0, 512, 512)
    stretch = Preprocessing(input_size=(128, 128), resize="stretch")
    assert crop_box(1536, 496, stretch) == (0, 0, 1536, 496)


def test_dct_min_size_covers_the_crop_at_model_resolution():
    mw, mh = dct_min_size(512, 496, SPEC)
    assert mh >= 128 and mw >= 128 * 512 / 496 - 1


def test_normalize_matches_formula_and_replicates_channels():
    imgs = np.array([[[0, 255], [51, 102]]], np.uint8)
    spec3 = Preprocessing(input_size=(8, 8), channels=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    out = np.empty((4, 3, 2, 2), np.float32)
    x = normalize_into(out, imgs, spec3)
    assert x.shape == (1, 3, 2, 2)
    for c, (m, s) in enumerate(zip(spec3.mean, spec3.std)):
        np.testing.assert_allclose(x[0, c], (imgs[0] / 255.0 - m) / s, rtol=1e-5, atol=1e-5)


def test_decoded_image_has_model_size_and_original_dimensions():
    img, size = decode_image(jpeg_bytes(scan(0, 768, 496)), SPEC)
    assert img.shape == (128, 128) and img.dtype == np.uint8
    assert size == (768, 496)


@pytest.mark.parametrize(
    "data, message",
    [
        (jpeg_bytes(scan(1))[:5000], "truncated"),
        (b"\x00" * 5000, "not a recognised image"),
        (bomb_jpeg(), "decompression bomb"),
        (b"\xff\xd8\xff" + b"\x00" * 100, "JPEG"),
    ],
)
def test_bad_bytes_raise_decode_error_with_useful_message(data, message):
    with pytest.raises(DecodeError, match=message):
        decode_image(data, SPEC)


def test_a_bad_file_never_fails_its_batch(tmp_path):
    good = tmp_path / "good.jpeg"
    good.write_bytes(jpeg_bytes(scan(2)))
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"garbage")
    with CpuDecoder(SPEC, threads=2) as dec:
        b = dec.decode_batch([str(good), str(bad), str(tmp_path / "gone.jpeg"), str(good)])
    assert b.errors[0] is None and b.errors[3] is None
    assert "not a recognised image" in b.errors[1]
    assert "disappeared" in b.errors[2]
    assert b.ok.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(b.images[0], b.images[3])


def test_fast_decoder_matches_pillow_reference_on_synthetic_scans():
    diffs = []
    for seed, w in [(10, 512), (11, 768), (12, 1024), (13, 1536)]:
        data = jpeg_bytes(scan(seed, w, 496))
        a, _ = decode_image(data, SPEC)
        b, _ = decode_reference(data, SPEC)
        diffs.append(np.abs(a.astype(int) - b.astype(int)))
    d = np.stack(diffs)
    # DCT-domain downscaling vs full decode + area resize: small average difference on speckled scans.
    assert d.mean() < 3.0, d.mean()
    assert np.percentile(d, 99.9) < 45


@pytest.mark.data
def test_fast_decoder_matches_pillow_reference_on_real_scans():
    files = sorted(DATA_DIR.glob("*/*.jpeg"))[::40]
    a = CpuDecoder(SPEC).decode_batch([str(f) for f in files])
    b = PillowDecoder(SPEC).decode_batch([str(f) for f in files])
    assert all(e is None for e in a.errors + b.errors)
    d = np.abs(a.images.astype(int) - b.images.astype(int))
    assert d.mean() < 3.0, d.mean()
    assert np.percentile(d, 99.9) < 45
