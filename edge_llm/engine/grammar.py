"""OpenAI response_format -> a GBNF grammar for llama.cpp's grammar sampler: the public entry
points (for_response_format, from_json_schema, GrammarError) and what a schema may cost. The JSON
Schema conversion is llama-cpp-python's own (llama_cpp.llama_grammar, a port of llama.cpp's), with
patterns (regex_gbnf.py) and numeric bounds (number_gbnf.py) done here: it wrote a pattern's
escapes (\\d, \\.) into GBNF literals that llama.cpp refuses, and ignored minimum/maximum. A schema
is checked first (schema_check.py), so that an answer with finish_reason "stop" satisfies it.

What a schema may cost is bounded before anything is converted or parsed: llama.cpp's GBNF
parser recurses once per nested group, so {"type": "string", "maxLength": 30000} (30,000
nested optionals) overflowed a thread's stack and killed the daemon, and an enum of 50,000
strings made every sampled token check 50,000 alternatives. The bounds below are far above
what a 135M-4B model's structured output needs, and far below what hurts (measured on 2 busy
cores: an enum of 256 cost 0.15 s per token at the enum, 64 cost 0.055 s, plain decoding 0.015 s)."""

from __future__ import annotations

import copy
import functools
import json
import math
import re

from edge_llm.engine.grammar_error import GrammarError
from edge_llm.engine.number_gbnf import number_gbnf
from edge_llm.engine.regex_gbnf import pattern_gbnf
from edge_llm.engine.schema_check import (
    NUMBER_BOUNDS,
    NUMBER_KEYS,
    REPEAT_KEYS,
    asks_nothing,
    check_schema_support,
    expand_type_lists,
    local_target,
    schema_kind,
)

# {"type": "json_object"}: any JSON object, with llama.cpp's bounded whitespace (the plain
# JSON grammar allows endless whitespace, which a small model can fall into)
JSON_OBJECT_SCHEMA = {"type": "object"}

MAX_SCHEMA_BYTES = 16_384  # the schema, as compact JSON
MAX_SCHEMA_DEPTH = 24  # nested objects and arrays in the schema document
MAX_SCHEMA_NODES = 512  # objects, arrays and values in the schema document (alternatives at once)
MAX_REPEAT = 256  # minLength, maxItems, ... and {m,n} in a pattern: each unit is one nested group
MAX_ENUM = 128  # values of one enum: each is an alternative checked against every candidate token
MAX_PATTERN = 512  # characters of one pattern
MAX_NUMBER = 1e15  # |minimum|, |maximum|, ...: number_gbnf spells bounds digit by digit
MAX_GRAMMAR_BYTES = 65_536  # the GBNF text
MAX_GRAMMAR_NESTING = 2 * MAX_REPEAT + 64  # nested groups in the GBNF text (parser recursion)
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


# llama-cpp-python's port lets any character but '"' and '\\' into a string, control
# characters too, which JSON forbids (json.loads refuses them); llama.cpp's own converter
# (common/json-schema-to-grammar.cpp) excludes them. Its rule, put back:
JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_CHAR_RULE = re.compile(r"^char ::= .*$", re.MULTILINE)


def check_schema_cost(schema: dict) -> None:
    """Raise GrammarError for a schema over the bounds above. Iterative: a schema nested
    deeper than Python's recursion limit is refused, not a RecursionError."""
    stack, num_nodes = [(schema, 1)], 0
    while stack:
        node, depth = stack.pop()
        num_nodes += 1
        if num_nodes > MAX_SCHEMA_NODES:
            raise GrammarError(f"the schema has more than {MAX_SCHEMA_NODES} values")
        if isinstance(node, float) and not math.isfinite(node):
            raise GrammarError("the schema holds a number that is not finite")
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, dict):
            _check_keywords(node)
            stack.extend((v, depth + 1) for v in node.values())
        else:
            stack.extend((v, depth + 1) for v in node)
    if len(json.dumps(schema, separators=(",", ":"))) > MAX_SCHEMA_BYTES:
        raise GrammarError(f"the schema is longer than {MAX_SCHEMA_BYTES} bytes")


def _check_keywords(node: dict) -> None:
    for key in REPEAT_KEYS:
        v = node.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > MAX_REPEAT:
            raise GrammarError(f"'{key}' is {v}; at most {MAX_REPEAT} is supported")
    for key in NUMBER_KEYS:
        v = node.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > MAX_NUMBER:
            raise GrammarError(f"'{key}' is {v}; at most {MAX_NUMBER:g} in magnitude is supported")
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > MAX_ENUM:
        raise GrammarError(f"an enum of {len(enum)} values; at most {MAX_ENUM} are supported")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        if len(pattern) > MAX_PATTERN:
            raise GrammarError(f"a pattern of {len(pattern)} characters; at most {MAX_PATTERN} are supported")
        for m in _QUANTIFIER.finditer(pattern):
            if max(int(m.group(1)), int(m.group(2) or 0)) > MAX_REPEAT:
                raise GrammarError(f"the pattern repeats {m.group(0)}; at most {MAX_REPEAT} is supported")


