"""Incremental detokenization for backends that hand back token ids (TensorRT-LLM).

Decoding one token at a time is wrong for the tokenizers LLMs use: SentencePiece drops the
leading space of a piece decoded alone ("▁world" -> "world"), and byte-level BPE splits a
UTF-8 character over several tokens, each of which decodes alone to U+FFFD. This is vLLM's
detokenize_incrementally (vllm/transformers_utils/detokenizer_utils.py): the text of a new
token is the decode of a short window ending with it, minus the decode of the same window
without the new tokens; nothing is emitted while the window ends in an incomplete character."""

from __future__ import annotations

INITIAL_OFFSET = 5  # vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET: prompt tokens kept as context
TRIM_AT = 64  # drop ids before the window once this many have piled up


class IncrementalDetokenizer:
    """One per request. `prefix` is where the decoded window starts, `read` where the text
    already emitted ends (token indices into `ids`)."""

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-(INITIAL_OFFSET + 1) :])  # enough context for the first token
        self.read = len(self.ids)
        self.prefix = max(self.read - INITIAL_OFFSET, 0)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def step(self, token: int) -> str:
        """The text token adds, or "" while it ends in an incomplete character."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        if self.prefix > TRIM_AT:
            del self.ids[: self.prefix]
            self.read -= self.prefix
            self.prefix = 0
        return after[len(before) :]
