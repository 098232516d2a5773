"""`sparsetune` command line: Typer commands that compose Hydra recipes and run jobs.

Heavy libraries (torch, transformers, hydra) are imported inside the commands so `--help` is fast.
Every user mistake surfaces as one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from sparsetune.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Structured-sparsity fine-tuning and compression of Transformers: S²FT, PAT, GS-LoRA, EViT, SPT, "
    "with full fine-tuning, LoRA and DoRA baselines. Every KEY=VALUE is a Hydra override.",
)

OVERRIDES = typer.Argument(None, help="Hydra overrides, e.g. recipe=s2ft_llama trainer.max_steps=20", show_default=False)
SHOW_CFG = typer.Option(False, "--cfg", help="Print the resolved config and exit.")
DEFAULT_FORGET_RECIPE = "gslora_vit"  # `sparsetune forget` without recipe= (GS-LoRA on the ViT base)


def fail(message: str) -> None:
    raise UserError(message)


def _compose(overrides: list[str]):
    from sparsetune.jobs.config import compose_job

    return compose_job(overrides)


def _resolve(overrides: list[str] | None, extra: list[str] | None = None):
    """Compose; `resume=RUN` reuses that run's stored config."""
    overrides = list(overrides or []) + list(extra or [])
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if resume:
        from sparsetune.engine.run_folder import RunFolder
        from sparsetune.jobs.config import load_run_config

        run = RunFolder.open(resume)
        cfg = load_run_config(run)
        cfg.resume = str(run.path)
        return cfg, overrides
    return _compose(overrides), overrides


def _print_cfg(cfg) -> None:
    from sparsetune.config import to_yaml

    typer.echo(to_yaml(cfg))


def _run_training(overrides, show_cfg: bool, job: str, extra: list[str] | None = None) -> None:
    cfg, overrides = _resolve(overrides, extra)
    if show_cfg:
        _print_cfg(cfg)
        return
    from sparsetune.jobs import run_job

    run_job(cfg, overrides, job)


@app.command(epilog="Examples:\n\n  sparsetune train recipe=s2ft_llama\n\n"
             "  sparsetune train recipe=lora_llama trainer.max_steps=20 method.r=8\n\n"
             "  sparsetune train resume=runs/20261127-101500-lora_llama")
def train(overrides: Optional[list[str]] = OVERRIDES, cfg: bool = SHOW_CFG) -> None:
    """Fine-tune a model (full, lora, dora, s2ft, …) and evaluate it on the held-out split."""
    _run_training(overrides, cfg, "train")


@app.command(epilog="Examples:\n\n  sparsetune prune recipe=pat_llama method.prune_ratio=0.25")
def prune(overrides: Optional[list[str]] = OVERRIDES, cfg: bool = SHOW_CFG) -> None:
    """Pruning-aware tuning, then physical pruning and export of a smaller stock HF model."""
    _run_training(overrides, cfg, "prune")


@app.command(epilog="Examples:\n\n  sparsetune forget --classes 3,7\n\n"
             "  sparsetune forget --classes 0,1 --classes 2,3 recipe=gslora_vit")
def forget(
    overrides: Optional[list[str]] = OVERRIDES,
    classes: Optional[list[str]] = typer.Option(None, "--classes", help="Comma-separated class ids; repeat for a sequence."),
    cfg: bool = SHOW_CFG,
) -> None:
    """Continually forget classes from a vision Transformer (GS-LoRA / GS-LoRA++)."""
    extra = []
    if classes:
        try:
            tasks = [[int(c) for c in group.split(",") if c.strip()] for group in classes]
        except ValueError:
            fail(f"--classes expects comma-separated integers, got {classes}")
        extra.append("forget.classes=" + str(tasks).replace(" ", ""))
    overrides = list(overrides or [])
    if not any(o.startswith(("recipe=", "resume=")) for o in overrides):
        overrides.insert(0, f"recipe={DEFAULT_FORGET_RECIPE}")
    _run_training(overrides, cfg, "forget", extra)


@app.command("eval", epilog="Examples:\n\n  sparsetune eval run=runs/20261127-101500-lora_llama\n\n"
             "  sparsetune eval recipe=lora_llama eval.limit=50")
def evaluate(overrides: Optional[list[str]] = OVERRIDES, cfg: bool = SHOW_CFG) -> None:
    """Evaluate a finished run (`run=DIR`) or a recipe's untuned model; prints per-task accuracy."""
    overrides = list(overrides or [])
    run = next((o.split("=", 1)[1] for o in overrides if o.startswith("run=")), None)
    from sparsetune.jobs.evaluate import evaluate_recipe, evaluate_run

    if run:
        rest = [o for o in overrides if not o.startswith("run=")]
        if cfg:
            from sparsetune.engine.run_folder import RunFolder
            from sparsetune.jobs.config import load_run_config

            _print_cfg(load_run_config(RunFolder.open(run)))
            return
        evaluate_run(run, rest)
    else:
        conf = _compose(overrides)
        if cfg:
            _print_cfg(conf)
            return
        evaluate_recipe(conf, overrides)


@app.command(epilog="Examples:\n\n  sparsetune bench --list\n\n  sparsetune bench lora --quick\n\n"
             "  sparsetune bench pat --rounds 5 --out bench-pat.json")
def bench(
    name: Optional[str] = typer.Argument(None, help="Benchmark name (see `sparsetune bench --list`).",
                                         show_default=False),
    quick: bool = typer.Option(False, "--quick", help="Smaller model, fewer steps: a one-minute run."),
    rounds: int = typer.Option(3, "--rounds",
                               help="Alternating rounds (A B C, A B C, …); medians and ratio spread across them."),
    list_: bool = typer.Option(False, "--list", help="List the benchmarks with one-line descriptions and exit."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the JSON results here."),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Side-by-side efficiency comparison; every variant runs in its own process, in alternating rounds;
    prints median ratios with their min–max spread."""
    if list_:
        from rich.console import Console
        from rich.table import Table

        from sparsetune.bench import list_benchmarks

        table = Table("benchmark", "description", box=None)
        for bname, desc in list_benchmarks():
            table.add_row(bname, desc)
        Console().print(table)
        return
    if not name:
        fail("missing benchmark NAME; usage: sparsetune bench NAME [--quick] [--rounds N] [--out FILE] "
             "(see `sparsetune bench --list`)")
    from sparsetune.bench import run_benchmark

    run_benchmark(name, quick=quick, out=out, overrides=list(overrides or []), rounds=rounds)


@app.command()
def recipes() -> None:
    """List recipes with one-line descriptions."""
    from rich.console import Console
    from rich.table import Table

    from sparsetune.config import list_recipes

    table = Table("recipe", "description", box=None)
    for name, desc in list_recipes():
        table.add_row(name, desc)
    Console().print(table)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
