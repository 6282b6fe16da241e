"""The picture formats the project reads, in one table: folder data sets, `mnist-predict` and `mnist-serve`.

A picture is recognised by its bytes (Pillow's format sniffing, limited to these formats), never by its
name; the name's suffix only decides which files of a directory are pictures, so a directory given to
`mnist-predict` stands for the same files a folder data set's class folder would be searched for.
"""

from __future__ import annotations

# Pillow's format name -> the file name suffixes that announce it (lower case).
PICTURE_FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
    "WEBP": (".webp",),
}
FORMATS: tuple[str, ...] = tuple(PICTURE_FORMATS)
SUFFIXES: tuple[str, ...] = tuple(s for suffixes in PICTURE_FORMATS.values() for s in suffixes)
# For messages: "PNG, JPEG, BMP, TIFF, GIF or WEBP".
FORMAT_NAMES = ", ".join(FORMATS[:-1]) + f" or {FORMATS[-1]}"


def is_hidden(name: str) -> bool:
    """Names starting with a dot (`.DS_Store`, `.git`) are not data, as `ls` passes them over."""
    return name.startswith(".")


def is_picture_name(name: str) -> bool:
    """Whether a file in a directory of pictures is one: not hidden, and a suffix of a known format."""
    return not is_hidden(name) and name.lower().endswith(SUFFIXES)
