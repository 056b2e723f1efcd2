"""Images of a figure source: checked (present, decodable) and put into ``<dst>/figures/images/``."""

from __future__ import annotations

from pathlib import Path

from medvlp.data.ingest.output_files import IMAGE_MODES, place_file
from medvlp.data.ingest.skip_log import Skip
from medvlp.data.io import read_image

__all__ = ["FigureImages"]


class FigureImages:
    """Checks source images and places them in the output collection.

    Args:
        collection: the output ``figures`` folder.
        mode: ``copy`` / ``symlink`` / ``hardlink``.
        check: decode each image completely (:func:`medvlp.data.io.read_image`) so an unreadable one is
            skipped here; False leaves that to curation (faster on millions of images).
    """

    def __init__(self, collection: Path, mode: str = "copy", check: bool = True):
        if mode not in IMAGE_MODES:
            raise ValueError(f"images mode {mode!r}: use one of {IMAGE_MODES}")
        self.collection, self.mode, self.check = collection, mode, check

    def verify(self, source: Path, shown: str) -> None:
        """Raise :class:`Skip` when ``source`` is missing (``missing_file``) or does not decode
        (``unreadable_image``); ``shown`` is how the record names it."""
        if not source.is_file():
            raise Skip("missing_file", f"image {shown!r} not found (looked for {str(source)!r})")
        if self.check:
            try:
                read_image(source)
            except Exception as e:  # any decoder failure means the same here
                raise Skip("unreadable_image", f"image {shown!r} does not decode ({type(e).__name__}: {e})") from None

    def place(self, source: Path, rel: str) -> str:
        """Put ``source`` at ``images/<rel>`` of the collection; returns that manifest path."""
        out = f"images/{rel}"
        place_file(source, self.collection / out, self.mode)
        return out
