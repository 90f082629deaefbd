"""The encoding pipeline: questions and (distinct) contexts through the tokenizer, in bulk and
without special tokens, as their distinct words where the tokenizer allows it
(uqa/text/segments.py), pipelined a chunk ahead (ChunksAhead), into EncodedPairs.

The tokenize stage works on chunks of rows (`encode_stream`: one tokenizer pipeline through all
of them) and keeps each chunk's tokens on disk between its length pass and its window pass
(`EncodedPairs.save` / `load`), so its memory does not grow with the corpus."""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from uqa.text import segments
from uqa.text.segments import Cuts
from uqa.text.windows import EncodedPairs, Labels, PairTemplate, Windows, _Texts

CHUNK = 8192  # texts per tokenizer call: Encoding objects are large, numpy arrays are not


class _TextsBuilder:
    """Encodings (one tokenizer call's worth at a time) copied into flat numpy arrays."""

    def __init__(self, with_offsets: bool) -> None:
        self.with_offsets = with_offsets
        self.ids_parts: list[np.ndarray] = []
        self.off_parts: list[np.ndarray] = []
        self.lengths: list[int] = []

    def add(self, encodings) -> None:
        chain = itertools.chain.from_iterable
        n = [len(e.ids) for e in encodings]
        total = sum(n)
        self.lengths.extend(n)
        self.ids_parts.append(np.fromiter(chain(e.ids for e in encodings), dtype=np.int32, count=total))
        if self.with_offsets:
            self.off_parts.append(np.fromiter(chain(chain(e.offsets for e in encodings)), dtype=np.int32,
                                              count=2 * total).reshape(-1, 2))

    def build(self) -> _Texts:
        splits = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(np.asarray(self.lengths, dtype=np.int64), out=splits[1:])
        ids = np.concatenate(self.ids_parts) if self.ids_parts else np.zeros(0, np.int32)
        offsets = np.concatenate(self.off_parts) if self.off_parts else np.zeros((0, 2), np.int32)
        return _Texts(ids, offsets, splits)


