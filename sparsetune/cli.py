"""`sparsetune` command line: Typer commands that compose Hydra recipes and run jobs.

Heavy libraries (torch, transformers, hydra) are imported inside the commands so `--help` is fast.
Every user mistake surfaces as one line on stderr and exit status 2; faults mid-run are one line too,
each with its own status (sparsetune/errors.py): 3 diverged, 4 run folder gone, 5 disk refused a
write, 130 Ctrl-C, 143 SIGTERM. SIGINT/SIGTERM never cut a run folder write in half
(sparsetune/engine/interrupts.py).
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from sparsetune.engine.interrupts import stop_on_signals
from sparsetune.errors import RunFault, UserError

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Structured-sparsity fine-tuning and compression of Transformers: S²FT, PAT, GS-LoRA, EViT, SPT, "
    "with full fine-tuning, LoRA and DoRA baselines. Every KEY=VALUE is a Hydra override.",
)

OVERRIDES = typer.Argument(None, help="Hydra overrides, e.g. recipe=s2ft_llama trainer.max_steps=20", show_default=False)
SHOW_CFG = typer.Option(False, "--cfg", help="Print the resolved job config and exit (Hydra's `--cfg job`; "
                        "`--cfg all` is the same).")
CONFIG_DIR = typer.Option(None, "--config-dir", metavar="DIR", show_default=False,
                          help="Your own option files, searched after the built-in ones: DIR/model/mine.yaml → "
                          "model=mine, DIR/recipe/mine.yaml → recipe=mine.")
CFG_VALUES = ("job", "all")  # `--cfg job` / `--cfg all`: both print the composed job config
MULTIRUN = ("-m", "--multirun")
SWEEP_OPT = typer.Option(False, *MULTIRUN, help="Sweep: expand Hydra's sweep syntax (key=a,b · range(0,3) · "
                         "glob(*) · choice(a,b)) into a grid; each point is its own run under "
                         "runs/sweeps/<name>/ (sweep.jobs=N at a time; hydra/launcher=submitit_slurm for SLURM).")
DEFAULT_FORGET_RECIPE = "gslora_vit"  # `sparsetune forget` without recipe= (GS-LoRA on the ViT base)


def fail(message: str) -> None:
    raise UserError(message)


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("sparsetune")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from sparsetune import __version__ as number
    typer.echo(f"sparsetune {number}")
    raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def _front(overrides: list[str] | None, show_cfg: bool, config_dir: str | None) -> list[str]:
    """Overrides as KEY=VALUE only: `--cfg job`/`--cfg all` leave a bare `job`/`all` among them (dropped
    here), any other bare word is a mistake; `--config-dir DIR` becomes a Hydra search path."""
    out = []
    for token in overrides or []:
        if "=" in token or token.startswith("~"):
            out.append(token)
        elif show_cfg and token in CFG_VALUES:
            continue
        elif show_cfg and token == "hydra":
            fail("--cfg hydra is not supported (sparsetune composes without Hydra's runtime config); use --cfg job")
        else:
            fail(f"'{token}' is not a KEY=VALUE override (--cfg takes an optional 'job' or 'all')")
    if config_dir is not None:
        from pathlib import Path

        from sparsetune.config.compose import searchpath_override

        folder = Path(config_dir).expanduser()
        if not folder.is_dir():
            fail(f"--config-dir: {config_dir} is not a folder")
        out.append(searchpath_override([folder]))
    return out


def _folder_value(overrides: list[str], key: str) -> str | None:
    """The run folder of `run=` / `resume=`, as the user meant it with or without quotes (`run="my run"`
    in a shell that kept the quotes, or Hydra-style `run='…'`); None when the key is not given."""
    from sparsetune.config.overrides import unquote

    value = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")), None)
    return None if value is None else unquote(value)


def _compose(overrides: list[str]):
    from sparsetune.jobs.config import compose_job

    return compose_job(overrides)


def _resolve(overrides: list[str] | None, extra: list[str] | None = None):
    """Compose; `resume=RUN` reuses that run's stored config."""
    overrides = list(overrides or []) + list(extra or [])
    resume = _folder_value(overrides, "resume")
    if resume:
        # the stored config plus only the overrides that cannot change the run so far (see jobs/resume.py)
        from sparsetune.jobs.resume import resume_config

        return resume_config(resume, overrides), overrides
    return _compose(overrides), overrides


