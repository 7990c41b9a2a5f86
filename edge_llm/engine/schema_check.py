"""Whether the grammar can hold an answer to a schema, checked before conversion, so that an
answer with finish_reason "stop" satisfies the schema. llama-cpp-python's SchemaConverter
silently ignores what it does not write (uniqueItems, multipleOf, minProperties, a maxLength
beside a pattern, ...) and writes oneOf as anyOf; such a keyword, or bounds that contradict each
other (minLength 10, maxLength 2), is a GrammarError naming the place (#/properties/age).

A string `format` is an annotation (JSON Schema 2020-12 asserts none by default): date, time,
date-time and uuid are enforced (the converter writes them), any other ("email", "uri", as
pydantic's EmailStr emits) is accepted and written as a plain string."""

from __future__ import annotations

import itertools
import json
import re

from edge_llm.engine.grammar_error import GrammarError
from edge_llm.engine.number_gbnf import lower_bound, number_gbnf, upper_bound
from edge_llm.engine.regex_gbnf import pattern_gbnf

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

TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
STRING_FORMATS = re.compile(r"date|time|date-time|uuid[1-5]?")  # the converter's own
# the keywords that ask something of the value (JSON Schema 2020-12, draft 7's too): any other
# keyword (example, nullable, x-*, $comment, readOnly, ...) is an annotation, which JSON Schema ignores
ASSERTIONS = frozenset(
    ("type", "enum", "const", "format", "pattern", *REPEAT_KEYS, *NUMBER_KEYS, "uniqueItems")
    + ("properties", "required", "additionalProperties", "patternProperties", "propertyNames")
    + ("dependentRequired", "dependentSchemas", "dependencies", "unevaluatedProperties")
    + ("items", "prefixItems", "additionalItems", "contains", "unevaluatedItems")
    + ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef")
)
# the keywords SchemaConverter.visit honours, by the branch it takes for a schema (schema_kind)
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
    "a tuple": {"type", "items", "prefixItems", "minItems", "maxItems"},
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


