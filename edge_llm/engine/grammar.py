"""OpenAI response_format -> a GBNF grammar for llama.cpp's grammar sampler. The JSON Schema
conversion is llama-cpp-python's own (llama_cpp.llama_grammar, a port of llama.cpp's)."""

from __future__ import annotations

import json
import re

# {"type": "json_object"}: any JSON object, with llama.cpp's bounded whitespace (the plain
# JSON grammar allows endless whitespace, which a small model can fall into)
JSON_OBJECT_SCHEMA = {"type": "object"}


# llama-cpp-python's port lets any character but '"' and '\\' into a string, control
# characters too, which JSON forbids (json.loads refuses them); llama.cpp's own converter
# (common/json-schema-to-grammar.cpp) excludes them. Its rule, put back:
JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_CHAR_RULE = re.compile(r"^char ::= .*$", re.MULTILINE)


class GrammarError(ValueError):
    """The schema cannot be turned into a grammar; the message says why."""


def from_json_schema(schema: dict) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    try:
        return _CHAR_RULE.sub(lambda _: JSON_CHAR, json_schema_to_gbnf(json.dumps(schema)))
    except (AssertionError, AttributeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise GrammarError(f"unsupported or invalid JSON Schema: {e}") from None


def for_response_format(fmt: dict) -> str | None:
    """None for plain text; else the grammar that every output must match."""
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return from_json_schema(JSON_OBJECT_SCHEMA)
    return from_json_schema(fmt["json_schema"]["schema"])
