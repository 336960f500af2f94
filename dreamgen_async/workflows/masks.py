"""Inpainting masks checked and made ready to upload, before anything is sent. Pure, no I/O.

Two conventions, both ComfyUI's:

* **a mask file**: white = repaint, black = keep, greys = partly (any size: it is resized to
  the image's, with a :class:`MaskAspectWarning` when the shapes differ). A transparent
  pixel of a mask file counts as black. :func:`prepare_mask` returns a greyscale PNG at the
  image's size, to upload as an ordinary image (``/upload/image``) and load with
  ``LoadImageMask(channel="red")``;
* **the image's own alpha channel**: transparent = repaint (``LoadImage``'s MASK output is
  ``1 - alpha``; ComfyUI's ``/upload/mask`` writes a mask into an image's alpha the same
  way). :func:`alpha_mask` checks that the image has one and that it masks something.

A mask that is not an image, or that masks nothing, raises :class:`MaskError`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from dreamgen_async.errors import MaskError

__all__ = ["MaskAspectWarning", "MaskError", "PreparedMask", "alpha_mask", "prepare_mask"]

#: Relative difference of width/height ratios above which a resize distorts the mask.
ASPECT_TOLERANCE = 0.01


class MaskAspectWarning(UserWarning):
    """The mask's shape differs from the image's: it was stretched to the image's size."""


@dataclass(frozen=True, slots=True)
class PreparedMask:
    """A mask ready for the server.

    Attributes:
        data: PNG bytes (greyscale, white = repaint) at the image's size; empty for an
            alpha mask, which travels inside the image itself.
        size: The image's (width, height).
        coverage: The fraction of the image to repaint, counting partial pixels partly.
        resized: Whether the mask file had another size than the image.
    """

    data: bytes
    size: tuple[int, int]
    coverage: float
    resized: bool = False


def _open(data: bytes, source: str, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return ImageOps.exif_transpose(img)  # upright, as ComfyUI's loaders see it
    except UnidentifiedImageError as exc:  # its message names a BytesIO object: not useful
        raise MaskError(
            f"{what} {source} is not an image (not PNG, JPEG, WEBP or another known format)",
            source=source,
        ) from exc
    except (OSError, ValueError) as exc:
        raise MaskError(f"{what} {source} is not an image ({exc})", source=source) from exc


def _coverage(mask: Image.Image) -> float:
    histogram = mask.histogram()
    total = sum(histogram)
    return sum(value * count for value, count in enumerate(histogram)) / (255 * total)


def prepare_mask(
    mask: bytes, image_size: tuple[int, int], *, source: str = "<bytes>"
) -> PreparedMask:
    """Check a mask file and return it as a greyscale PNG at the image's size.

    Args:
        mask: The mask file's bytes (PNG, JPEG, WebP...): white = repaint, black = keep.
        image_size: The (width, height) of the image it masks, upright (EXIF orientation
            applied, as ``LoadImage`` does) and after any downscaling before upload.
        source: The mask's path, for messages.

    Returns:
        The PNG to upload, its size and coverage.

    Raises:
        MaskError: The bytes are not an image, or the mask is black everywhere (nothing to
            repaint).

    Warns:
        MaskAspectWarning: The mask's width/height ratio differs from the image's (more
            than 1%); it is stretched to the image's size anyway.
    """
    img = _open(mask, source, "the mask")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    grey = img.convert("L")
    if grey.getextrema()[1] == 0:
        raise MaskError(
            f"the mask {source} is black everywhere: nothing to repaint (white = repaint, "
            "black = keep)",
            source=source,
        )
    width, height = image_size
    resized = grey.size != (width, height)
    if resized:
        ratio, wanted = grey.width / grey.height, width / height
        if abs(ratio - wanted) / wanted > ASPECT_TOLERANCE:
            warnings.warn(
                MaskAspectWarning(
                    f"the mask {source} is {grey.width}x{grey.height} but the image is "
                    f"{width}x{height}: its shape differs, it is stretched to fit"
                ),
                stacklevel=2,
            )
        grey = grey.resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    grey.save(buf, format="PNG", compress_level=1)
    return PreparedMask(buf.getvalue(), (width, height), _coverage(grey), resized)


def alpha_mask(image: bytes, *, source: str = "<bytes>") -> PreparedMask:
    """Check that an image's own alpha channel masks something (transparent = repaint).

    Returns:
        A :class:`PreparedMask` with empty ``data`` (upload the image itself, unchanged:
        ``LoadImage`` reads the mask from its alpha).

    Raises:
        MaskError: Not an image, no alpha channel, or fully opaque (nothing to repaint).
    """
    img = _open(image, source, "the image")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        raise MaskError(
            f"the image {source} has no alpha channel to use as a mask; give a mask file "
            "(white = repaint) or make the area to repaint transparent",
            source=source,
        )
    alpha = img.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:
        raise MaskError(
            f"the image {source} is opaque everywhere: its alpha masks nothing to repaint "
            "(transparent = repaint)",
            source=source,
        )
    repaint = alpha.point(lambda a: 255 - a)
    return PreparedMask(b"", img.size, _coverage(repaint))
