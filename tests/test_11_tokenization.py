"""Tokenizers: round trips over random Unicode, incremental training against the recount reference, save/load, errors."""
import json
import os
from collections import Counter
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from tinytorch.text.tokenization import (SHAKESPEARE_VAL_START, BPETokenizer, CharTokenizer, bpe_merges,
                                         bpe_merges_naive, load_shakespeare, merge, pretokenize)

HYPOTHESIS = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])  # applied to this file's property tests by conftest.py

EOT = "<|endoftext|>"
# Any Unicode text (hypothesis leaves out lone surrogates, which UTF-8 cannot encode), and text drawn mostly from the
# astral planes (4-byte UTF-8), and text with the special token in it.
astral = st.text(st.characters(min_codepoint=0x10000), max_size=20)
any_text = st.one_of(st.text(max_size=200), astral, st.lists(st.sampled_from(["a", "é", "\U0001D11E", " ", "\n"])).map("".join))
with_special = st.lists(st.one_of(st.text(max_size=30), st.just(EOT), st.just("<|end"), st.just("|>"))).map("".join)


@lru_cache(maxsize=None)
def shakespeare_tokenizer() -> BPETokenizer:
    "A tokenizer trained once on 200,000 characters of the training works, 512 ids."
    return BPETokenizer().train(load_shakespeare("train")[:200_000], 512)


# Corpus

def test_corpus_split_and_checksum(tmp_path):
    text, train, val = load_shakespeare("all"), load_shakespeare("train"), load_shakespeare("val")
    assert train + val == text and len(train) == SHAKESPEARE_VAL_START
    assert val.startswith("MACBETH\n") and train.endswith("\n\n\n")
    assert 0.09 < len(val) / len(text) < 0.12                        # about a tenth held out
    assert text.isascii() and "\r" not in text
    assert all(line == line.rstrip() for line in text.splitlines())  # no trailing whitespace
    for title in ("THE TEMPEST", "TWELFTH NIGHT", "THE SONNETS", "THE TRAGEDY OF KING RICHARD THE SECOND"):
        assert f"\n{title}" in val and f"\n{title}\n" not in train
    data = (tmp_path / "x.gz")
    data.write_bytes(b"\x1f\x8b not the corpus")
    with pytest.raises(ValueError, match="x.gz has SHA-256 .* expected 7425d935"):
        load_shakespeare("all", path=data)
    with pytest.raises(FileNotFoundError, match="no corpus file at .*absent.gz"):
        load_shakespeare("all", path=tmp_path / "absent.gz")
    with pytest.raises(ValueError, match="got 'validation'"):
        load_shakespeare("validation")


# Character tokenizer

@given(st.data())
def test_char_round_trip_over_its_alphabet(data):
    source = data.draw(st.text(min_size=1, max_size=50))
    tok = CharTokenizer(source)
    text = data.draw(st.text(alphabet=sorted(set(source)), max_size=200))
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(source))


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=5), st.integers(0, 30))
def test_char_unknown_character_names_it_and_its_position(source, extra, at):
    tok = CharTokenizer(source)
    unknown = [c for c in extra if c not in tok.stoi]
    assume(unknown)
    prefix = source[:at]
    text = prefix + extra
    pos = len(prefix) + extra.index(unknown[0])
    with pytest.raises(ValueError, match=f"character .* \\(U\\+{ord(unknown[0]):04X}\\) at position {pos} "):
        tok.encode(text)


def test_char_decode_out_of_range():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="id 3 at position 2 is outside the vocabulary 0..2"):
        tok.decode([0, 1, 3])


# Pre-tokenisation and the merge step

@given(any_text)
def test_pretokenize_covers_every_character(text):
    assert "".join(pretokenize(text)) == text


@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 3), st.integers(0, 3))
def test_merge_replaces_non_overlapping_pairs_left_to_right(ids, a, b):
    out = merge(ids, (a, b), 99)
    expanded = [t for i in out for t in ((a, b) if i == 99 else (i,))]
    assert expanded == ids                                          # merging loses and invents nothing
    assert all(p != (a, b) for p in zip(out, out[1:]) if 99 not in p)  # no pair left unmerged
    assert out.count(99) == len(ids) - len(out)


# Training

@given(st.dictionaries(st.text(st.sampled_from("abcé "), min_size=1, max_size=12), st.integers(1, 20), max_size=12),
       st.integers(0, 40))
def test_incremental_training_equals_the_recount_reference(chunks, num_merges):
    assert bpe_merges(chunks, num_merges) == bpe_merges_naive(chunks, num_merges)


def test_incremental_equals_reference_on_the_corpus():
    chunks = Counter(pretokenize(load_shakespeare("val")[:30_000]))
    assert bpe_merges(chunks, 400) == bpe_merges_naive(chunks, 400)


def test_hand_worked_example():
    # "aaabdaaabac": aa occurs 4 times -> 256; (256, a) and (a, b) twice each, the smaller pair (97, 98) -> 257;
    # (256, 257) = "aaab" twice -> 258; then all pairs once, the smallest (97, 99) "ac" -> 259.
    tok = BPETokenizer(special_tokens=[]).train("aaabdaaabac", 260)
    assert tok.merges == [(97, 97), (97, 98), (256, 257), (97, 99)]
    assert [tok.vocab[i] for i in range(256, 260)] == [b"aa", b"ab", b"aaab", b"ac"]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 259]
    assert tok.encode("aaab aaab") == [258, 32, 258]   # " aaab" is its own chunk: its space stays a byte here


