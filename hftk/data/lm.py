"""Language-model inputs: a byte-level BPE tokenizer, the token stream, packed blocks and evaluation windows.

The token stream of a split is ``[eos] doc_1 [eos] doc_2 ... doc_n``: every document token is predicted,
and the end-of-text token separates documents. Training reads fixed blocks of that stream (packing, the
default; blocks start at random offsets each time, nanoGPT-style) or one example per document (variable
length, ``data.packing=false``). Evaluation reads sliding windows that predict every token exactly once.
A corpus bigger than memory is read as a stream instead (``StreamBlocks``): tokenized and packed as it is read.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from hftk.errors import HftkError

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``, as a transformers fast tokenizer.

    Byte-level means every string is encodable (no unknown token) and decoding gives back the exact text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS)
    fast.model_max_length = 10**9  # the model's config says how long a context it takes
    logger.info("trained a byte-level BPE tokenizer: %d tokens", len(fast))
    return fast


def encode_documents(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens."""
    texts = list(texts)  # datasets columns are lazy sequences
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def token_stream(tokenizer: Any, texts: list[str]) -> np.ndarray:
    """``[eos] doc_1 [eos] doc_2 ... doc_n`` as one int array."""
    eos = tokenizer.eos_token_id
    parts: list[list[int]] = []
    for ids in encode_documents(tokenizer, texts):
        parts += [[eos], ids]
    return np.fromiter((t for p in parts for t in p), dtype=np.int64)


class PackedBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks of the training stream; ``random_offsets`` starts each block anywhere in it.

    ``len`` is the number of whole blocks in the stream, so an epoch sees about as many tokens as the split
    has; random offsets make each epoch see different block boundaries (a cheap regulariser on small corpora).
    A block's offset is a function of (seed, epoch, index) alone, never of a global random state: a run resumed
    from a checkpoint, or split over processes, reads the same blocks as one uninterrupted process (the global
    state drifted with the batch the data loader fetches ahead, so resumed runs read other blocks).
    """

    def __init__(self, stream: np.ndarray, block_size: int, random_offsets: bool = True, seed: int = 0):
        self.stream = torch.from_numpy(stream)
        self.block_size = min(block_size, len(stream))
        self.random_offsets = random_offsets
        self.num_blocks = max(1, len(stream) // self.block_size)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.random_offsets:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            start = int(rng.integers(0, len(self.stream) - self.block_size + 1))
        else:
            start = index * self.block_size
        ids = self.stream[start : start + self.block_size]
        return {"input_ids": ids, "labels": ids}


class EpochCallback(TrainerCallback):
    """Tells a dataset with ``set_epoch`` which epoch begins (accelerate forwards it only in some setups)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch + 1e-6))  # a run resumed mid-epoch resumes that epoch


