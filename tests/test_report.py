"""Headline results: the text a notebook shows and the JSON the front page is built from."""

from __future__ import annotations

import json
from collections import OrderedDict
from types import MappingProxyType

import pytest

from companion.report import HEADLINE_MIME, Headline, headline

RESULTS = {"Test accuracy": "97.9%", "Weights kept by Han-style pruning": "8.1%"}


def test_headline_text():
    shown = headline("02_hard_pruning", RESULTS)
    assert isinstance(shown, Headline)
    assert repr(shown).splitlines() == [
        "Headline results of 02_hard_pruning:",
        "  Test accuracy                      97.9%",
        "  Weights kept by Han-style pruning  8.1%",
    ]


def test_headline_mime_bundle():
    bundle = headline("02_hard_pruning", RESULTS)._repr_mimebundle_()
    assert set(bundle) == {"text/plain", HEADLINE_MIME}
    assert bundle["text/plain"] == repr(headline("02_hard_pruning", RESULTS))
    assert bundle[HEADLINE_MIME] == {"chapter": "02_hard_pruning", "results": RESULTS}
    # What a notebook stores must survive a JSON round trip unchanged, order included.
    stored = json.loads(json.dumps(bundle[HEADLINE_MIME]))
    assert stored == bundle[HEADLINE_MIME]
    assert list(stored["results"]) == list(RESULTS)


def test_headline_mime_type_is_a_vendor_json_type():
    assert HEADLINE_MIME.startswith("application/vnd.") and HEADLINE_MIME.endswith("+json")


def test_headline_copies_its_results():
    results = {"Test accuracy": "97.9%"}
    shown = headline("01_background", results)
    results["Test accuracy"] = "changed"
    results["new"] = "added"
    assert shown.results == {"Test accuracy": "97.9%"}
    assert shown._repr_mimebundle_()[HEADLINE_MIME]["results"] == {"Test accuracy": "97.9%"}


@pytest.mark.parametrize("mapping", [OrderedDict, MappingProxyType])
def test_headline_accepts_any_mapping(mapping):
    shown = headline("c", mapping(RESULTS))
    assert type(shown.results) is dict and shown.results == RESULTS


def test_headline_keeps_non_ascii_text():
    shown = headline("03_soft", {"Accuracy drop": "−0.1 pp", "Speed-up ×": "2.0"})
    payload = shown._repr_mimebundle_()[HEADLINE_MIME]
    assert payload["results"]["Speed-up ×"] == "2.0"
    assert "−0.1 pp" in repr(shown)


@pytest.mark.parametrize("chapter", ["", None, 2, b"01_background"])
def test_headline_rejects_a_bad_chapter(chapter):
    with pytest.raises(ValueError, match="chapter"):
        headline(chapter, RESULTS)


@pytest.mark.parametrize("results", [{}, None, [("Test accuracy", "97.9%")], "97.9%"])
def test_headline_rejects_bad_results(results):
    with pytest.raises(ValueError, match="results"):
        headline("01_background", results)


@pytest.mark.parametrize(
    "results", [{"Test accuracy": 0.979}, {"Test accuracy": None}, {1: "97.9%"}, {"a": "1", "b": 2}]
)
def test_headline_rejects_values_that_are_not_strings(results):
    with pytest.raises(TypeError, match="format numbers first"):
        headline("01_background", results)
