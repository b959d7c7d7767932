"""Key mapping and output claims: the cases mutation testing found untested (issue 20)."""
import threading

import pytest

from ffleet.keys import OutputClaims, is_folder_marker, output_key


def test_output_key_defaults_add_nothing():
    assert output_key("a/b.wav") == "a/b.wav"
    assert output_key("a/b.wav", extension=".flac") == "a/b.flac"
    assert output_key("b.wav", "out/") == "out/b.wav"


@pytest.mark.parametrize("key,marker", [("folder/", True), ("a/b/", True), ("folder", False), ("a/b.wav", False),
                                        ("", False)])
def test_folder_marker(key, marker):
    assert is_folder_marker(key) is marker


@pytest.fixture
def claims(tmp_path):
    c = OutputClaims(tmp_path / "nested" / "state")  # the folder and its parents are created
    yield c
    c.close()


def test_first_claim_wins_and_later_inputs_learn_the_holder(claims):
    assert claims.claim("out/song.flac", "song.mp3") is None
    assert claims.claim("out/song.flac", "song.wav") == "song.mp3"
    assert claims.claim("out/song.flac", "song.ogg") == "song.mp3"
    assert claims.claim("out/other.flac", "other.wav") is None


def test_an_input_reclaiming_its_own_output_is_no_collision(claims):
    # a retried batch, or a manifest that names the same key twice, claims the same pair again
    assert claims.claim("out/song.flac", "song.mp3") is None
    assert claims.claim("out/song.flac", "song.mp3") is None
    assert claims.claim("out/song.flac", "song.wav") == "song.mp3"
    assert claims.claim("out/song.flac", "song.mp3") is None


def test_claims_live_in_a_file_in_the_folder(tmp_path):
    # on disk, not in memory (3 million keys); a run's folder may already exist
    folder = tmp_path / "state"
    folder.mkdir()
    for _ in range(2):
        c = OutputClaims(folder)
        try:
            assert (folder / "output-claims.sqlite").is_file()
            assert c.claim("out/a.flac", "a.wav") is None
        finally:
            c.close()


def test_claims_from_worker_threads(claims):
    # opened with check_same_thread=False: a claim may come from another thread than the one that opened it
    results = []
    t = threading.Thread(target=lambda: results.append(claims.claim("out/t.flac", "t.wav")))
    t.start()
    t.join()
    assert results == [None]
    assert claims.claim("out/t.flac", "t.mp3") == "t.wav"
