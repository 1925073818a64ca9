"""The `driftline` command's verbs, put together (see the package docstring)."""

from __future__ import annotations

import typer

from . import certs, datasets, kafka, lifecycle, models, ops, produce, streams, tokens

app = typer.Typer(name="driftline", help="Operate a Driftline platform: start it, feed it, watch it, "
                  "manage its models and datasets.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})

for verb in (lifecycle.up, lifecycle.down, lifecycle.status, lifecycle.logs, produce.produce,
             ops.train, ops.drift, ops.predict):
    app.command()(verb)
app.add_typer(streams.app, name="streams")
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.add_typer(kafka.app, name="kafka")
app.add_typer(certs.app, name="certs")
app.add_typer(tokens.app, name="tokens")
