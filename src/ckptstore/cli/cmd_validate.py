from __future__ import annotations

import sys

import click
from rich.text import Text

from ._app import command, counted, json_option, open_store, out, print_json, transformers_output, verbose_option


@command("validate")
@click.argument("ref")
@click.option("--cls", "cls_name", metavar="CLASS", default=None,
              help="transformers class to load with (default: the checkpoint's architecture), e.g."
                   " AutoModelForSequenceClassification.")
@click.option("--text", default=None, help="Text for the forward pass (default: a short sentence).")
@verbose_option
@json_option
def validate(ref: str, cls_name: str | None, text: str | None, verbose: bool, as_json: bool,
             store_path: str | None) -> None:
    """Prove checkpoint REF is fit to ship: it loads with from_pretrained (and its tokenizer), no weight is missing,
    misshapen, NaN or Inf, a forward pass gives finite outputs, and the installed transformers understands it.

    \b
    Examples:
      ckpt validate bert-sst2:best
      ckpt validate bert-sst2/step-500 --cls AutoModelForSequenceClassification --text "a great film"
      ckpt validate bert-sst2:prod --json
    Exit codes: 0 valid, 1 invalid (or not found), 2 usage error (e.g. an unknown --cls).
    """
    store = open_store(store_path)
    with transformers_output(verbose):
        report = store.validate(ref, cls=cls_name, text=text)
    if as_json:
        print_json(report.to_json())
    else:
        _print(report)
    if not report.ok:
        sys.exit(1)


def _print(report) -> None:
    c = report.compatibility
    verdict = "[bold green]valid[/]" if report.ok else f"[bold red]INVALID[/] ({counted(len(report.errors), 'error')})"
    out.print(f"{report.name} ({report.id[:12]}): {verdict}")
    rows = []
    if report.model_class:
        dtypes = ", ".join(f"{k} {v:,}" for k, v in report.dtypes.items())
        rows.append(("model", f"{report.model_class}, {report.parameters:,} parameters ({dtypes})"))
    rows.append(("tokenizer", report.tokenizer_class or "-"))
    if report.output_shape is not None:
        finite = "finite" if report.output_finite else "NOT finite"
        rows.append(("forward", f"{report.input_kind} -> output {list(report.output_shape)}, {finite}"))
    known = "known" if c.model_type_known else "UNKNOWN"
    rows.append(("transformers", f"saved with {c.saved_with or '?'}, installed {c.installed};"
                                 f" model_type {c.model_type!r} {known}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"  {key:<{width}}  {value}", markup=False)
    for f in report.findings:
        colour = "red" if f.severity == "error" else "yellow"
        out.print(Text.assemble((f"{f.severity}: ", colour), f.message))
        if f.hint:
            out.print(f"  hint: {f.hint}", markup=False)
