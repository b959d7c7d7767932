"""The run's inputs held on disk (OutputClaims.hold_inputs, is_input): an output key that is an input's."""
import pytest

from ffleet.keys import OutputClaims
from ffleet.storage import ListedObject


@pytest.fixture
def claims(tmp_path):
    c = OutputClaims(tmp_path / "state")
    yield c
    c.close()


def test_inputs_come_back_in_listing_order_with_their_sizes(claims):
    # not sorted: the worker claims outputs in listing order, so the first listed input keeps its output
    items = [ListedObject("b/song.wav", 10), ListedObject("a/song.wav", 20), ListedObject("c.wav", None),
             ListedObject("a/song.wav", 30)]
    assert list(claims.hold_inputs(items)) == items


def test_every_input_is_known_before_the_first_is_yielded(claims):
    held = claims.hold_inputs(iter([ListedObject("one.wav", 1), ListedObject("two.wav", 2)]))
    assert next(held) == ListedObject("one.wav", 1)
    # the second input's key is known while the first is being processed: a first output named
    # two.wav would overwrite an input that has not been converted yet
    assert claims.is_input("two.wav") and claims.is_input("one.wav")
    assert not claims.is_input("three.wav")
    assert not claims.is_input("one.flac")
    assert list(held) == [ListedObject("two.wav", 2)]


def test_no_key_is_an_input_before_the_inputs_are_held(claims):
    # a run whose outputs go to another bucket never holds its inputs: is_input must answer, not fail
    assert claims.is_input("one.wav") is False
    assert list(claims.hold_inputs([ListedObject("one.wav", 1)])) == [ListedObject("one.wav", 1)]
    assert claims.is_input("one.wav") is True
    assert claims.is_input("ONE.wav") is False  # S3 keys are case-sensitive


def test_an_empty_run_holds_nothing(claims):
    assert list(claims.hold_inputs([])) == []
    assert claims.is_input("") is False


def test_inputs_and_claims_share_the_file_without_mixing(claims):
    # an output claimed by an input is not thereby an input, and an input key is not a claimed output
    assert list(claims.hold_inputs([ListedObject("a.wav", 1)])) == [ListedObject("a.wav", 1)]
    assert claims.claim("a.flac", "a.wav") is None
    assert claims.is_input("a.flac") is False
    assert claims.claim("a.wav", "b.wav") is None