def _print_cfg(cfg) -> None:
    from sparsetune.config import to_yaml

    typer.echo(to_yaml(cfg))


def _run_training(overrides, show_cfg: bool, job: str, extra: list[str] | None = None, adjust=None) -> None:
    cfg, overrides = _resolve(overrides, extra)
    if adjust is not None:  # settings that need the composed config (forget's class names)
        overrides = [*overrides, *adjust(cfg)]
    if show_cfg:
        _print_cfg(cfg)
        return
    from sparsetune.jobs import run_job

    run_job(cfg, overrides, job)


def _sweep(job: str, overrides: list[str], show_cfg: bool, child_args: list[str] | None = None) -> None:
    """`JOB -m …`: the grid from Hydra's sweep syntax, each point the normal command in its own process
    (sparsetune/jobs/sweep/); exit 1 when a point failed."""
    from sparsetune.jobs.sweep import run_sweep

    rc = run_sweep(job, overrides, child_args or [], show_cfg=show_cfg)
    if rc:
        raise typer.Exit(rc)


@app.command(epilog="Examples:\n\n  sparsetune train recipe=s2ft_llama\n\n"
             "  sparsetune train recipe=lora_llama trainer.max_steps=20 method.r=8\n\n"
             "  sparsetune train resume=runs/20261127-101500-lora_llama\n\n"
             "  sparsetune train resume=runs/20261127-101500-lora_llama trainer.max_steps=2000  "
             "(with resume= only trainer.max_steps/eval_every/save_every/log_every/device/threads, logger.* "
             "and eval.* may change; the lr schedule is rebuilt for a new max_steps)")
def train(overrides: Optional[list[str]] = OVERRIDES, cfg: bool = SHOW_CFG,
          config_dir: Optional[str] = CONFIG_DIR, multirun: bool = SWEEP_OPT) -> None:
    """Fine-tune a model (full, lora, dora, s2ft, …) and evaluate it on the held-out split."""
    if multirun:
        return _sweep("train", _front(overrides, cfg, config_dir), cfg)
    _run_training(_front(overrides, cfg, config_dir), cfg, "train")


@app.command(epilog="Examples:\n\n  sparsetune prune recipe=pat_llama method.prune_ratio=0.25")
def prune(overrides: Optional[list[str]] = OVERRIDES, cfg: bool = SHOW_CFG,
          config_dir: Optional[str] = CONFIG_DIR, multirun: bool = SWEEP_OPT) -> None:
    """Pruning-aware tuning, then physical pruning and export of a smaller stock HF model."""
    if multirun:
        return _sweep("prune", _front(overrides, cfg, config_dir), cfg)
    _run_training(_front(overrides, cfg, config_dir), cfg, "prune")


@app.command(epilog="Examples:\n\n  sparsetune forget --classes 3,7\n\n"
             "  sparsetune forget --classes shirt,coat\n\n"
             "  sparsetune forget --classes 0,1 --classes 2,3 recipe=gslora_vit")
def forget(
    overrides: Optional[list[str]] = OVERRIDES,
    classes: Optional[list[str]] = typer.Option(
        None, "--classes", help="Comma-separated class ids or names (shirt,coat); repeat for a sequence."),
    cfg: bool = SHOW_CFG,
    config_dir: Optional[str] = CONFIG_DIR,
    multirun: bool = SWEEP_OPT,
) -> None:
    """Continually forget classes from a vision Transformer (GS-LoRA / GS-LoRA++)."""
    adjust = None
    if classes:
        if any(not group.strip(" ,") for group in classes):
            fail(f"--classes expects comma-separated class ids or names, got {classes}")

        def adjust(conf) -> list[str]:
            names = []
            if any(not c.strip().lstrip("-").isdigit() for g in classes for c in g.split(",") if c.strip()):
                from sparsetune.data.vision_sources import class_names

                names = class_names(conf.data)
            from sparsetune.data.forgetting import resolve_classes

            tasks = resolve_classes(classes, names)
            conf.forget.classes = tasks
            return ["forget.classes=" + str(tasks).replace(" ", "")]
    overrides = _front(overrides, cfg, config_dir)
    if not any(o.startswith(("recipe=", "resume=")) for o in overrides):
        overrides.insert(0, f"recipe={DEFAULT_FORGET_RECIPE}")
    if multirun:  # each point resolves --classes itself (class names depend on its data set)
        return _sweep("forget", overrides, cfg, [a for group in classes or [] for a in ("--classes", group)])
    _run_training(overrides, cfg, "forget", adjust=adjust)


