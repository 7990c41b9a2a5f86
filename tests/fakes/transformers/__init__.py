"""FAKE transformers: AutoTokenizer returning a word-level tokenizer (see tests/fakes/README.md)."""


class FakeTokenizer:
    chat_template = None  # edge-llm falls back to ChatML
    bos_token, eos_token, eos_token_id = "", "</s>", 2

    def encode(self, text, add_special_tokens=True):
        return [3 + (sum(map(ord, w)) % 90) for w in text.split()]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f" w{i}" for i in ids)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path):
        return FakeTokenizer()
