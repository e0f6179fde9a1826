"""A validator for the subset of JSON Schema that docs/json-schema.json uses (type, const, enum, properties,
required, additionalProperties: false, items, minItems, maxItems, minimum, maximum, oneOf, $ref to #/$defs/...).
Anything else in a schema is an error here, so the subset cannot silently grow. Returns a list of messages."""

KNOWN = {"$schema", "$id", "title", "description", "type", "const", "enum", "properties", "required",
         "additionalProperties", "items", "minItems", "maxItems", "minimum", "maximum", "oneOf", "$ref", "$defs"}

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value, schema, root=None, path="$"):
    root = root if root is not None else schema
    errs = []
    unknown = set(schema) - KNOWN
    if unknown:
        raise ValueError(f"{path}: schema keywords outside the supported subset: {sorted(unknown)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        return validate(value, root["$defs"][ref[len("#/$defs/"):]], root, path)
    if "type" in schema:
        ts = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(TYPES[t](value) for t in ts):
            return [f"{path}: {value!r:.60} is not of type {ts}"]
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: {value!r:.60} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r:.60} not in {schema['enum']}")
    if "oneOf" in schema:
        ok = sum(1 for s in schema["oneOf"] if not validate(value, s, root, path))
        if ok != 1:
            errs.append(f"{path}: matches {ok} of the oneOf alternatives, not exactly 1")
    if TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}: missing required '{k}'")
        for k, v in value.items():
            if k in props:
                errs += validate(v, props[k], root, f"{path}.{k}")
            elif schema.get("additionalProperties", True) is False:
                errs.append(f"{path}: unexpected property '{k}'")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errs.append(f"{path}: {len(value)} items < {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(f"{path}: {len(value)} items > {schema['maxItems']}")
        if "items" in schema:
            for i, v in enumerate(value):
                errs += validate(v, schema["items"], root, f"{path}[{i}]")
    return errs