@app.command("eval", epilog="Examples:\n\n  sparsetune eval run=runs/20261127-101500-lora_llama\n\n"
             "  sparsetune eval recipe=lora_llama eval.limit=50")
def evaluate(overrides: Optional[list[str]] = OVERRIDES, cfg: bool = SHOW_CFG,
             config_dir: Optional[str] = CONFIG_DIR, multirun: bool = SWEEP_OPT) -> None:
    """Evaluate a finished run (`run=DIR`) or a recipe's untuned model; prints per-task accuracy."""
    overrides = _front(overrides, cfg, config_dir)
    if multirun:
        return _sweep("eval", overrides, cfg)
    run = _folder_value(overrides, "run")
    if run == "":
        fail("run= needs a run folder, e.g. run=runs/20261127-101500-lora_llama")
    if run:
        rest = [o for o in overrides if not o.startswith("run=")]
        if cfg:
            from sparsetune.engine.run_folder import RunFolder
            from sparsetune.jobs.config import load_run_config

            _print_cfg(load_run_config(RunFolder.open(run)))
            return
        from sparsetune.jobs.evaluate import evaluate_run

        evaluate_run(run, rest)
    else:
        conf = _compose(overrides)  # checked before the eval job (and torch) is imported
        if cfg:
            _print_cfg(conf)
            return
        from sparsetune.jobs.evaluate import evaluate_recipe

        evaluate_recipe(conf, overrides)


@app.command(epilog="Examples:\n\n  sparsetune sweep train recipe=s2ft_llama method.d_ratio=0.01,0.02,0.05 seed=0,1\n\n"
             "  sparsetune sweep train recipe=lora_llama method.r=4,8,16 sweep.jobs=2\n\n"
             "  sparsetune sweep eval run=runs/a,runs/b eval.limit=100\n\n"
             "(the same as `sparsetune JOB -m …`; see docs/sweeps.md)")
def sweep(
    job: str = typer.Argument(..., metavar="JOB", help="train, prune, forget or eval."),
    overrides: Optional[list[str]] = OVERRIDES,
    classes: Optional[list[str]] = typer.Option(None, "--classes", help="forget only: as `sparsetune forget --classes`."),
    cfg: bool = typer.Option(False, "--cfg", help="Print every point's overrides and exit."),
    config_dir: Optional[str] = CONFIG_DIR,
) -> None:
    """Run a grid of runs: `sparsetune sweep JOB …` is `sparsetune JOB -m …`."""
    from sparsetune.jobs.sweep import SWEEP_JOBS

    if job not in SWEEP_JOBS:
        fail(f"sweep: unknown job '{job}'; sweeps work with {', '.join(SWEEP_JOBS)}")
    if classes and job != "forget":
        fail("--classes goes with `sparsetune sweep forget`")
    overrides = _front(overrides, cfg, config_dir)
    if job == "forget" and not any(o.startswith("recipe=") for o in overrides):
        overrides.insert(0, f"recipe={DEFAULT_FORGET_RECIPE}")
    _sweep(job, overrides, cfg, [a for group in classes or [] for a in ("--classes", group)])


@app.command("export", epilog="Examples:\n\n  sparsetune export run=runs/20261127-101500-lora_llama --format merged\n\n"
             "  sparsetune export run=runs/20261127-101500-lora_llama --format peft --out lora-peft\n\n"
             "  sparsetune export run=runs/20261127-101500-s2ft_llama --format merged --out s2ft-merged")
