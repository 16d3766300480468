"""``--format`` templates: the subset of Go's text/template that docker's ``--format`` users write.

So that scripts written for docker work (docker's docs, "Format command and log output"):

- ``{{.Field}}``, ``{{.A.B}}``: a field of the row (dict keys, as docker names them); a missing
  one is ``<no value>``, as Go prints it;
- ``{{json .}}``, ``{{json .Config}}``: JSON of a value, compact, as docker's ``json`` function
  writes it (docker/cli ``templates/templates.go``: HTML characters are not escaped); a whole row
  of a list command (a :class:`Row`, one of docker's formatter contexts) goes through Go's
  ``json.Marshal`` of a map, as docker's ``MarshalJSON`` does it: keys sorted, ``<``/``>``/``&``
  escaped (``"Digest":"\\u003cnone\\u003e"``); ``{{upper X}}``, ``{{lower X}}``, ``{{title X}}``,
  ``{{split X "sep"}}``, ``{{join X "sep"}}``, ``{{index X "key"}}`` / ``{{index X 0}}``,
  ``{{len X}}``, ``{{println X...}}``, ``{{printf "%s" X}}`` (``%s %d %v %q``);
- ``{{if X}}...{{else}}...{{end}}``, ``{{range X}}...{{.}}...{{end}}`` (``{{range $i, $v := X}}``
  too), and ``{{- `` / `` -}}`` trimming of the spaces next to an action;
- a template starting with ``table`` prints the header row first (docker's directive): the
  template rendered with each field's column name, as docker renders it (``json``, ``upper``,
  ... give the name unchanged); then the columns, separated by tabs, are aligned as docker's
  tabwriter aligns them (each cell padded by 3 spaces, to at least 10 columns).
- :func:`format_rows` turns docker's ``--format`` values into output: ``table`` (or none) for
  the command's default table, ``json`` for ``{{json .}}`` per row, ``table TEMPLATE``, or a
  template printed once per row.

What it refuses (a clear ``template: ...`` error): pipelines with ``|``, variables other than
range's, ``with``, ``define``/``template``, comparison functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from .._errors import LayerfsError

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\$[\w]*(?:\.[\w]+)*|\.[\w.]*|[\w]+|,|:=)')

NO_VALUE = "<no value>"


class TemplateError(LayerfsError):
    """A template that does not parse or cannot be applied."""


class Row(dict[str, object]):
    """A row of a list command (``images``, ``ps``, ``history``, ...): one of docker's formatter
    contexts, whose ``{{json .}}`` is Go's ``json.Marshal`` of a map (keys sorted, HTML escaped)."""


