"""The `minmo` command: one entry point for the model tools, the services and the whole stack."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="MinMo: full-duplex speech-text LLM and its serving stack.", no_args_is_help=True)
model_app = typer.Typer(help="Inspect and run the model in-process.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("params")
def model_params(config: str = typer.Option("minmo-8b", help="preset (minmo-8b, tiny, nano) or JSON file")) -> None:
    """Print {module: parameter_count} as JSON, counted on the meta device (no weights are allocated)."""
    from minmo.model.config import load_config
    from minmo.model.pipeline import count_parameters

    typer.echo(json.dumps(count_parameters(load_config(config)), indent=2))


if __name__ == "__main__":
    app()