def export(
    overrides: Optional[list[str]] = typer.Argument(None, metavar="run=RUN_DIR", show_default=False,
                                                    help="The finished run folder to export."),
    format_: str = typer.Option("merged", "--format", metavar="merged|adapter|peft",
                                help="merged: a stock HF folder; adapter: the method's own export; "
                                "peft: a PEFT adapter folder (LoRA/DoRA)."),
    out: Optional[str] = typer.Option(None, "--out", metavar="DIR", show_default=False,
                                      help="Destination folder (default RUN/export-FORMAT); must not exist or be empty."),
) -> None:
    """Export a finished run (`run=DIR`) as a portable folder with a model card (README.md)."""
    overrides = _front(overrides, False, None)
    run = _folder_value(overrides, "run")
    extra = [o for o in overrides if not o.startswith("run=")]
    if not run:
        fail("export needs run=RUN_DIR, e.g. sparsetune export run=runs/20261127-101500-lora_llama --format merged")
    if extra:
        fail(f"export takes only run=DIR, --format and --out; got: {' '.join(extra)}")
    from sparsetune.jobs.config import EXPORT_FORMATS

    if format_ not in EXPORT_FORMATS:  # before the export job imports torch
        fail(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got '{format_}'")
    from sparsetune.jobs.export import export_run

    dest = export_run(run, format_, out)
    typer.echo(f"exported {format_} to {dest}")


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
    variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated variants to run "
                                           "(the baseline always runs too); default: all.", show_default=False),
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

    only = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    run_benchmark(name, quick=quick, out=out, overrides=list(overrides or []), rounds=rounds, variants=only)


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


def _normalise_argv(args: list[str]) -> list[str]:
    """`--cfg=job` → `--cfg job` (the flag takes an optional value; see `_front`)."""
    out = []
    for arg in args:
        if arg.startswith("--cfg="):
            out += ["--cfg", arg.split("=", 1)[1] or "job"]
        else:
            out.append(arg)
    return out


def _usage_line(exc: Exception, args: list[str] | None = None) -> str:
    """One line for a command-line mistake: the message, and where to read the usage."""
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None) or "sparsetune"
    command = next((a for a in args or [] if not a.startswith("-")), None)
    if where == "sparsetune" and command in {c.name or c.callback.__name__ for c in app.registered_commands}:
        where = f"sparsetune {command}"
    if getattr(exc, "option_name", None) in MULTIRUN:
        if where == "sparsetune":
            return (f"error: {exc.option_name}: sweeps (Hydra multirun) go after the command, e.g. "
                    "sparsetune train -m method.r=4,8 seed=0,1 (train, prune, forget, eval)")
        return (f"error: {exc.option_name}: `{where}` does not sweep; sweeps (-m) work with "
                "train, prune, forget and eval")
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(str(message).split())
    message = message if message.endswith(("?", ".")) else message + "."
    return f"error: {message} See '{where} --help'."


def _click_error(exc: Exception):
    """Typer's bundled click raises its own exception classes (typer._click.exceptions), not
    the top-level `click` package's; accept both."""
    bases = []
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        bases.append(TyperClickException)
    except ImportError:  # pragma: no cover - older typer
        pass
    if "click" in sys.modules:
        bases.append(sys.modules["click"].ClickException)
    return isinstance(exc, tuple(bases)) if bases else False


def _interrupted(guard, exc: BaseException | None = None) -> None:
    """Ctrl-C / SIGTERM: one line (a training loop's says its step, last good checkpoint and resume
    command) and 130 / 143. Typer turns a KeyboardInterrupt into a bare status 130: the guard kept it."""
    raised = exc if hasattr(exc, "exit_code") else getattr(guard, "raised", None)
    typer.echo(f"error: {raised or 'interrupted (Ctrl-C)'}", err=True)
    sys.exit(getattr(raised, "exit_code", 130))


def main(argv: list[str] | None = None) -> None:
    args = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    with stop_on_signals() as guard:
        _main(args, guard)


def _main(args: list[str], guard) -> None:
    try:
        rc = app(args, prog_name="sparsetune", standalone_mode=False)
        if rc == 130:
            _interrupted(guard)
        sys.exit(rc if isinstance(rc, int) else 0)
    except (UserError, RunFault) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt) as exc:
        _interrupted(guard, exc)
    except OSError as exc:
        from sparsetune.engine.run_folder import DISK_ERRNOS, write_fault

        if exc.errno not in DISK_ERRNOS:
            raise
        typer.echo(f"error: {write_fault(exc.filename or 'a file', exc)}", err=True)
        sys.exit(5)
    except Exception as exc:
        if not _click_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `sparsetune`: the help is already printed
            sys.exit(0)
        if isinstance(getattr(exc, "exit_code", None), int) and exc.exit_code != 2 and not hasattr(exc, "ctx"):
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)  # e.g. a file error
            sys.exit(exc.exit_code)
        typer.echo(_usage_line(exc, args), err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
