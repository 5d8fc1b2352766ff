"""Kernels on every tensor of the real SmolLM2 and Gemma-3 files, at every ISA level."""

from __future__ import annotations

import numpy as np
import pytest

import janlib

from quant_data import matmul_error_bound, reference_dequantize

pytestmark = pytest.mark.slow
ISAS = janlib.cpu_features()["available"]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model_file(request):
    path = request.getfixturevalue(f"{request.param}_path")
    with janlib.load_gguf(path) as f:
        yield f


def test_every_tensor(model_file):
    rng = np.random.default_rng(0)
    for name, tensor in model_file.tensors.items():
        raw = np.asarray(tensor.raw).reshape(tensor.shape[0] if len(tensor.shape) == 2 else 1, -1)
        expected = reference_dequantize(raw, tensor.qtype).reshape(tensor.shape)
        results = {}
        for isa in ISAS:
            with janlib.use_isa(isa):
                got = janlib.dequantize(tensor)
                np.testing.assert_allclose(got, expected, rtol=2**-22, atol=2**-22 * np.abs(expected).max(),
                                           err_msg=f"{name} ({tensor.qtype}) at {isa}")
                if len(tensor.shape) == 2:
                    x = rng.standard_normal((2, tensor.shape[1])).astype(np.float32)
                    results[isa] = (x, janlib.matmul(tensor, x))
        for isa, (x, y) in results.items():
            err = np.abs(y - x.astype(np.float64) @ expected.T)
            bound = matmul_error_bound(expected, x.astype(np.float64), tensor.qtype, raw)
            assert np.all(err <= bound), f"{name} ({tensor.qtype}) at {isa}: worst err/bound {np.max(err / bound):.3f}"