def _go_json(value: object) -> str:
    if isinstance(value, Row):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _go_str(value: object) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_go_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_str(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            rest = text[pos:].strip()
            if not rest:
                break
            raise TemplateError(f"template: unexpected {rest[:20]!r} in action")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Node:
    pass


class _Text(_Node):
    def __init__(self, text: str) -> None:
        self.text = text


class _Action(_Node):
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens


class _Block(_Node):
    def __init__(self, kind: str, tokens: list[str]) -> None:
        self.kind = kind  # "if" | "range"
        self.tokens = tokens
        self.body: list[_Node] = []
        self.other: list[_Node] = []
        self.vars: tuple[str, ...] = ()


def _parse(text: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Block, bool]] = []  # (block, in else)

    def current() -> list[_Node]:
        if not stack:
            return root
        block, in_else = stack[-1]
        return block.other if in_else else block.body

    pos = 0
    trim_next = False
    for m in _ACTION.finditer(text):
        chunk = text[pos:m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        if chunk:
            current().append(_Text(chunk))
        trim_next = bool(m.group(3))
        pos = m.end()
        body = m.group(2)
        if body.startswith("/*"):
            continue
        if "|" in body:
            raise TemplateError("template: pipelines (|) are not supported")
        tokens = _tokens(body)
        if not tokens:
            raise TemplateError("template: empty action {{}}")
        head = tokens[0]
        if head in ("if", "range"):
            block = _Block(head, tokens[1:])
            if head == "range" and ":=" in tokens:
                i = tokens.index(":=")
                block.vars = tuple(t for t in tokens[1:i] if t != ",")
                block.tokens = tokens[i + 1:]
            current().append(block)
            stack.append((block, False))
        elif head == "else":
            if not stack:
                raise TemplateError("template: {{else}} without {{if}} or {{range}}")
            stack[-1] = (stack[-1][0], True)
        elif head == "end":
            if not stack:
                raise TemplateError("template: {{end}} without {{if}} or {{range}}")
            stack.pop()
        elif head in ("with", "define", "template", "block"):
            raise TemplateError(f"template: {{{{{head}}}}} is not supported")
        else:
            current().append(_Action(tokens))
    chunk = text[pos:]
    if trim_next:
        chunk = chunk.lstrip()
    if chunk:
        current().append(_Text(chunk))
    if stack:
        raise TemplateError(f"template: unclosed {{{{{stack[-1][0].kind}}}}}")
    return root


def _field(value: object, path: str) -> object:
    for part in [p for p in path.split(".") if p]:
        if isinstance(value, Mapping):
            if part not in value:
                return None
            value = value[part]
        else:
            return None
    return value


def _truthy(value: object) -> bool:
    return value not in (None, False, 0, "", [], {}, ())


def _printf(fmt: str, args: Sequence[object]) -> str:
    out, i = [], 0
    for piece in re.split(r"(%[sdvq%])", fmt):
        if piece == "%%":
            out.append("%")
        elif piece in ("%s", "%d", "%v", "%q"):
            arg = args[i] if i < len(args) else None
            i += 1
            out.append(json.dumps(_go_str(arg)) if piece == "%q" else _go_str(arg))
        else:
            out.append(piece)
    return "".join(out)


#: The functions that give a header's column name unchanged (docker's ``HeaderFunctions``).
_HEADER_FUNCS = ("json", "split", "join", "title", "lower", "upper")


class _Scope:
    def __init__(self, dot: object, root: object, variables: Mapping[str, object], header: bool = False) -> None:
        self.dot, self.root, self.vars, self.header = dot, root, dict(variables), header

    def value(self, token: str) -> object:
        if token.startswith('"'):
            return json.loads(token)
        if token.startswith("`"):
            return token[1:-1]
        if token == ".":
            return self.dot
        if token.startswith("."):
            found = _field(self.dot, token[1:])
            if found is None and self.header:  # a field without a column name: its own, in capitals
                return token[1:].upper()
            return found
        if token.startswith("$"):
            name, _, rest = token.partition(".")
            base = self.root if name == "$" else self.vars.get(name)
            return _field(base, rest) if rest else base
        if token.isdigit():
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        raise TemplateError(f"template: function {token!r} not defined")

    def call(self, tokens: Sequence[str]) -> object:
        head, args = tokens[0], [t for t in tokens[1:] if t != ","]
        funcs = {"json", "upper", "lower", "title", "split", "join", "index", "len", "println", "printf", "print"}
        if head not in funcs:
            if len(tokens) > 1:
                raise TemplateError(f"template: {head!r} is not a function")
            return self.value(head)
        vals = [self.value(a) for a in args]
        if self.header and head in _HEADER_FUNCS:
            return _go_str(vals[0] if vals else self.dot)
        if head == "json":
            return _go_json(vals[0] if vals else self.dot)
        if head == "upper":
            return _go_str(vals[0]).upper()
        if head == "lower":
            return _go_str(vals[0]).lower()
        if head == "title":
            return _go_str(vals[0]).title()
        if head == "split":
            return _go_str(vals[0]).split(_go_str(vals[1]))
        if head == "join":
            items = vals[0] if isinstance(vals[0], (list, tuple)) else []
            return _go_str(vals[1]).join(_go_str(v) for v in items)
        if head == "index":
            base = vals[0]
            for key in vals[1:]:
                if isinstance(base, Mapping):
                    base = base.get(key)
                elif isinstance(base, (list, tuple)) and isinstance(key, int) and 0 <= key < len(base):
                    base = base[key]
                else:
                    base = None
            return base
        if head == "len":
            v = vals[0]
            return len(v) if isinstance(v, (str, list, tuple, dict)) else 0
        if head == "println":
            return " ".join(_go_str(v) for v in vals) + "\n"
        if head == "print":
            return "".join(_go_str(v) for v in vals)
        return _printf(_go_str(vals[0]), vals[1:])


def _render(nodes: Sequence[_Node], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Action):
            value = scope.call(node.tokens)
            out.append(value if isinstance(value, str) else _go_str(value))
        elif isinstance(node, _Block):
            value = scope.call(node.tokens)
            if node.kind == "if":
                _render(node.body if _truthy(value) else node.other, scope, out)
                continue
            items: list[tuple[object, object]]
            if isinstance(value, Mapping):
                items = sorted(value.items())
            elif isinstance(value, (list, tuple)):
                items = list(enumerate(value))
            else:
                items = []
            if not items:
                _render(node.other, scope, out)
            for key, item in items:
                variables = dict(scope.vars)
                if len(node.vars) == 1:
                    variables[node.vars[0]] = item
                elif len(node.vars) == 2:
                    variables[node.vars[0]], variables[node.vars[1]] = key, item
                _render(node.body, _Scope(item, scope.root, variables, scope.header), out)


class Template:
    """A parsed ``--format`` template (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.table = text.startswith("table")  # docker's test (formatter.Format.IsTable)
        self.text = text[len("table"):].strip(" ") if self.table else text
        self.text = self.text.replace("\\t", "\t").replace("\\n", "\n")
        self._nodes = _parse(self.text)

    def render(self, row: object) -> str:
        """The text for one row (without a final newline: the caller adds it, as docker does)."""
        out: list[str] = []
        _render(self._nodes, _Scope(row, row, {}), out)
        return "".join(out)

    def header(self, names: Mapping[str, str]) -> str:
        """The header row of a ``table`` template: the template rendered with each field's column
        name (a field ``names`` lacks is named by itself, in capitals)."""
        out: list[str] = []
        _render(self._nodes, _Scope(names, names, {}, header=True), out)
        return "".join(out)


#: docker's tabwriter settings (docker/cli ``formatter.Context.postFormat``): a cell is at least
#: this wide, and padded by this many spaces.
_MIN_WIDTH, _PADDING = 10, 3


def align(lines: Sequence[str]) -> str:
    """Tab-separated ``lines`` as docker's tabwriter aligns them: every cell but a line's last is
    padded to its column's width (its widest cell plus 3, at least 10); trailing spaces dropped."""
    cells = [line.split("\t") for line in lines]
    widths: list[int] = []
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            if i >= len(widths):
                widths.append(_MIN_WIDTH)
            widths[i] = max(widths[i], len(cell) + _PADDING)
    return "".join("".join(c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)).rstrip() + "\n"
                   for row in cells)


def render_rows(fmt: str, rows: Sequence[object], names: Mapping[str, str]) -> str:
    """Docker's ``--format`` output for ``rows``: one rendered line each, with the header and
    aligned columns for a ``table`` template."""
    t = Template(fmt)
    lines = [t.render(r) for r in rows]
    if not t.table:
        return "".join(line + "\n" for line in lines)
    return align("\n".join([t.header(names), *lines]).split("\n"))


def format_rows(fmt: str | None, rows: Sequence[object], names: Mapping[str, str], default: str) -> str:
    """The output of a list command for docker's ``--format`` value ``fmt``: ``None`` or
    ``table`` prints ``default`` (the command's table template), ``json`` prints ``{{json .}}``
    per row, anything else is a template (``table TEMPLATE`` with a header).

    Raises:
        TemplateError: the template does not parse or cannot be applied.
    """
    if not fmt or fmt.strip() == "table":
        fmt = default
    elif fmt.strip() == "json":
        fmt = "{{json .}}"
    return render_rows(fmt, rows, names)
