"""Headline results that chapters publish for the book's front page.

A chapter ends with one :func:`headline` call. In the notebook it shows a
small table; in the stored notebook it also leaves a machine-readable copy
(MIME type ``HEADLINE_MIME``) from which the intro page's results table is
generated, so the front page never carries a number typed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["HEADLINE_MIME", "Headline", "headline"]

HEADLINE_MIME = "application/vnd.companion.headline+json"


class Headline:
    """The displayed result of :func:`headline`."""

    def __init__(self, chapter: str, results: dict[str, str]) -> None:
        self.chapter = chapter
        self.results = results

    def __repr__(self) -> str:
        width = max(len(k) for k in self.results)
        lines = [f"Headline results of {self.chapter}:"]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in self.results.items()]
        return "\n".join(lines)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, object]:
        payload = {"chapter": self.chapter, "results": self.results}
        return {"text/plain": repr(self), HEADLINE_MIME: json.loads(json.dumps(payload))}


def headline(chapter: str, results: Mapping[str, str]) -> Headline:
    """Publish a chapter's headline results (display the returned object).

    Args:
        chapter: The notebook's name without extension, e.g. ``"02_hard_pruning"``.
        results: ``{description: formatted value}``, e.g.
            ``{"Weights kept by Han-style pruning": "8.1%"}``; values are
            shown as given, so format them in the notebook.

    Returns:
        A :class:`Headline` that notebooks render as a table.

    Raises:
        ValueError: If ``chapter`` is empty or ``results`` is empty.
        TypeError: If a value is not a string.

    Example:
        >>> headline("01_background", {"Test accuracy": "97.9%"})
        Headline results of 01_background:
          Test accuracy  97.9%
    """
    if not isinstance(chapter, str) or not chapter:
        raise ValueError(f"chapter must be a non-empty string, got {chapter!r}")
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty mapping of {description: value}")
    for key, value in results.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"results must map str to str (format numbers first), got {key!r}: {value!r}"
            )
    return Headline(chapter, dict(results))
