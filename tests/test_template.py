"""``--format`` templates: the Go text/template subset docker users write, as a table of cases
whose expected output is what Go's text/template (docker) prints for the same row."""

from __future__ import annotations

import pytest

from layerfs._cli.template import Row, Template, TemplateError, format_rows, render_rows

ROW = {"Repository": "alpine", "Tag": "3.20", "ID": "3f57a1b2c3d4", "Size": "7.8MB",
       "Config": {"Env": ["PATH=/bin", "A=<b>"], "Labels": {"k": "v", "z": "1"}, "Cmd": None},
       "RepoTags": ["alpine:3.20", "alpine:latest"], "Count": 0}

CASES = {
    "field": ("{{.Repository}}:{{.Tag}}", "alpine:3.20"),
    "nested": ("{{.Config.Env}}", "[PATH=/bin A=<b>]"),
    "missing": ("{{.Nope}}", "<no value>"),
    "json dot": ('{{json .Config.Labels}}', '{"k":"v","z":"1"}'),
    # docker's json function turns HTML escaping off (docker/cli templates/templates.go)
    "json of a value as docker writes it": ("{{json .Config.Env}}", '["PATH=/bin","A=<b>"]'),
    "json null": ("{{json .Config.Cmd}}", "null"),
    "index map": ('{{index .Config.Labels "k"}}', "v"),
    "index list": ("{{index .RepoTags 1}}", "alpine:latest"),
    "range": ("{{range .RepoTags}}{{.}} {{end}}", "alpine:3.20 alpine:latest "),
    "range vars": ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", "k=v;z=1;"),
    "range else": ("{{range .Config.Cmd}}x{{else}}none{{end}}", "none"),
    "if else": ("{{if .Count}}some{{else}}zero{{end}}", "zero"),
    "trim": ("a {{- .Tag -}} b", "a3.20b"),
    "upper join split": ('{{upper .Tag}} {{join .RepoTags ","}} {{split .Tag "."}}',
                         "3.20 alpine:3.20,alpine:latest [3 20]"),
    "printf": ('{{printf "%s-%d" .Repository .Count}}', "alpine-0"),
    "len": ("{{len .RepoTags}}", "2"),
    "dollar root in range": ("{{range .RepoTags}}{{$.ID}}{{end}}", "3f57a1b2c3d43f57a1b2c3d4"),
}


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_template_renders_as_go_does(name: str) -> None:
    text, expected = CASES[name]
    assert Template(text).render(ROW) == expected


def test_json_of_a_row_is_go_marshal_of_a_map() -> None:
    """A list command's row is one of docker's formatter contexts: its MarshalJSON is Go's
    json.Marshal of a map, so keys come sorted and <, >, & escaped ("Digest":"\\u003cnone\\u003e")."""
    row = Row({"Tag": "<none>", "ID": "3f57", "A": "x&y"})
    assert Template("{{json .}}").render(row) == '{"A":"x\\u0026y","ID":"3f57","Tag":"\\u003cnone\\u003e"}'
    assert Template("{{json .Tag}}").render(row) == '"<none>"'


def test_table_directive_prints_the_header_and_aligns() -> None:
    out = render_rows("table {{.Repository}}\\t{{.Tag}}", [ROW, {**ROW, "Repository": "debian-long"}],
                      {"Repository": "REPOSITORY", "Tag": "TAG"})
    assert out.splitlines() == ["REPOSITORY    TAG", "alpine        3.20", "debian-long   3.20"]


@pytest.mark.parametrize("text", ["{{.A | upper}}", "{{with .A}}x{{end}}", "{{if .A}}", "{{end}}", "{{nosuch .A}}"])
def test_what_is_not_supported_is_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        Template(text).render(ROW)


def test_table_header_is_the_template_rendered_with_column_names() -> None:
    """docker renders the header by running the template on the column names: an {{if}} around a
    field gives its name, json/upper give the name unchanged; cells are at least 10 wide
    (docker's tabwriter: minwidth 10, padding 3)."""
    fmt = "table {{.ID}}\\t{{if .Size}}{{.Size}}{{else}}N/A{{end}}\\t{{upper .Tag}}\\t{{.Other}}"
    out = render_rows(fmt, [{"ID": "1", "Size": "", "Tag": "a", "Other": "o"}],
                      {"ID": "IMAGE ID", "Size": "SIZE", "Tag": "TAG"})
    assert out.splitlines() == ["IMAGE ID   SIZE      TAG       OTHER", "1          N/A       A         o"]


@pytest.mark.parametrize("fmt, expected", [
    (None, ["ID        TAG", "1         a"]),
    ("table", ["ID        TAG", "1         a"]),
    ("json", ['{"ID":"1","Tag":"a"}']),
    ("{{.Tag}}", ["a"]),
])
def test_format_values(fmt: str | None, expected: list[str]) -> None:
    out = format_rows(fmt, [Row({"ID": "1", "Tag": "a"})], {"ID": "ID", "Tag": "TAG"}, "table {{.ID}}\\t{{.Tag}}")
    assert out.splitlines() == expected
