import pytest

from exporter.core.errors import ImageSizeError, PatchSizeError
from exporter.core.sizes import format_size, grid_for, nearest_multiple, to_size2, valid_patch_sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (16, (16, 16)),
        ("16", (16, 16)),
        ("10x15", (10, 15)),
        ((10, 15), (10, 15)),
        ([8], (8, 8)),
        ("10X15", (10, 15)),
    ],
)
def test_to_size2_accepts_ints_and_hxw(value, expected):
    assert to_size2(value) == expected


@pytest.mark.parametrize("value", [0, -3, "0", "abc", "1.5", 2.5, "10x", "x10", "1x2x3", True, (1, 2, 3), "10x-2"])
def test_to_size2_rejects_non_positive_and_non_integers(value):
    with pytest.raises(PatchSizeError, match="patch size"):
        to_size2(value)


def test_grid_and_divisibility_error_suggests_sizes():
    assert grid_for((240, 240), (16, 16)) == (15, 15)
    with pytest.raises(ImageSizeError) as info:
        grid_for((240, 240), (32, 32))
    message = str(info.value)
    assert "patch sizes that fit 240" in message and "16, 20, 24, 30" in message
    assert "224 or 256" in message and "img_size auto" in message


def test_patch_larger_than_image():
    with pytest.raises(PatchSizeError, match="larger than the image"):
        grid_for((64, 64), (128, 128))


def test_nearest_multiple_and_helpers():
    assert nearest_multiple(240, 32) == 256  # tie between 224 and 256 goes up
    assert nearest_multiple(240, 7) == 238
    assert nearest_multiple(3, 8) == 8
    assert valid_patch_sizes(64) == [4, 8, 16, 32]
    assert format_size((16, 16)) == "16" and format_size((10, 15)) == "10x15"
