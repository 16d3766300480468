"""``--format`` templates: the Go text/template subset docker users write, as a table of cases
whose expected output is what Go's text/template (docker) prints for the same row."""

from __future__ import annotations

import pytest

from layerfs._cli.template import Template, TemplateError, render_rows

ROW = {"Repository": "alpine", "Tag": "3.20", "ID": "3f57a1b2c3d4", "Size": "7.8MB",
       "Config": {"Env": ["PATH=/bin", "A=<b>"], "Labels": {"k": "v", "z": "1"}, "Cmd": None},
       "RepoTags": ["alpine:3.20", "alpine:latest"], "Count": 0}

CASES = {
    "field": ("{{.Repository}}:{{.Tag}}", "alpine:3.20"),
    "nested": ("{{.Config.Env}}", "[PATH=/bin A=<b>]"),
    "missing": ("{{.Nope}}", "<no value>"),
    "json dot": ('{{json .Config.Labels}}', '{"k":"v","z":"1"}'),
    "json escapes like go": ("{{json .Config.Env}}", '["PATH=/bin","A=\\u003cb\\u003e"]'),
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


def test_table_directive_prints_the_header_and_aligns() -> None:
    out = render_rows("table {{.Repository}}\\t{{.Tag}}", [ROW, {**ROW, "Repository": "debian-long"}],
                      {"Repository": "REPOSITORY", "Tag": "TAG"})
    assert out.splitlines() == ["REPOSITORY    TAG", "alpine        3.20", "debian-long   3.20"]


@pytest.mark.parametrize("text", ["{{.A | upper}}", "{{with .A}}x{{end}}", "{{if .A}}", "{{end}}", "{{nosuch .A}}"])
def test_what_is_not_supported_is_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        Template(text).render(ROW)
