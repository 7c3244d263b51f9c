"""The JSON of ``/api/explain``: arrays written by orjson read back as the very same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("orjson")

from convlens.web.app import array_json, json_bytes  # noqa: E402


def test_float32_reads_back_bit_for_bit_and_shorter_than_float64_text():
    values = np.random.default_rng(0).random((3, 40, 40), dtype=np.float32) * np.float32(1e-3)
    text = json_bytes({"cam": array_json(values)})
    read = json.loads(text)["cam"]
    assert read["shape"] == [3, 40, 40] and read["dtype"] == "float32"
    np.testing.assert_array_equal(np.array(read["data"], dtype=np.float32), values)
    # float64's repr of the same values (what json.dumps(values.tolist()) writes) is about twice as long
    assert len(text) < 0.7 * len(json.dumps(values.tolist()))


def test_other_arrays_and_summaries():
    content = {"int": array_json(np.arange(6, dtype=np.int64).reshape(2, 3)),
               "strided": array_json(np.arange(12.0).reshape(3, 4)[:, ::2]),
               "half": array_json(np.array([0.5, 2.0], dtype=np.float16)),
               "flags": array_json(np.array([True, False])),
               "summary": {"path": Path("a/b.png"), "score": np.float32(0.25), "top": (1, 2), 3: "three",
                           "missing": float("nan")}}
    read = json.loads(json_bytes(content))
    assert read["int"]["data"] == [[0, 1, 2], [3, 4, 5]]
    assert read["strided"]["data"] == [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]
    assert read["half"]["data"] == [0.5, 2.0] and read["flags"]["data"] == [True, False]
    assert read["summary"] == {"path": "a/b.png", "score": 0.25, "top": [1, 2], "3": "three", "missing": None}