# the keywords that apply to one type only: a list of types hands each to its own alternative
TYPE_KEYS = {
    "string": {"minLength", "maxLength", "pattern", "format", "contentMediaType", "contentEncoding"},
    "number": set(NUMBER_KEYS),
    "integer": set(NUMBER_KEYS),
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains"}
    | {"minContains", "maxContains", "unevaluatedItems"},
    "object": {"properties", "required", "additionalProperties", "patternProperties", "propertyNames"}
    | {"minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "dependencies"}
    | {"unevaluatedProperties"},
}
SUBSCHEMA_KEYS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def expand_type_lists(node: object) -> object:
    """node, with each list of types beside other keywords ({"type": ["string", "null"], "enum": [...]})
    written as anyOf one alternative per type, each with the keywords that apply to it: the
    converter would write the bare types and drop the rest. A copy; a malformed node is left as it is."""
    if isinstance(node, list):
        return [expand_type_lists(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (expand_type_lists(v) if k not in SUBSCHEMA_KEYS else _expand_values(v)) for k, v in node.items()}
    t = out.get("type")
    if not isinstance(t, list) or len(out) == 1 or not t or not all(isinstance(x, str) and x in TYPES for x in t):
        return out
    if not {"$ref", "anyOf", "oneOf", "allOf"}.isdisjoint(out):  # the converter takes those before the type
        return out
    alternatives = [a for a in (_for_type(out, x) for x in dict.fromkeys(t)) if a is not None]
    return {"anyOf": alternatives} if alternatives else out


def _expand_values(mapping: object) -> object:
    return {k: expand_type_lists(v) for k, v in mapping.items()} if isinstance(mapping, dict) else mapping


def _for_type(node: dict, t: str) -> dict | None:
    """node's keywords for values of type t; None where its enum or const leaves no value of t."""
    others = set().union(*TYPE_KEYS.values()) - TYPE_KEYS.get(t, set())
    out = {k: v for k, v in node.items() if k not in others} | {"type": t}
    if "const" in out and not _has_type(out["const"], t):
        return None
    if isinstance(out.get("enum"), list):
        out["enum"] = [v for v in out["enum"] if _has_type(v, t)]
        return out if out["enum"] else None
    return out


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
    kind = schema_kind(node)
    extra = sorted(set(node) & ASSERTIONS - HONOURED[kind] - annotation_format(node))
    if extra:
        supported = ", ".join(sorted(HONOURED[kind])) or "none"
        raise GrammarError(f"'{extra[0]}' is not supported for {kind} (supported there: {supported})")
    check = KIND_CHECKS.get(kind)
    if check is not None:
        check(node, root)


def schema_kind(node: dict) -> str:
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


def annotation_format(node: dict) -> set[str]:
    """{"format"} where it asks nothing of the output: a format the converter does not write
    ("email", "uri") is an annotation; date, time, date-time and uuid are held, so not ignored."""
    fmt = node.get("format")
    return {"format"} if isinstance(fmt, str) and not STRING_FORMATS.fullmatch(fmt) else set()


def asks_nothing(node: dict) -> bool:
    """{} or annotations only (pydantic's Any): a node that admits any value."""
    return ASSERTIONS.isdisjoint(set(node) - annotation_format(node))


def _check_type(node: dict) -> None:
    if "format" in node and not isinstance(node["format"], str):
        raise GrammarError(f"'format' must be a string, got {node['format']!r}")
    t = node.get("type")
    types = t if isinstance(t, list) else [t]
    if "type" in node and (not types or not all(isinstance(x, str) and x in TYPES for x in types)):
        raise GrammarError(f"'type' must be one of {list(TYPES)} or a list of them, got {t!r}")
    if t is None and schema_kind(node) == "a value" and not asks_nothing(node):
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
    low, high = lower_bound(node), upper_bound(node)
    if low and high and (low[0] > high[0] or (low[0] == high[0] and (low[1] or high[1]))):
        raise GrammarError(f"'{low[2]}' ({low[0]}) and '{high[2]}' ({high[0]}) leave no number between them")


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
    """True where no value matches both (by type, by const/enum, by a required discriminator, or by
    required keys the other object does not write)."""
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
    return _keys_apart(a, b) or _keys_apart(b, a)


def _keys_apart(a: dict, b: dict) -> bool:
    """Objects a's grammar writes lack a key b requires; b's have it, which a refuses (additionalProperties
    false) or is written without a key a requires (so a's are refused by b, b's by a)."""
    if schema_kind(a) != "an object" or schema_kind(b) != "an object":
        return False
    b_needs_more = bool(_required(b) - set(_properties(a)))
    a_needs_more = bool(_required(a) - set(_properties(b)))
    if a.get("additionalProperties") is False:
        return b_needs_more
    # additionalProperties absent: the converter writes no extra keys, but a (as JSON Schema) admits them
    return "additionalProperties" not in a and b_needs_more and a_needs_more and "additionalProperties" not in b


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


def local_target(ref: object, root: dict) -> dict | None:
    """The schema a local $ref (#/$defs/x) points to in root, one step; None for another kind of
    ref, or one that points at nothing or at no schema."""
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return None
    target = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        target = target.get(part) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else None


def _deref(node: object, root: dict) -> dict:
    """The schema a local $ref (#/$defs/x) points to, one step, as the converter resolves allOf's."""
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    return local_target(ref, root) or {}


def _check_all_of(node: dict, root: dict) -> None:
    """The converter merges allOf's objects by their properties (each made required) and reads
    nothing else in them."""
    seen: set[str] = set()
    for i, part in enumerate(_deref(p, root) for p in node["allOf"]):
        extra = sorted(set(part) & ASSERTIONS - {"type", "properties", "required"})
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
    length = len(node.get("prefixItems") or node["items"])  # the converter writes exactly these items
    for key in ("minItems", "maxItems"):
        if key in node and (node[key] > length if key == "minItems" else node[key] < length):
            raise GrammarError(f"'{key}' ({node[key]}) is not met by the tuple's {length} items")


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