def test_training_is_deterministic_and_greedy():
    text = load_shakespeare("train")[:100_000]
    a, b = BPETokenizer().train(text, 700), BPETokenizer().train(text, 700)
    assert a.merges == b.merges and len(a.merges) == 700 - 257
    assert BPETokenizer().train(text, 500).merges == a.merges[:500 - 257]   # a smaller vocabulary is a prefix


def test_merges_stay_inside_chunks_and_never_touch_special_tokens():
    tok = BPETokenizer().train(("hello world<|endoftext|>" * 50) + "the end.", 400)
    tokens = [tok.vocab[i] for i in range(256, 256 + len(tok.merges))]
    assert not any(b"<" in t or b"|" in t for t in tokens)           # the special token was not trained on
    assert not any(b" " in t[1:] for t in tokens)                     # a space only ever leads a chunk
    assert not any(t.endswith(b".") and len(t) > 1 for t in tokens)   # punctuation is not glued to words
    eot = tok.special_ids[EOT]
    assert tok.encode("hello" + EOT + "world") == tok.encode("hello") + [eot] + tok.encode("world")


def test_small_text_gives_a_smaller_vocabulary():
    tok = BPETokenizer().train("ab ab", 1000)
    assert tok.merges == [(97, 98), (32, 256)] and tok.vocab_size == 256 + 2 + 1


def test_vocab_size_below_the_base_is_refused():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257 .* got 200"):
        BPETokenizer().train("abc", 200)
    with pytest.raises(ValueError, match=">= 256 .* got 255"):
        BPETokenizer(special_tokens=[]).train("abc", 255)
    with pytest.raises(ValueError, match="got 300.0"):
        BPETokenizer().train("abc", 300.0)


# Encoding and decoding

@given(any_text)
def test_bpe_round_trip_any_unicode(text):
    tok = shakespeare_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert len(ids) <= len(text.encode("utf-8"))                      # merges only ever shorten


@given(with_special)
def test_bpe_round_trip_with_special_tokens(text):
    tok = shakespeare_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.count(tok.special_ids[EOT]) == text.count(EOT)


@settings(max_examples=25)
@given(st.text(max_size=300), any_text)
def test_a_tokenizer_trained_on_random_text_round_trips(train, text):
    tok = BPETokenizer().train(train, 300)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(train)) == train


def test_encode_matches_training_on_the_corpus():
    tok = shakespeare_tokenizer()
    text = load_shakespeare("train")[:100_000]
    words = {c: list(c.encode()) for c in set(pretokenize(text))}
    for i, p in enumerate(tok.merges): words = {c: merge(ids, p, 256 + i) for c, ids in words.items()}
    assert tok.encode(text) == [t for c in pretokenize(text) for t in words[c]]


def test_decode_errors_and_partial_characters():
    tok = shakespeare_tokenizer()
    with pytest.raises(ValueError, match="id 512 at position 1 is outside the vocabulary 0..511"):
        tok.decode([10, 512])
    with pytest.raises(ValueError, match="id -1 at position 0"):
        tok.decode([-1])
    assert tok.decode(list("\U0001D11E".encode())[:3]) == "\ufffd"


# Saving and loading

@given(with_special)
def test_save_load_gives_identical_encodings(tmp_path_factory, text):
    tok = shakespeare_tokenizer()
    path = tok.save(tmp_path_factory.mktemp("tok") / "bpe.json")
    loaded = BPETokenizer.load(path)
    assert loaded.merges == tok.merges and loaded.special_ids == tok.special_ids and loaded.vocab == tok.vocab
    assert loaded.encode(text) == tok.encode(text)


def test_load_refuses_corrupt_and_foreign_files(tmp_path):
    good = shakespeare_tokenizer().save(tmp_path / "good.json").read_text()
    cases = {
        "truncated.json": (good[:-10], "is not a JSON file \\(JSONDecodeError"),
        "binary.json": (None, "is not a JSON file \\(UnicodeDecodeError"),
        "foreign.json": (json.dumps({"version": "1.0", "model": {"type": "BPE"}}), "is not a tinytorch-bpe-1 file \\(format None\\)"),
        "number.json": ("42", "\\(format 'int'\\)"),
        "nomerges.json": (good.replace('"merges"', '"merged"'), "damaged tinytorch-bpe-1 file \\(KeyError: 'merges'\\)"),
        "forward.json": (good.replace('"merges": [[', '"merges": [[300, 1], ['), "merge 0 is \\[300, 1\\]; expected two ids below 256"),
        "triple.json": (good.replace('"merges": [[', '"merges": [[1, 2, 3], ['), "merge 0 is \\[1, 2, 3\\]"),
        "badtokens.json": (good.replace('"special_tokens": ["<|endoftext|>"]', '"special_tokens": [""]'), "distinct non-empty strings"),
        "badpattern.json": (good.replace('"pattern": "', '"pattern": "(', 1), "damaged .*error: missing \\)"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is None: path.write_bytes(b"\xff\xfe\x00garbage")
        else:
            assert content != good, name
            path.write_text(content)
        with pytest.raises(ValueError, match=f"BPETokenizer.load: .*{name} .*{message}"):
            BPETokenizer.load(path)
    with pytest.raises(FileNotFoundError, match="no tokenizer file at .*absent.json"):
        BPETokenizer.load(tmp_path / "absent.json")


def test_a_save_that_fails_midway_keeps_the_old_file(tmp_path, monkeypatch):
    tok = shakespeare_tokenizer()
    path = BPETokenizer().save(tmp_path / "tok.json")
    before = path.read_bytes()

    def fsync_fails(fd):                        # fault injection: the data is written, then the disk fails
        raise OSError("disk full (injected)")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="injected"):
        tok.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["tok.json"]           # no temporary file left behind
    assert BPETokenizer.load(path).merges == []
