"""``lossgrid zoo``: list the models ``--model NAME`` builds."""

from __future__ import annotations

import click

from ._common import echo_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def zoo(as_json: bool) -> None:
    """List the paper's models that --model NAME builds (the reference code's names).

    \b
    Example:
      lossgrid zoo
      lossgrid surface --model resnet56 --checkpoint model_300.t7 --data cifar10:DIR:test --out s.h5
    """
    from ..zoo import ZOO

    rows = [{"name": e.name, "parameters": e.reference_params, "input_shape": list(e.input_shape),
             "num_classes": e.num_classes, "normalization": e.normalization, "description": e.description}
            for e in ZOO.values()]
    if as_json:
        echo_json(rows)
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['parameters']:>11,}  {r['description']}")
    click.echo(f"\n{len(rows)} models for 3x32x32 inputs, 10 classes; --data cifar10:DIR normalizes inputs as they "
               "were trained (norm=reference).")
