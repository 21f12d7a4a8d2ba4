"""The decoder contracts: which decoders the worker may ask for a device batch (DeviceDecoder)."""

from __future__ import annotations

import pytest

from octbatch.decode import DeviceDecoder, decoder_device
from octbatch.decode.cpu import CpuDecoder, PillowDecoder
from octbatch.preprocess import Preprocessing


class _FakeDevice:
    name = "fake"
    spec = Preprocessing()
    device = "gpu"

    def decode_batch(self, paths):
        raise NotImplementedError

    def decode_batch_device(self, paths):
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_a_device_decoder_says_where_it_decodes():
    assert isinstance(_FakeDevice(), DeviceDecoder)
    assert decoder_device(_FakeDevice()) == "gpu"


def test_host_decoders_decode_on_the_cpu():
    for cls in (CpuDecoder, PillowDecoder):
        dec = cls(Preprocessing(), threads=1)
        try:
            assert not isinstance(dec, DeviceDecoder)
            assert decoder_device(dec) == "cpu"
        finally:
            dec.close()


def test_the_dali_decoder_is_a_device_decoder():
    pytest.importorskip("nvidia.dali")
    from octbatch.decode.dali import DaliDecoder

    dec = DaliDecoder(Preprocessing(input_size=(32, 32)), threads=1, device="cpu", batch_size=2)
    try:
        assert isinstance(dec, DeviceDecoder)
        assert decoder_device(dec) == "cpu"
    finally:
        dec.close()
