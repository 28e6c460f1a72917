"""A small deterministic word-level tokenizer and vocabulary for caption and report modalities.

- Tokens: the text is lower-cased and split into words (letters, with an inner apostrophe),
  numbers and the punctuation marks ``. , ; : ? !``; everything else separates tokens.
- Vocabulary: built from the *training* texts only: every token seen at least `min_count`
  times, ordered by descending count then alphabetically (so the same texts always give the
  same ids), after the special tokens ``<pad>`` = 0, ``<unk>`` = 1, ``<eos>`` = 2.
- Encoding: a fixed length L; the first L-1 tokens, then ``<eos>``, then ``<pad>`` up to L.
  Tokens outside the vocabulary become ``<unk>``. Ids are int32 in the cache.

The vocabulary is saved beside the Arrow cache it belongs to, under the same key
(`SidecarInCache`), so the ids in a cache always decode with the vocabulary they were
encoded with.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from shala_bench.errors import DataError

PAD, UNK, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<eos>")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+|[.,;:?!]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # id -> word; ids 0..2 are the special tokens

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "Vocabulary":
        counts = Counter(tok for t in texts for tok in tokenize(t))
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[:max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + tuple(kept))

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(self, text: str, length: int, index: dict[str, int] | None = None) -> np.ndarray:
        """(length,) int32 ids: tokens, <eos>, then <pad>."""
        index = index if index is not None else self.index
        ids = [index.get(tok, UNK) for tok in tokenize(text)][:length - 1] + [EOS]
        out = np.full(length, PAD, dtype=np.int32)
        out[:len(ids)] = ids
        return out

    def encode_many(self, texts: Iterable[str], length: int) -> np.ndarray:
        index = self.index
        rows = [self.encode(t, length, index) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, length), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <eos> (pads dropped)."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i != PAD:
                words.append(self.words[i] if 0 <= i < len(self.words) else "<unk>")
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"words": list(self.words)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, blob: str) -> "Vocabulary":
        return cls(tuple(json.loads(blob)["words"]))


# ---------------------------------------------------------------- metadata beside the cache
class SidecarInCache:
    """Mixin for a `shala_bench.data.prepare.LocalDataset` whose conversion yields metadata the
    arrays need to be read (a text modality's vocabulary; class names).

    `convert` calls `save_sidecar({...})`; the JSON file is written (atomically) *before* the
    Arrow cache is complete, under the same key as that cache, so whoever sees a complete
    cache also finds the metadata it was built with (e.g. the vocabulary its token ids were
    encoded with). After a load or prepare, `self.sidecar` holds it and `self.vocabulary`
    is its vocabulary (None without one).
    """

    sidecar: dict | None = None
    _sidecar_file: Path | None = None

    def _build(self, root, record, protocol, cache_dir, progress, verify):
        from shala_bench.data.cache import cache_key, default_cache_dir

        key = self._key(record, protocol)
        self._sidecar_file = Path(cache_dir or default_cache_dir()) / "sidecars" / f"{self.name}-{cache_key(key)}.json"
        out = super()._build(root, record, protocol, cache_dir, progress, verify)
        if not self._sidecar_file.exists():
            raise DataError(f"{self._sidecar_file}: the metadata of {out[1]} is missing; delete that folder and run "
                            f"`shala-bench data prepare {self.name} --root {root}` again")
        self.sidecar = json.loads(self._sidecar_file.read_text())
        return out

    def save_sidecar(self, meta: dict) -> None:
        path = self._sidecar_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(meta, ensure_ascii=False))
        os.replace(tmp, path)
        self.sidecar = meta

    @property
    def vocabulary(self) -> Vocabulary | None:
        words = (self.sidecar or {}).get("vocabulary")
        return Vocabulary(tuple(words)) if words is not None else None
