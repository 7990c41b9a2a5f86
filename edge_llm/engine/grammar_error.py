"""GrammarError, in a module of its own: grammar.py, schema_check.py, regex_gbnf.py and
number_gbnf.py all raise it, and grammar.py imports the others (imports only go down)."""


class GrammarError(ValueError):
    """The schema cannot be turned into a grammar; the message says why."""
