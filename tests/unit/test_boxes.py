"""Box conversions to the Qwen2-VL [0, 1000) grid: rounding at the edge clamped, everything else (swapped corners,
zero or negative size, boxes outside the image or past [0, 1]) refused, never invented; floats vs ints, COCO / VOC /
YOLO, Qwen-VL tags, mask bounding boxes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aloevision.sources.boxes import (
    BoxError,
    coco_box,
    format_box,
    from_pixels,
    from_unit,
    grid_box,
    llava_to_qwen2vl,
    mask_bbox,
    parse_qwen2vl_boxes,
    qwenvl_box_values,
    qwenvl_to_qwen2vl,
    voc_box,
    yolo_box,
)


def valid(b):
    x1, y1, x2, y2 = b
    return all(isinstance(v, int) for v in b) and 0 <= x1 < x2 <= 999 and 0 <= y1 < y2 <= 999


def test_grid_box_clamps_1000_to_999_and_keeps_order():
    assert grid_box(0, 0, 1000, 1000) == (0, 0, 999, 999)
    assert grid_box(10.4, 10.6, 20.5, 30.49) == (10, 11, 20, 30)


@pytest.mark.parametrize("box", [
    (500, 600, 100, 200),  # swapped corners: negative width and height
    (100, 200, 50, 300),  # negative width only
    (5, 5, 5, 5),  # zero area
    (999, 999, 999, 999),
    (1000, 0, 1000, 10),  # zero width at the border
])
def test_inverted_and_zero_size_boxes_are_refused(box):
    with pytest.raises(BoxError):
        grid_box(*box)
    with pytest.raises(BoxError):
        from_pixels(80, 90, 20, 10, 100, 100)


@pytest.mark.parametrize("box,expected", [
    ((0, 0, 0.2, 0.3), (0, 0, 1, 1)),  # a real extent below one grid step: rounding, one step
    ((998.7, 10, 999.2, 20), (998, 10, 999, 20)),  # at the border: widened inwards
])
def test_sub_step_boxes_round_to_one_step(box, expected):
    assert grid_box(*box) == expected and valid(expected)


@pytest.mark.parametrize("box", [(-5, 0, 10, 10), (0, 0, 1001, 10), (float("nan"), 0, 1, 1), (0, 0, float("inf"), 1)])
def test_off_grid_values_raise(box):
    with pytest.raises(BoxError):
        grid_box(*box)


def test_pixels_to_grid_and_pixel_clamping():
    assert from_pixels(0, 0, 640, 480, 640, 480) == (0, 0, 999, 999)
    assert from_pixels(-1, -0.5, 641, 480.7, 640, 480) == (0, 0, 999, 999)  # 1-px rounding at the edge: clamped
    assert from_pixels(1, 1, 2, 2, 4000, 3000) == (0, 0, 1, 1)  # tiny box on a large image stays non-degenerate
    for bad in [(-3, -1, 700, 500), (650, 10, 700, 50), (10, 490, 50, 600), (-50, -50, -10, -10)]:
        with pytest.raises(BoxError):  # spilling far outside, or wholly outside: never clamped into a sliver
            from_pixels(*bad, 640, 480)
    with pytest.raises(BoxError):
        from_pixels(0, 0, 1, 1, 0, 100)


def test_coco_voc_yolo_agree():
    # One box, x 40..120, y 20..120 on a 400 x 200 image.
    expected = (100, 100, 300, 600)
    assert coco_box([40, 20, 80, 100], 400, 200) == expected
    assert voc_box(40, 20, 120, 120, 400, 200) == expected
    assert yolo_box(0.2, 0.35, 0.2, 0.5) == expected
    with pytest.raises(BoxError):
        coco_box([1, 2, 3], 10, 10)
    with pytest.raises(BoxError):
        yolo_box(0.5, 0.5, -0.1, 0.2)


def test_yolo_box_sticking_out_is_refused_rounding_is_clamped():
    with pytest.raises(BoxError):
        yolo_box(0.95, 0.05, 0.2, 0.2)
    assert yolo_box(0.9002, 0.1, 0.2, 0.2) == (800, 0, 999, 200)  # 0.0002 past the edge: rounding


def test_unit_floats():
    assert from_unit(0.5439, 0.0557, 0.7109, 0.2549) == (544, 56, 711, 255)
    assert from_unit(0, 0, 1, 1) == (0, 0, 999, 999)
    assert from_unit(0, 0, 1.0004, 1) == (0, 0, 999, 999)  # within half a grid step: rounding
    for bad in [(0, 0, 1.2, 1), (0, 0, 1.01, 1), (0.5, 0.5, 0.2, 0.9), (-0.01, 0, 0.5, 0.5)]:
        with pytest.raises(BoxError):
            from_unit(*bad)


@pytest.mark.parametrize("raw,expected", [
    (("587", "126", "789", "217"), (587, 126, 789, 217)),  # Qwen-VL ints: the 0-1000 grid
    (("0.5439", "0.0557", "0.7109", "0.2549"), (544, 56, 711, 255)),  # 0-1 floats
    (("0", "0", "1", "1"), (0, 0, 1, 1)),  # ints never rescaled, even when <= 1
    (("12.5", "30.0", "400.7", "999.9"), (12, 30, 401, 999)),  # floats above 1: grid values
])
def test_qwenvl_scale_detection(raw, expected):
    assert qwenvl_box_values(raw) == expected


@pytest.mark.parametrize("raw", [
    ("0.5", "0.5", "1.02", "0.9"),  # a normalised box slightly past 1: not a speck in the grid's corner
    ("1.0", "0.5", "0.25", "0.0"),  # swapped normalised corners
    ("700", "100", "300", "400"),  # swapped grid corners
])
def test_qwenvl_bad_boxes_raise(raw):
    with pytest.raises(BoxError):
        qwenvl_box_values(raw)


def test_qwenvl_tags_to_qwen2vl_tokens():
    text = "<ref>the liver</ref><box>(587,126),(789,217)</box> and <ref>a cyst</ref><box>( 0.1 , 0.2 ),( 0.3,0.4 )</box>"
    out, n = qwenvl_to_qwen2vl(text)
    assert n == 2
    assert out == ("<|object_ref_start|>the liver<|object_ref_end|><|box_start|>(587,126),(789,217)<|box_end|> and "
                   "<|object_ref_start|>a cyst<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>")
    assert parse_qwen2vl_boxes(out) == [(587, 126, 789, 217), (100, 200, 300, 400)]
    with pytest.raises(BoxError):
        qwenvl_to_qwen2vl("<box>(1,2),(3)</box>")
    with pytest.raises(BoxError):
        qwenvl_to_qwen2vl("<box>(1,2),(3,4000)</box>")
    assert qwenvl_to_qwen2vl("no boxes here") == ("no boxes here", 0)


def test_llava_boxes():
    out, n = llava_to_qwen2vl("dog at [0.1, 0.2, 0.55, 0.9] and list [1, 2, 3, 4]")
    assert n == 1 and out == "dog at <|box_start|>(100,200),(550,900)<|box_end|> and list [1, 2, 3, 4]"


def test_format_box():
    assert format_box((1, 2, 3, 4)) == "<|box_start|>(1,2),(3,4)<|box_end|>"


def test_mask_bbox_tight_and_exclusive():
    m = np.zeros((100, 200), dtype=np.uint8)
    m[10:50, 20:60] = 255
    assert mask_bbox(m) == (20, 10, 60, 50)
    assert from_pixels(*mask_bbox(m), 200, 100) == (100, 100, 300, 500)
    assert mask_bbox(np.zeros((5, 5))) is None


def test_mask_bbox_single_pixel_modes_and_channels():
    m = Image.new("L", (1000, 1000), 0)
    m.putpixel((999, 999), 1)
    box = mask_bbox(m)
    assert box == (999, 999, 1000, 1000)
    assert from_pixels(*box, 1000, 1000) == (998, 998, 999, 999)  # collapses at the border -> widened inwards
    rgb = np.zeros((10, 10, 3), dtype=np.uint8)
    rgb[2:4, 5:7, 1] = 9  # foreground only in one channel
    assert mask_bbox(rgb) == (5, 2, 7, 4)
    p = Image.new("P", (8, 8), 0)
    p.putpixel((3, 4), 2)
    assert mask_bbox(p) == (3, 4, 4, 5)
    i16 = Image.new("I;16", (8, 8), 0)
    i16.putpixel((1, 1), 300)
    assert mask_bbox(i16) == (1, 1, 2, 2)
