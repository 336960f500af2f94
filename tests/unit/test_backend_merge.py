"""The pure part of backend.py: a pool's object_info is the union of its servers'."""

from __future__ import annotations

from dreamgen_async.backend import merge_object_info


def test_merge_object_info_unions_the_combos() -> None:
    a = {"L": {"input": {"required": {"ckpt": [["x", "y"], {}]}}}, "OnlyA": {"input": {}}}
    b = {
        "L": {"input": {"required": {"ckpt": [["y", "z"], {}]}}},
        "M": {"input": {"required": {"m": ["COMBO", {"options": ["p"]}]}}},
    }
    c = {"M": {"input": {"required": {"m": ["COMBO", {"options": ["q", "p"]}]}}}}
    merged = merge_object_info({"a": a, "b": b, "c": c})
    assert merged["L"]["input"]["required"]["ckpt"][0] == ["x", "y", "z"]
    assert merged["M"]["input"]["required"]["m"][1]["options"] == ["p", "q"]
    assert set(merged) == {"L", "OnlyA", "M"}


def test_merge_object_info_of_one_server_is_that_server_s() -> None:
    info = {"L": {"input": {"required": {"ckpt": [["x"], {}]}}, "output": ["MODEL"]}}
    assert merge_object_info({"a": info}) == info
