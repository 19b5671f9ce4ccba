"""An offline character tokenizer, built with the ``tokenizers`` library.

The tiny student must not download anything, and arithmetic is naturally
spelled one character at a time. Unknown characters are an error rather than a
silent ``<unk>``: a skill whose answers use a character missing from the
vocabulary would otherwise look unlearnable for no visible reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_char_tokenizer(alphabet: Iterable[str]) -> PreTrainedTokenizerFast:
    """A tokenizer with one id per character of ``alphabet`` plus special tokens.

    >>> tok = build_char_tokenizer("0123456789+=")
    >>> ids = tok("12+3=", add_special_tokens=False)["input_ids"]
    >>> len(ids), tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True)
    (5, '12+3=')
    """
    chars = sorted(set(alphabet))
    for ch in chars:
        if len(ch) != 1:
            raise ValueError(f"alphabet entries must be single characters, got {ch!r}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        clean_up_tokenization_spaces=False,
    )
    tok.padding_side = "left"
    return tok


def check_ids(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], ids: Sequence[Sequence[int]]
) -> None:
    """Raise if any already-encoded text contains the unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for text, row in zip(texts, ids, strict=True):
        if unk in row:
            bad = sorted({ch for ch in text if tokenizer.convert_tokens_to_ids(ch) == unk})
            raise ValueError(
                f"text {text!r} has characters {bad} outside the tokenizer's vocabulary"
            )


def check_covered(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> None:
    """Raise if any text would encode to the unknown token."""
    texts = list(texts)
    if texts:
        check_ids(tokenizer, texts, tokenizer(texts, add_special_tokens=False)["input_ids"])