def check_grammar_cost(gbnf: str) -> None:
    """The converter's output, bounded too (whatever a schema turns into)."""
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"the schema makes a grammar of {len(gbnf)} bytes; at most {MAX_GRAMMAR_BYTES}")
    depth = deepest = 0
    for ch in _groups_only(gbnf):
        depth += 1 if ch == "(" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_GRAMMAR_NESTING:
        raise GrammarError(f"the schema makes a grammar nested {deepest} deep; at most {MAX_GRAMMAR_NESTING}")


_LITERALS = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]')


def _groups_only(gbnf: str) -> str:
    """The grammar's group parentheses, without those inside literals and character classes."""
    return "".join(ch for ch in _LITERALS.sub("", gbnf) if ch in "()")


# -- conversion -------------------------------------------------------------------------------------


@functools.cache
def _converter_class() -> type:
    """llama-cpp-python's converter with patterns and numeric bounds done here (imported when a
    schema first comes: importing llama_cpp loads libllama)."""
    from llama_cpp.llama_grammar import INVALID_RULE_CHARS_RE, PRIMITIVE_RULES, RESERVED_NAMES, SchemaConverter

    class Converter(SchemaConverter):
        def _resolve_ref(self, ref: str) -> str:
            """Each $ref's target its own rule, named apart from every rule written: the converter
            named it by the ref's last segment and took whatever rule had that name, so a def
            called "value" or "string" became the built-in rule, one named like a top-level
            property became that property (a review's finding: answers that broke the schema)."""
            names = self.__dict__.setdefault("_ref_rules", {})
            if ref not in names:
                # numbered: the rules written inside it (ref1-A-next) never name another ref's
                # (ref2-A-next), even one still being written (a second review's finding)
                base = f"ref{len(names) + 1}-" + INVALID_RULE_CHARS_RE.sub("-", ref.split("/")[-1])
                name, i = base, 0
                while name in self._rules:
                    i += 1
                    name = f"{base}-{i}"
                names[ref] = name  # what a recursive reference inside it names
                names[ref] = self.visit(self._refs[ref], name)  # a primitive's own rule, where it is one
            return names[ref]

        def _visit_pattern(self, pattern: str, name: str) -> str:
            return self._add_rule(name, f'"\\"" {pattern_gbnf(pattern)} "\\"" space')

        def visit(self, schema: dict, name: str) -> str:
            if name == "":  # the root's name, and a top-level property's ("" in properties or allOf)
                if self.__dict__.get("_root_visited"):
                    raise GrammarError("a top-level property named '' is not supported (its rule would be the root)")
                self._root_visited = True
            if isinstance(schema, dict) and asks_nothing(schema):
                if name:  # any JSON value (pydantic's Any); the converter wrote {} as an object
                    return self._add_primitive("value", PRIMITIVE_RULES["value"])
                schema = {}  # the whole answer: an object, as the converter writes {} (json_object)
            if schema.get("items") == {}:  # the converter reads `items or prefixItems`: {} is falsy
                schema = {**schema, "items": {"$comment": "any value"}}
            if schema_kind(schema) == "a number" and not set(NUMBER_BOUNDS).isdisjoint(schema):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                return self._add_rule(rule_name, number_gbnf(schema) + " space")
            return super().visit(schema, name)

    return Converter


def _convert(schema: dict) -> str:
    """As llama_cpp.llama_grammar.json_schema_to_gbnf, with the converter above."""
    converter = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = _inline_root_ref(copy.deepcopy(schema))
    converter.visit(converter.resolve_refs(schema, "stdin"), "")  # resolve_refs rewrites $refs
    return converter.format_grammar()


def _inline_root_ref(schema: dict) -> dict:
    """A root that is a $ref to one of its own definitions, as the definition beside those
    definitions: llama-cpp-python's resolve_refs does not look inside a node with a $ref, so the
    definitions' own refs were never registered and a recursive root model (pydantic v2 writes
    {"$defs": {"Node": ...}, "$ref": "#/$defs/Node"}) was a 400."""
    for _ in range(32):  # a chain of refs at the root; a cycle of them is left to the converter's error
        target = local_target(schema.get("$ref"), schema)
        if target is None:
            return schema  # no local ref, or the converter names the missing place
        defs = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
        schema = {**copy.deepcopy(target), **defs}
    return schema


def from_json_schema(schema: dict) -> str:
    check_schema_cost(schema)
    schema = expand_type_lists(schema)  # after the cost check, which bounds the schema as sent
    check_schema_support(schema)
    try:
        gbnf = _CHAR_RULE.sub(lambda _: JSON_CHAR, _convert(schema))
    except GrammarError:
        raise
    except (AssertionError, AttributeError, KeyError, TypeError, ValueError, IndexError, RecursionError) as e:
        raise GrammarError(f"unsupported or invalid JSON Schema: {e}") from None
    check_grammar_cost(gbnf)
    return gbnf


def for_response_format(fmt: dict) -> str | None:
    """None for plain text; else the grammar that every output must match."""
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return from_json_schema(JSON_OBJECT_SCHEMA)
    return from_json_schema(fmt["json_schema"]["schema"])