def _pipelined(backend: Tokenizer, items: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """`items` are (tag, payload); a payload that is a list of texts comes back as their encodings
    (without special tokens), anything else as it is, in order. The next list of texts is encoded
    (in Rust, without the GIL) while the caller copies the current one into numpy, and the items
    up to it (e.g. the next chunk of rows, read from disk) are produced meanwhile too."""
    from concurrent.futures import Future, ThreadPoolExecutor

    it = iter(items)
    queue: deque[tuple[str, Any]] = deque()
    with ThreadPoolExecutor(max_workers=1) as pool:

        def submit_next() -> None:  # queue items up to and including the next texts to encode
            for tag, payload in it:
                if isinstance(payload, list):
                    queue.append((tag, pool.submit(backend.encode_batch, payload, add_special_tokens=False)))
                    return
                queue.append((tag, payload))

        submit_next()
        while queue:
            tag, payload = queue.popleft()
            if isinstance(payload, Future):
                if not any(isinstance(p, Future) for _, p in queue):
                    submit_next()
                encodings = payload.result()
                yield tag, encodings
                del encodings
            else:
                if not queue:
                    submit_next()
                yield tag, payload


def prepare_backend(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of the tokenizer that neither pads nor truncates (what `encode_prepared` needs)."""
    backend = copy.deepcopy(tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return backend


def encode_prepared(backend: Tokenizer, template: PairTemplate, questions: list[str], contexts: list[str],
                    with_type_ids: bool = False) -> EncodedPairs:
    """`encode_pairs` with the tokenizer copy and the template made once (`prepare_backend`,
    `PairTemplate.of`)."""
    [encoded] = encode_stream(backend, template, [(questions, contexts)], with_type_ids)
    return encoded


def encode_stream(backend: Tokenizer, template: PairTemplate,
                  pairs: Iterable[tuple[list[str], list[str]]] | ChunksAhead, with_type_ids: bool = False,
                  ) -> Iterator[EncodedPairs]:
    """`encode_prepared` of each (questions, contexts) in `pairs`, one chunk of rows after another
    through one tokenizer pipeline (the tokenize stage's chunks: the next chunk is read and cut into
    words in a helper thread while the tokenizer works and this one's tokens are copied out; only
    these three chunks are in memory). `pairs` may be a ChunksAhead started before the tokenizer
    was loaded."""
    with pairs if isinstance(pairs, ChunksAhead) else ChunksAhead(pairs) as ahead:
        ahead.cutter.backend = backend
        yield from _encode_chunks(backend, template, ahead, with_type_ids)


@dataclass
class PairsInWords:
    """One chunk's (questions, contexts) as the tokenizer will take them: the distinct contexts, the
    one each row has, and both cut into words (segments.Cutter.words; None: not cut)."""

    questions: list[str]
    contexts: list[str]
    context_of: np.ndarray
    question_words: Cuts | None
    context_words: Cuts | None

    @classmethod
    def of(cls, questions: list[str], contexts: list[str], cutter: segments.Cutter) -> PairsInWords:
        distinct: dict[str, int] = {}
        context_of = np.fromiter((distinct.setdefault(c, len(distinct)) for c in contexts), dtype=np.int64,
                                 count=len(contexts))
        questions, texts = list(questions), list(distinct)
        del distinct
        return cls(questions, texts, context_of, cutter.words(questions), cutter.words(texts))


class ChunksAhead:
    """(questions, contexts) chunks made PairsInWords in a helper thread, one chunk ahead of the
    caller, from the moment this is made: reading and cutting run mostly in Arrow and numpy, without
    the GIL, so they overlap the tokenizer's load (the tokenize stage) and the copying of the
    previous chunk's tokens. An exception in `pairs` reaches the caller; closing waits for the one
    chunk under way, no more."""

    _DONE = object()

    def __init__(self, pairs: Iterable[tuple[list[str], list[str]]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.cutter = segments.Cutter()  # its tokenizer is set by encode_stream
        self._chunks = (PairsInWords.of(questions, contexts, self.cutter) for questions, contexts in pairs)
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._next = self._pool.submit(next, self._chunks, self._DONE)

    def __iter__(self) -> Iterator[PairsInWords]:
        while (current := self._next.result()) is not self._DONE:
            self._next = self._pool.submit(next, self._chunks, self._DONE)
            yield current
            del current

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunksAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encode_chunks(backend: Tokenizer, template: PairTemplate, ahead: ChunksAhead,
                   with_type_ids: bool) -> Iterator[EncodedPairs]:
    cutter = ahead.cutter  # texts as distinct words, where the tokenizer allows it

    def items() -> Iterator[tuple[str, Any]]:
        for chunk in ahead:
            cuts = cutter.cut(chunk.contexts, chunk.context_words)
            question_cuts = cutter.cut(chunk.questions, chunk.question_words)
            yield "start", (chunk.context_of, cuts, question_cuts)
            pieces = chunk.questions if question_cuts is None else question_cuts.pieces
            for a in range(0, len(pieces), CHUNK):
                yield "question", pieces[a : a + CHUNK]
            pieces = chunk.contexts if cuts is None else cuts.pieces
            for a in range(0, len(pieces), CHUNK):
                yield "context", pieces[a : a + CHUNK]
            del chunk, pieces, cuts, question_cuts  # before the helper starts on the chunk after the next
            yield "end", None

    context_of = cuts = question_cuts = None
    builders: dict[str, _TextsBuilder] = {}
    for tag, payload in _pipelined(backend, items()):
        if tag == "start":
            context_of, cuts, question_cuts = payload
            builders = {"question": _TextsBuilder(with_offsets=False), "context": _TextsBuilder(with_offsets=True)}
        elif tag == "end":
            contexts, questions = builders["context"].build(), builders["question"].build()
            yield EncodedPairs(template, questions if question_cuts is None else questions.joined(question_cuts),
                               contexts if cuts is None else contexts.joined(cuts), context_of, with_type_ids)
            builders = {}
        else:
            builders[tag].add(payload)


def encode_pairs(tokenizer: Tokenizer, questions: list[str], contexts: list[str],
                 with_type_ids: bool = False) -> EncodedPairs:
    backend = prepare_backend(tokenizer)
    return encode_prepared(backend, PairTemplate.of(backend), questions, contexts, with_type_ids)


def encode_windows(tokenizer: Tokenizer, questions: list[str], contexts: list[str], max_seq_length: int,
                   stride: int, with_type_ids: bool = False) -> Windows:
    """Sliding windows over each context (question kept whole, `stride` tokens of overlap)."""
    return encode_pairs(tokenizer, questions, contexts, with_type_ids).windows(max_seq_length, stride)


def encode_labelled_windows(tokenizer: Tokenizer, questions: list[str], contexts: list[str],
                            answer_start_char: np.ndarray, answer_end_char: np.ndarray, max_seq_length: int,
                            stride: int, with_offsets: bool = True) -> tuple[Windows, Labels]:
    """Windows and their labels, as the tokenize stage makes them."""
    encoded = encode_pairs(tokenizer, questions, contexts)
    layout = encoded.layout(max_seq_length, stride)
    return encoded.assemble(layout, with_offsets), encoded.labels(layout, answer_start_char, answer_end_char)
