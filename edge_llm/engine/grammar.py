"""OpenAI response_format -> a GBNF grammar for llama.cpp's grammar sampler. The JSON Schema
conversion is llama-cpp-python's own (llama_cpp.llama_grammar, a port of llama.cpp's), with
patterns and numeric bounds done here: it wrote a pattern's escapes (\\d, \\.) into GBNF literals
that llama.cpp refuses, and ignored minimum/maximum.

A schema is checked before conversion, so that an answer with finish_reason "stop" satisfies it:
bounds that contradict each other (minLength 10, maxLength 2) and keywords the converter would
ignore (uniqueItems, format "email", minProperties, ...) are a GrammarError naming the place.

What a schema may cost is bounded before anything is converted or parsed: llama.cpp's GBNF
parser recurses once per nested group, so {"type": "string", "maxLength": 30000} (30,000
nested optionals) overflowed a thread's stack and killed the daemon, and an enum of 50,000
strings made every sampled token check 50,000 alternatives. The bounds below are far above
what a 135M-4B model's structured output needs, and far below what hurts (measured on 2 busy
cores: an enum of 256 cost 0.15 s per token at the enum, 64 cost 0.055 s, plain decoding 0.015 s)."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import re

try:
    from re import _parser as regex_parser  # novermin: Python 3.11+
except ImportError:  # Python 3.10 (JetPack 6.1): the same parser under its old name
    import sre_parse as regex_parser

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
REPEAT_KEYS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
NUMBER_KEYS = (*NUMBER_BOUNDS, "multipleOf")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


# llama-cpp-python's port lets any character but '"' and '\\' into a string, control
# characters too, which JSON forbids (json.loads refuses them); llama.cpp's own converter
# (common/json-schema-to-grammar.cpp) excludes them. Its rule, put back:
JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_CHAR_RULE = re.compile(r"^char ::= .*$", re.MULTILINE)


class GrammarError(ValueError):
    """The schema cannot be turned into a grammar; the message says why."""


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


# -- what the converter honours ---------------------------------------------------------------------

TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
STRING_FORMATS = re.compile(r"date|time|date-time|uuid[1-5]?")  # the converter's own
# what no output can break: allowed beside anything
ANNOTATIONS = frozenset(
    ("title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "discriminator")
    + ("$schema", "$id", "$comment", "$defs", "definitions")
)
# the keywords SchemaConverter.visit honours, by the branch it takes for a schema (_kind)
HONOURED = {
    "a $ref": {"$ref"},
    "anyOf": {"anyOf"},
    "oneOf": {"oneOf"},
    "a list of types": {"type"},
    "a const": {"const", "enum", "type"},
    "an enum": {"enum", "type"},
    "an object": {"type", "properties", "required", "additionalProperties"},
    "allOf": {"type", "allOf"},
    "an array": {"type", "items", "minItems", "maxItems"},
    "a tuple": {"type", "items", "prefixItems"},
    "an array without items": {"type"},
    "a string with a pattern": {"type", "pattern"},
    "a string with a format": {"type", "format"},
    "a string": {"type", "minLength", "maxLength"},
    "a number": {"type", *NUMBER_BOUNDS},
    "a value": {"type"},
}
BOUND_PAIRS = (
    ("minLength", "maxLength"),
    ("minItems", "maxItems"),
    ("minProperties", "maxProperties"),
    ("minContains", "maxContains"),
)


def check_schema_support(schema: dict) -> None:
    """Raise GrammarError, naming the place (#/properties/age), where no output can satisfy the
    schema or the grammar could not hold the output to it."""
    nodes, stack = [], [(schema, "#")]
    while stack:  # every node's shape first: a node's checks read the nodes below it (oneOf, allOf)
        node, path = stack.pop()
        stack.extend(_at(path, _subschemas, node, path))
        nodes.append((node, path))
    for node, path in nodes:
        _at(path, _check_node, node, schema)


def _at(path: str, check, *args):
    """check(*args), its GrammarError naming the place."""
    try:
        return check(*args)
    except GrammarError as e:
        raise GrammarError(f"at {path}: {e}") from None


def _check_node(node: dict, root: dict) -> None:
    _check_bounds(node)
    _check_type(node)
    kind = _kind(node)
    extra = sorted(set(node) - HONOURED[kind] - ANNOTATIONS)
    if extra == ["format"]:
        raise GrammarError(f"format {node['format']!r} is not supported (date, time, date-time and uuid are)")
    if extra:
        supported = ", ".join(sorted(HONOURED[kind])) or "none"
        raise GrammarError(f"'{extra[0]}' is not supported for {kind} (supported there: {supported})")
    check = KIND_CHECKS.get(kind)
    if check is not None:
        check(node, root)


def _kind(node: dict) -> str:
    """The branch SchemaConverter.visit takes for node, tested in its order."""
    t = node.get("type")
    if "$ref" in node:
        return "a $ref"
    if "oneOf" in node or "anyOf" in node:
        return "oneOf" if "oneOf" in node else "anyOf"
    if isinstance(t, list):
        return "a list of types"
    if "const" in node or "enum" in node:
        return "a const" if "const" in node else "an enum"
    if t in (None, "object") and ("properties" in node or node.get("additionalProperties", True) is not True):
        return "an object"
    if t in (None, "object") and "allOf" in node:
        return "allOf"
    if t in (None, "array") and ("items" in node or "prefixItems" in node):
        return "a tuple" if isinstance(node.get("items") or node.get("prefixItems"), list) else "an array"
    if t in (None, "string") and "pattern" in node:
        return "a string with a pattern"
    if t in (None, "string") and isinstance(node.get("format"), str) and STRING_FORMATS.fullmatch(node["format"]):
        return "a string with a format"
    if t in ("string", "integer", "number"):
        return "a string" if t == "string" else "a number"
    if t == "object" or not node:
        return "an object"
    return "an array without items" if t == "array" else "a value"


def _check_type(node: dict) -> None:
    t = node.get("type")
    types = t if isinstance(t, list) else [t]
    if "type" in node and (not types or not all(isinstance(x, str) and x in TYPES for x in types)):
        raise GrammarError(f"'type' must be one of {list(TYPES)} or a list of them, got {t!r}")
    if t is None and _kind(node) == "a value":
        raise GrammarError("say what the value is: 'type', 'properties', 'items', 'enum', 'const', 'anyOf' or '$ref'")


def _check_bounds(node: dict) -> None:
    for key in REPEAT_KEYS:
        v = node.get(key)
        if key in node and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise GrammarError(f"'{key}' must be a whole number >= 0, got {v!r}")
    for key in NUMBER_KEYS:
        v = node.get(key)
        if key in node and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise GrammarError(f"'{key}' must be a number, got {v!r}")
    for lo, hi in BOUND_PAIRS:
        if lo in node and hi in node and node[lo] > node[hi]:
            raise GrammarError(f"'{lo}' ({node[lo]}) is greater than '{hi}' ({node[hi]}): nothing satisfies both")
    low, high = _lower(node), _upper(node)
    if low and high and (low[0] > high[0] or (low[0] == high[0] and (low[1] or high[1]))):
        raise GrammarError(f"'{low[2]}' ({low[0]}) and '{high[2]}' ({high[0]}) leave no number between them")


def _lower(node: dict) -> tuple[float, bool, str] | None:
    """The tighter lower bound: (value, exclusive, keyword), or None."""
    bounds = [(node[k], k == "exclusiveMinimum", k) for k in ("minimum", "exclusiveMinimum") if k in node]
    return max(bounds, default=None)


def _upper(node: dict) -> tuple[float, bool, str] | None:
    bounds = [(node[k], k == "exclusiveMaximum", k) for k in ("maximum", "exclusiveMaximum") if k in node]
    return min(bounds, key=lambda b: (b[0], not b[1]), default=None)


def _subschemas(node: object, path: str) -> list[tuple[object, str]]:
    """The subschemas in node, with their paths; a container of the wrong shape is a GrammarError."""
    if not isinstance(node, dict):
        raise GrammarError("a schema must be a JSON object")
    out = []
    for key in ("properties", "$defs", "definitions"):
        if key in node and not isinstance(node[key], dict):
            raise GrammarError(f"'{key}' must be an object of schemas")
        out += [(v, f"{path}/{key}/{k}") for k, v in node.get(key, {}).items()]
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node and (not isinstance(node[key], list) or not node[key]):
            raise GrammarError(f"'{key}' must be a non-empty list of schemas")
        out += [(v, f"{path}/{key}/{i}") for i, v in enumerate(node.get(key, []))]
    items, more, required = node.get("items"), node.get("additionalProperties"), node.get("required", [])
    if isinstance(items, list):
        out += [(v, f"{path}/items/{i}") for i, v in enumerate(items)]
    elif isinstance(items, dict):
        out.append((items, f"{path}/items"))
    elif "items" in node and not (items is False and "prefixItems" in node):
        raise GrammarError("'items' must be a schema (false only beside 'prefixItems')")
    if isinstance(more, dict):
        out.append((more, f"{path}/additionalProperties"))
    elif more is not None and not isinstance(more, bool):
        raise GrammarError("'additionalProperties' must be true, false or a schema")
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise GrammarError("'required' must be a list of property names")
    return out


def _check_object(node: dict, root: dict) -> None:
    missing = [name for name in node.get("required", []) if name not in node.get("properties", {})]
    if missing:  # the converter writes only the listed properties
        raise GrammarError(f"'required' names {missing[0]!r}, which is not in 'properties'")


def _check_values(node: dict, root: dict) -> None:
    """const and enum: the converter writes the values as they are, so each must fit the type."""
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise GrammarError("'enum' must be a non-empty list")
    values = [node["const"]] if "const" in node else node["enum"]
    if "const" in node and "enum" in node and node["const"] not in node["enum"]:
        raise GrammarError("'const' is not one of 'enum'")
    wrong = [v for v in values if "type" in node and not _has_type(v, node["type"])]
    if wrong:
        raise GrammarError(f"{wrong[0]!r} is not of type {node['type']!r}")


def _has_type(value: object, t: str) -> bool:
    if t in ("integer", "number"):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return is_number and (t == "number" or float(value).is_integer())
    kinds = {"string": str, "boolean": bool, "null": type(None), "object": dict, "array": list}
    return isinstance(value, kinds[t])


def _check_one_of(node: dict, root: dict) -> None:
    """The converter writes oneOf as anyOf: a value that matched two alternatives would break it."""
    alternatives = [_deref(a, root) for a in node["oneOf"]]
    for (i, a), (j, b) in itertools.combinations(enumerate(alternatives), 2):
        if not _disjoint(a, b, root):
            raise GrammarError(
                f"oneOf alternatives {i} and {j} may both match one value, which oneOf forbids; use anyOf, "
                "or give them different types or a required property with different const values"
            )


def _disjoint(a: dict, b: dict, root: dict) -> bool:
    """True where no value matches both (by type, by const/enum, or by a required discriminator)."""
    types_a, types_b = _types(a), _types(b)
    if types_a and types_b and not types_a & types_b:
        return True
    values_a, values_b = _values(a), _values(b)
    if values_a is not None and values_b is not None and not values_a & values_b:
        return True
    props_a, props_b = _properties(a), _properties(b)
    for key in _required(a) & _required(b) & set(props_a) & set(props_b):
        values_a, values_b = _values(_deref(props_a[key], root)), _values(_deref(props_b[key], root))
        if values_a is not None and values_b is not None and not values_a & values_b:
            return True
    return False


def _types(node: dict) -> set[str]:
    t = node.get("type", [])
    return {"number" if x == "integer" else x for x in (t if isinstance(t, list) else [t]) if isinstance(x, str)}


def _required(node: dict) -> set[str]:
    names = node.get("required")
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def _properties(node: dict) -> dict:
    return node["properties"] if isinstance(node.get("properties"), dict) else {}


def _values(node: dict) -> set[str] | None:
    if "const" in node:
        return {json.dumps(node["const"], sort_keys=True)}
    if isinstance(node.get("enum"), list):
        return {json.dumps(v, sort_keys=True) for v in node["enum"]}
    return None


def _deref(node: object, root: dict) -> dict:
    """The schema a local $ref (#/$defs/x) points to, one step, as the converter resolves allOf's."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node if isinstance(node, dict) else {}
    target = root
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else {}


def _check_all_of(node: dict, root: dict) -> None:
    """The converter merges allOf's objects by their properties (each made required) and reads
    nothing else in them."""
    seen: set[str] = set()
    for i, part in enumerate(_deref(p, root) for p in node["allOf"]):
        extra = sorted(set(part) - {"type", "properties", "required"} - ANNOTATIONS)
        if extra:
            raise GrammarError(f"allOf/{i}: '{extra[0]}' is not supported in allOf (only objects' properties are)")
        if part.get("type", "object") != "object":
            raise GrammarError(f"allOf/{i}: only objects can be combined, not type {part['type']!r}")
        twice = seen & set(_properties(part))
        if twice:
            raise GrammarError(f"allOf/{i}: property {sorted(twice)[0]!r} is given twice")
        seen |= set(_properties(part))


def _check_tuple(node: dict, root: dict) -> None:
    if "prefixItems" in node and node.get("items", False) is not False:
        raise GrammarError("'items' beside 'prefixItems' is not supported (only items: false)")


def _check_pattern(node: dict, root: dict) -> None:
    if not isinstance(node["pattern"], str):
        raise GrammarError("'pattern' must be a string")
    pattern_gbnf(node["pattern"])


def _check_number(node: dict, root: dict) -> None:
    if not set(NUMBER_BOUNDS).isdisjoint(node):
        number_gbnf(node)


KIND_CHECKS = {
    "an object": _check_object,
    "a const": _check_values,
    "an enum": _check_values,
    "oneOf": _check_one_of,
    "allOf": _check_all_of,
    "a tuple": _check_tuple,
    "a string with a pattern": _check_pattern,
    "a number": _check_number,
}


# -- numeric bounds ---------------------------------------------------------------------------------

MAX_DIGITS = 16  # of a whole number's part, as the converter's own integral-part rule
FRACTION = '"." [0-9]{0,14} [1-9]'  # never .0, .50: a decimal lies strictly between two whole numbers


def number_gbnf(node: dict) -> str:
    """GBNF for the numbers of an integer or number schema within its bounds, as JSON writes them:
    whole numbers, and (type number) decimals between whole numbers within the bounds."""
    low, high = _lower(node), _upper(node)
    lo = None if low is None else (math.floor(low[0]) + 1 if low[1] else math.ceil(low[0]))
    hi = None if high is None else (math.ceil(high[0]) - 1 if high[1] else math.floor(high[0]))
    alternatives = integers_gbnf(lo, hi)
    if node["type"] == "number":
        alternatives += decimals_gbnf(None if low is None else low[0], None if high is None else high[0])
    if not alternatives:
        what = "whole number" if node["type"] == "integer" else "number with whole-number bounds"
        raise GrammarError(f"no {what} lies within the bounds")
    return "(" + " | ".join(alternatives) + ")"


def integers_gbnf(lo: int | None, hi: int | None) -> list[str]:
    """GBNF alternatives for the integers lo..hi (None: unbounded)."""
    negative = []
    if lo is None or lo < 0:  # "-" and the magnitudes
        top = 1 if hi is None or hi >= 0 else -hi
        negative = ['"-" ' + a for a in naturals_gbnf(top, None if lo is None else -lo)]
    positive = [] if hi is not None and hi < 0 else naturals_gbnf(0 if lo is None else max(lo, 0), hi)
    return negative + positive


def decimals_gbnf(low: float | None, high: float | None) -> list[str]:
    """Decimals k.f (0 < f < 1) with k and k+1 within [low, high] (-k and -k-1 for -k.f): they
    never land on a bound, exclusive or not."""
    lowest = None if low is None else math.ceil(low)  # the whole numbers within the bounds
    highest = None if high is None else math.floor(high)
    positive = naturals_gbnf(max(lowest or 0, 0), None if highest is None else highest - 1)
    negative = naturals_gbnf(max(-(highest or 0), 0), None if lowest is None else -lowest - 1)
    return [f"{a} {FRACTION}" for a in positive] + [f'"-" {a} {FRACTION}' for a in negative]


def naturals_gbnf(lo: int, hi: int | None) -> list[str]:
    """GBNF alternatives for the whole numbers lo..hi (hi None: up to MAX_DIGITS digits), without
    leading zeros; each a fixed prefix, one digit range and free digits ("1" [2-5] [0-9])."""
    if hi is None:
        digits = len(str(lo))
        longer = [f"[1-9] [0-9]{{{digits},{MAX_DIGITS - 1}}}"] if digits < MAX_DIGITS else []
        return naturals_gbnf(lo, 10**digits - 1) + longer
    out = []
    while lo <= hi:
        end = _piece_end(lo, hi)
        out.append(" ".join(f'"{a}"' if a == b else f"[{a}-{b}]" for a, b in zip(str(lo), str(end), strict=True)))
        lo = end + 1
    return out


def _piece_end(lo: int, hi: int) -> int:
    """The largest end <= hi with lo..end one piece: lo's last `free` digits 0, end's 9."""
    for free in range(len(str(lo)) - 1, 0, -1):
        unit = 10**free
        base = lo - lo % (10 * unit)
        top = min(9, (hi - base + 1) // unit - 1)  # the largest digit d with base + (d + 1) * unit - 1 <= hi
        if lo % unit == 0 and top >= lo // unit % 10:
            return base + (top + 1) * unit - 1
    return min(hi, lo - lo % 10 + 9)


# -- patterns ---------------------------------------------------------------------------------------

UNICODE = [(0, 0x10FFFF)]
ASCII = [(0, 0x7F)]
# \d \w \s as ECMAScript (JSON Schema's regex dialect) reads them; Python's take more of Unicode
CATEGORIES = {
    "CATEGORY_DIGIT": [(0x30, 0x39)],
    "CATEGORY_WORD": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "CATEGORY_SPACE": [(0x09, 0x0D), (0x20, 0x20)],
}
NOT_DOT = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]  # "." matches none of these in ECMAScript
NOT_RAW = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # a JSON string holds these only escaped
JSON_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
UNSUPPORTED = {
    "AT": "^ and $ are supported at the start and end only; \\b, \\B, \\A and \\Z are not supported",
    "GROUPREF": "backreferences are not supported",
    "GROUPREF_EXISTS": "conditional groups are not supported",
    "ASSERT": "lookahead and lookbehind are not supported",
    "ASSERT_NOT": "lookahead and lookbehind are not supported",
    "ATOMIC_GROUP": "atomic groups are not supported",
    "POSSESSIVE_REPEAT": "possessive quantifiers are not supported",
}


def pattern_gbnf(pattern: str) -> str:
    """GBNF for the text between a JSON string's quotes of a string that matches pattern (^...$):
    its characters, JSON-escaped where JSON needs it. Regex syntax beyond that is a GrammarError
    naming the pattern."""
    try:
        parsed = regex_parser.parse(pattern)
        items = list(parsed)
        if parsed.state.flags & ~regex_parser.SRE_FLAG_UNICODE:
            raise GrammarError("inline flags such as (?i) are not supported")
        if len(items) < 2 or not _is_at(items[0], "AT_BEGINNING") or not _is_at(items[-1], "AT_END"):
            raise GrammarError("it must start with ^ and end with $ (use ^(a|b)$ for alternatives)")
        return _sequence(items[1:-1])
    except (re.error, ValueError, OverflowError, RecursionError) as e:  # ValueError: GrammarError among them
        raise GrammarError(f"pattern '{pattern}': {e}") from None


def _is_at(item: tuple, where: str) -> bool:
    op, av = item
    return op.name == "AT" and av.name == where


def _sequence(items) -> str:
    """A regex sequence as GBNF, its literal characters in one quoted string."""
    parts, text = [], ""
    for op, av in items:
        if op.name == "LITERAL":
            text += json.dumps(chr(av), ensure_ascii=False)[1:-1]
            continue
        if text:
            parts.append(_quote(text))
            text = ""
        parts.append(_element(op.name, av))
    return " ".join(parts + ([_quote(text)] if text else [])) or '""'


def _element(name: str, av) -> str:
    if name in ("IN", "NOT_LITERAL", "ANY"):
        return _charset(_ranges(name, av))
    if name in ("MAX_REPEAT", "MIN_REPEAT"):  # lazy or greedy: the same strings
        return _repeat(*av)
    if name == "SUBPATTERN":
        _, add_flags, del_flags, sub = av
        if add_flags or del_flags:
            raise GrammarError("inline flags such as (?i:...) are not supported")
        return f"({_sequence(sub)})"
    if name == "BRANCH":
        return "(" + " | ".join(_sequence(alternative) for alternative in av[1]) + ")"
    raise GrammarError(UNSUPPORTED.get(name, f"{name} is not supported"))


def _repeat(lo: int, hi: int, sub) -> str:
    unbounded = hi == regex_parser.MAXREPEAT
    if unbounded and sub.getwidth()[0] == 0:  # llama.cpp would expand it forever
        raise GrammarError("an unbounded repeat of what may be empty, like (a*)*, is not supported")
    if unbounded:
        suffix = {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    else:
        suffix = "?" if (lo, hi) == (0, 1) else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"
    return f"({_sequence(sub)}){suffix}"


def _ranges(name: str, av) -> list[tuple[int, int]]:
    """The code points one regex character matches, as sorted (first, last) ranges."""
    if name == "NOT_LITERAL":
        return _subtract(UNICODE, [(av, av)])
    if name == "ANY":
        return _subtract(UNICODE, NOT_DOT)
    ranges, negate, has_category = [], False, False
    for op, arg in av:
        if op.name == "NEGATE":
            negate = True
        elif op.name in ("LITERAL", "RANGE"):
            ranges.append((arg, arg) if op.name == "LITERAL" else arg)
        elif op.name == "CATEGORY" and arg.name.replace("_NOT", "") in CATEGORIES:
            positive = CATEGORIES[arg.name.replace("_NOT", "")]
            ranges += _subtract(ASCII, positive) if "_NOT_" in arg.name else positive
            has_category = True
        else:
            raise GrammarError(f"{arg} in a character set is not supported")
    # a negated set with \d in it: ASCII only, what Python's and ECMAScript's \d both leave out
    return _subtract(ASCII if has_category else UNICODE, ranges) if negate else _merge(ranges)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in _merge(ranges):
        for cut_lo, cut_hi in _merge(cut):
            if cut_lo <= hi and cut_hi >= lo:
                if cut_lo > lo:
                    out.append((lo, cut_lo - 1))
                lo = max(lo, cut_hi + 1)
        if lo <= hi:
            out.append((lo, hi))
    return out


def _charset(ranges: list[tuple[int, int]]) -> str:
    """One character of the set as a JSON string holds it: raw where JSON allows, else its escape;
    control characters without a short escape are left out (the output still matches)."""
    raw = _subtract(ranges, NOT_RAW)
    alternatives = [_char_class(raw)] if raw else []
    alternatives += [_quote(esc) for code, esc in JSON_ESCAPES.items() if any(lo <= code <= hi for lo, hi in ranges)]
    if not alternatives:
        raise GrammarError("a character set of control characters only")
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "[" + "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges) + "]"


def _quote(text: str) -> str:
    return '"' + "".join(_char(ord(c)) for c in text) + '"'


def _char(code: int) -> str:
    """A code point in a GBNF literal or class: ASCII letters and digits as they are, else escaped."""
    if chr(code).isascii() and chr(code).isalnum():
        return chr(code)
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


# -- conversion -------------------------------------------------------------------------------------


@functools.cache
def _converter_class() -> type:
    """llama-cpp-python's converter with patterns and numeric bounds done here (imported when a
    schema first comes: importing llama_cpp loads libllama)."""
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class Converter(SchemaConverter):
        def _visit_pattern(self, pattern: str, name: str) -> str:
            return self._add_rule(name, f'"\\"" {pattern_gbnf(pattern)} "\\"" space')

        def visit(self, schema: dict, name: str) -> str:
            if _kind(schema) == "a number" and not set(NUMBER_BOUNDS).isdisjoint(schema):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                return self._add_rule(rule_name, number_gbnf(schema) + " space")
            return super().visit(schema, name)

    return Converter


def _convert(schema: dict) -> str:
    """As llama_cpp.llama_grammar.json_schema_to_gbnf, with the converter above."""
    converter = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(copy.deepcopy(schema), "stdin"), "")  # resolve_refs rewrites $refs
    return converter.format_grammar()


def from_json_schema(schema: dict) -> str:
    check_schema_cost(schema)
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