class StreamBlocks(torch.utils.data.IterableDataset):
    """Packed blocks of a document stream (a ``datasets.IterableDataset``), tokenized as it is read, in bounded memory.

    The token stream is ``[eos] doc_1 [eos] doc_2 ...`` as for in-memory data, cut into ``block_size`` blocks. Blocks
    are shuffled a window at a time: documents are read until at least ``shuffle_buffer`` blocks are complete, and that
    window is permuted with a generator seeded by (seed, window number). A window is a function of where its reading
    began (the documents' ``state_dict`` and the tokens carried over), so ``state_at`` is that plus an offset, and a
    run resumed from it reads exactly the blocks the straight run read. datasets' own rolling shuffle buffer is lost on
    resume (datasets 5.2 documents it), which made resumed runs differ. The stream repeats without end (the documents
    from the start again); ``train.max_steps`` ends training.

    Several processes: each gets the documents it reads (its own shards, or the whole stream) and ``keep`` =
    (offset, step): it keeps blocks number i with i % step == offset (see ``hftk.data.text.DocumentStream.part``).
    """

    READ_BATCH = 256  # documents tokenized per tokenizer call

    def __init__(
        self,
        documents: Any,
        tokenizer: Any,
        block_size: int,
        shuffle_buffer: int = 0,
        seed: int = 0,
        keep: tuple[int, int] = (0, 1),
        separate_documents: bool = True,
    ):
        self.offset, self.step = keep
        self.documents = documents
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.window = max(1, shuffle_buffer)
        self.shuffle = shuffle_buffer > 1
        self.seed = seed
        self.separator = [tokenizer.eos_token_id] if separate_documents else []
        self.origin = documents.state_dict()  # not read yet (see sample_texts): where every pass begins
        self.start = {"documents": None, "carry": [], "window": 0, "position": 0, "skip": 0}
        self.windows: deque = deque(maxlen=4096)  # (first block, blocks, start state) of windows read, for state_at

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from ``state_at``) at the next iteration."""
        self.start = dict(state)

    def state_at(self, examples: int) -> dict:
        """Where this process's stream stands after its first ``examples`` blocks (JSON-able).

        The data loader reads ahead of training, so the position is computed from what training consumed, not from
        what was read; windows wholly before it are forgotten.
        """
        position = self.offset + examples * self.step  # the stream's block number of this process's next block
        while len(self.windows) > 1 and self.windows[1][0] <= position:
            self.windows.popleft()
        for first, count, state in self.windows:
            if first <= position <= first + count:
                return {**state, "skip": position - first}
        raise RuntimeError(f"stream position {position} is not among the windows read ({len(self.windows)} kept)")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        first = self.start["position"] + self.start.get("skip", 0)
        for state, blocks in self._windows():
            order = range(len(blocks))
            if self.shuffle:
                order = np.random.default_rng([self.seed, state["window"]]).permutation(len(blocks))
            for j, index in enumerate(order):
                number = state["position"] + j
                if number >= first and (number - self.offset) % self.step == 0:
                    ids = torch.from_numpy(blocks[index].astype(np.int64))
                    yield {"input_ids": ids, "labels": ids}

    def _windows(self) -> Iterator[tuple[dict, np.ndarray]]:
        """``(state where the window's reading began, its blocks in reading order)`` from ``self.start`` on."""
        state = {key: value for key, value in self.start.items() if key != "skip"}
        self.windows.clear()
        self.documents.load_state_dict(state["documents"] or self.origin)
        texts = self._texts(resumed=state["documents"] is not None)
        carry = np.asarray(state["carry"], dtype=np.int32)
        while True:
            blocks: list[np.ndarray] = []
            count = 0
            while count < self.window:
                parts = [carry]
                for ids in encode_documents(self.tokenizer, list(itertools.islice(texts, self.READ_BATCH))):
                    parts += [np.asarray(self.separator, dtype=np.int32), np.asarray(ids, dtype=np.int32)]
                tokens = np.concatenate(parts)
                cut = len(tokens) - len(tokens) % self.block_size
                blocks.append(tokens[:cut].reshape(-1, self.block_size))
                count += len(blocks[-1])
                carry = tokens[cut:]
            window = np.concatenate(blocks)
            self.windows.append((state["position"], len(window), state))
            following = {
                "documents": self.documents.state_dict(),  # after the last document read: texts reads no further
                "carry": carry.tolist(),
                "window": state["window"] + 1,
                "position": state["position"] + len(window),
            }
            yield state, window
            state = following

    def _texts(self, resumed: bool) -> Iterator[str]:
        """The documents' non-blank texts, one pass after another, without end."""
        while True:
            found = False
            try:
                for row in self.documents:
                    text = row["text"]
                    if isinstance(text, str) and text.strip():
                        found = True
                        yield text
            except UnicodeDecodeError as err:
                raise HftkError(
                    f"data: the training stream is not UTF-8 text ({err}); convert it, or set "
                    "data.encoding_errors=replace"
                ) from None
            if not found and not resumed:
                raise HftkError("data: the training stream holds no text (every document is empty or blank)")
            resumed = False
            self.documents.load_state_dict(self.origin)  # the next pass starts at the beginning again


def document_examples(tokenizer: Any, texts: list[str], block_size: int, flatten: bool) -> list[dict]:
    """One example per document (``[eos] + tokens``, long ones cut into pieces of at most ``block_size``).

    ``flatten`` adds ``position_ids`` so the collator packs a batch into one row without padding (GPT-style
    models read document boundaries from restarting positions); otherwise batches are padded.
    """
    examples = []
    for ids in encode_documents(tokenizer, texts):
        ids = [tokenizer.eos_token_id, *ids]
        for start in range(0, len(ids) - 1, block_size):
            piece = ids[start : start + block_size]
            example = {"input_ids": piece, "labels": piece}
            if flatten:
                example["position_ids"] = list(range(len(piece)))
            examples.append(example)
    return examples


def eval_windows(stream: np.ndarray, block_size: int, stride: int) -> list[dict]:
    """Windows of ``block_size`` tokens, ``stride`` apart, whose labels predict each stream token once.

    Token 0 (the leading eos) is never predicted; every later token is the label of exactly one window,
    predicted with at least ``block_size - stride`` tokens of context (except at the start of the stream).
    """
    stride = max(1, min(stride, block_size - 1))
    windows, predicted, start = [], 1, 0
    while predicted < len(stream):
        end = min(start + block_size, len(stream))
        ids = stream[start:end].tolist()
        labels = [t if start + j >= predicted else -100 for j, t in enumerate(ids)]
        windows.append({"input_ids": ids, "labels": labels})
        predicted = end
        start = end - (block_size - stride)
    return windows


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Batch examples: equal lengths stack, ``position_ids`` flatten into one row, otherwise right padding.

    ``use_cache=False`` because a batch is scored once: GPT-2 would otherwise build a key/value cache in training.
    """
    if "position_ids" in features[0]:
        ids, labels, positions = [], [], []
        for f in features:
            ids += list(f["input_ids"])
            labels += [-100, *list(f["labels"])[1:]]  # never predict across a document boundary
            positions += list(f["position_ids"])
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
            "use_cache": False,  # with a cache GPT-2 ignores the document boundaries in position_ids
        }
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths)
    if min(lengths) == width:
        input_ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])
        return {
            "input_ids": input_ids,
            "labels": torch.stack([torch.as_tensor(f["labels"]) for f in features]),
            # all ones: costs nothing (the causal mask skips it) and tells the model the eos tokens are not padding
            "attention_mask": torch.ones_like(input_ids),
            "use_cache": False,  # GPT-2 builds a key/value cache even in training unless told not to
        }
    input_ids = torch.zeros(len(features), width, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    mask = torch.zeros(len(features), width, dtype=torch.long)
    for i, f in enumerate(features):
        n = lengths[i]
        input_ids[i, :n] = torch.as_tensor(f["input_ids"])
        labels[i, :n] = torch.as_tensor(f["labels"])
        mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "use_cache": False}


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for special tokens): bits-per-byte from token-level losses.

    Exact for byte-level BPE (GPT-2 style: each character of a token is one byte); for SentencePiece
    vocabularies '▁' counts as a space and byte-fallback tokens as one byte.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    lengths = np.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=np.int64)
    for token, index in vocab.items():
        if index in special:
            continue
        if all(ch in alphabet for ch in token):
            lengths[index] = len(token)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            lengths[index] = 1
        else:
            lengths[index] = len(token.replace("▁", " ").encode("utf-8"))
    return lengths
