"""Named classical filters of image processing, usable as a spec's `weights`.

Each is a 3x3 cross-correlation kernel (no flip), as the seed documents give
them. A spec that names one uses it for every (output, input) channel pair.
"""

FILTERS: dict[str, tuple[tuple[float, ...], ...]] = {
    "identity": ((0, 0, 0), (0, 1, 0), (0, 0, 0)),
    "sobel_x": ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1)),
    "sobel_y": ((-1, -2, -1), (0, 0, 0), (1, 2, 1)),
    "laplacian": ((-1, -1, -1), (-1, 8, -1), (-1, -1, -1)),
    "sharpen": ((0, -1, 0), (-1, 5, -1), (0, -1, 0)),
    "blur": ((1 / 9,) * 3,) * 3,
    "emboss": ((-2, -1, 0), (-1, 1, 1), (0, 1, 2)),
    "vertical": ((1, 0, -1), (1, 0, -1), (1, 0, -1)),
    "horizontal": ((1, 1, 1), (0, 0, 0), (-1, -1, -1)),
}
