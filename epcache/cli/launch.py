"""``epcache submit`` and ``epcache gather``: extraction and sweeps as units on SLURM, Ray or torchrun."""

from __future__ import annotations

from typing import Annotated

import typer

from epcache.cli.common import user_errors
from epcache.errors import ConfigError

__all__ = ["SUBMIT_EPILOG", "gather", "submit"]

SUBMIT_EPILOG = """Examples:
  epcache submit runs/ext --launcher slurm --partition gpu --time 240 --units 64 --parallel 16 -- \\
      extract --model dinov2_vitl14 --data /data/imagenet --out /shared/in1k.zarr --device cuda
  epcache submit runs/sweep --launcher ray --ray-address auto -- \\
      probe --store /shared/in1k.zarr --head linear,ep --layers -4: --lr 1e-3,3e-3
  epcache gather runs/ext                     # after --no-wait: check every unit, commit
  epcache submit runs/ext --only train-b000008-000016 --launcher slurm   # just the named units again

After `--` comes an ordinary `epcache extract` or `epcache probe` command (a probe's run
directory is RUNDIR). Extraction units are block ranges of the store; a sweep's units are its
layers, each with all of its configs. Every unit resumes from what is durable, so a requeued,
killed or duplicated task costs time, never a second copy."""


def submit(
    ctx: typer.Context,
    run_dir: Annotated[str, typer.Argument(metavar="RUNDIR", help="Run directory on storage every task can reach.")],
    launcher: Annotated[str, typer.Option(metavar="NAME", help="local, torchrun, slurm or ray.")] = "local",
    units: Annotated[int, typer.Option(metavar="N", help="extract: block-range units (probe: one per layer).")] = 8,
    only: Annotated[str | None, typer.Option(metavar="U,...", help="Run just these units of RUNDIR again.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the units, then gather (--no-wait: slurm returns).")] = True,
    partition: Annotated[str | None, typer.Option(metavar="NAME", help="slurm: partition.")] = None,
    time: Annotated[int, typer.Option(metavar="MIN", help="slurm: minutes per task (past it: requeued).")] = 240,
    gpus: Annotated[float, typer.Option(metavar="N", help="GPUs per slurm task / per Ray actor (0: CPU).")] = 1,
    cpus: Annotated[
        float | None, typer.Option(metavar="N", help="CPUs per slurm task / per Ray actor.", show_default="8 / 1")
    ] = None,
    decode_cpus: Annotated[
        float, typer.Option(metavar="N", help="ray: CPUs per image-decoding task of extract (0: in the actor).")
    ] = 1.0,
    mem_gb: Annotated[int | None, typer.Option(metavar="GB", help="slurm: memory per task.")] = None,
    parallel: Annotated[int | None, typer.Option(metavar="N", help="slurm: array tasks at once.")] = None,
    executor: Annotated[
        str, typer.Option(metavar="KIND", help="slurm: auto (SLURM), local (processes here) or debug (in process).")
    ] = "auto",
    ray_address: Annotated[
        str | None, typer.Option(metavar="ADDR", help="ray: cluster address (auto, ray://...).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Planning progress and per-unit failures on stderr.")] = True,
) -> None:
    """Plan an extraction or sweep into RUNDIR as units and run them with a launcher, then gather.

    epcache submit RUNDIR [OPTIONS] -- extract|probe ARGS: the command after `--` is parsed and
    checked by that command itself; without it, the unfinished units of RUNDIR are submitted again.
    """
    from epcache.launch import LaunchOptions  # lazy: keeps torch, PIL, zarr, numpy out of `epcache --help`
    from epcache.launch import submit as run_submit  # lazy: keeps torch, PIL, zarr, numpy out of `epcache --help`

    with user_errors():
        config = _captured_config(ctx, list(ctx.args))
        slurm = ray = None
        if launcher == "slurm":
            from epcache.launch.submit import _optional  # lazy: keeps torch, PIL, zarr, numpy out of `epcache --help`

            backend = _optional("epcache.launch.submitit_backend", "submitit", "slurm")
            if executor not in ("auto", "local", "debug"):
                raise ConfigError(f"--executor {executor!r} is not one of auto, local, debug")
            slurm = backend.SlurmOptions(partition=partition, time_min=time, gpus_per_task=int(gpus),
                                         cpus_per_task=int(cpus or 8), mem_gb=mem_gb, parallel=parallel,
                                         cluster=None if executor == "auto" else executor)
        elif launcher == "ray":
            from epcache.launch.ray_backend import RayOptions  # lazy: keeps torch, PIL, zarr out of `epcache --help`

            ray = RayOptions(address=ray_address, gpus_per_actor=gpus, cpus_per_actor=cpus or 1.0,
                             decode_cpus=decode_cpus)
        options = LaunchOptions(launcher=launcher, units=units, wait=wait, slurm=slurm, ray=ray, progress=progress,
                                only=tuple(u for u in (only or "").split(",") if u))
        result = run_submit(run_dir, config, options)
    if result.job_ids:
        typer.echo(f"submitted {len(result.submitted)} units as SLURM jobs {', '.join(result.job_ids[:3])}"
                   f"{' ...' if len(result.job_ids) > 3 else ''}")
    if result.rank > 0:  # torchrun: rank 0 reports the run
        return
    if result.gathered is not None:
        typer.echo(result.gathered.summary)
        typer.echo(f"run: {result.run_dir}" + ("" if result.plan.kind == "extract"
                                               else f"\nnext: epcache report {result.run_dir}"))
    elif not result.submitted:
        typer.echo(f"every unit of {result.run_dir} has finished; next: epcache gather {result.run_dir}")
    else:
        typer.echo(f"{len(result.submitted)} units submitted; when they are done: epcache gather {result.run_dir}")


def gather(
    run_dir: Annotated[str, typer.Argument(metavar="RUNDIR", help="Run directory of `epcache submit`.")],
) -> None:
    """Check that every unit of a launched run finished; commit the store or merge the sweep's rows."""
    from epcache.launch import gather as run_gather  # lazy: keeps torch, PIL, zarr, numpy out of `epcache --help`

    with user_errors():
        result = run_gather(run_dir)
    typer.echo(result.summary)


def _captured_config(ctx: typer.Context, args: list[str]) -> object | None:
    """The config of the ``extract`` / ``probe`` command after ``--`` (None: re-submit RUNDIR's plan).

    The command is parsed by the app that parsed ``submit`` (``ctx``'s root), so its own options and checks apply.
    """
    if not args:
        return None
    if args[0] not in ("extract", "probe"):
        raise ConfigError(f"epcache submit runs `extract` or `probe` (after --), not {args[0]!r}")
    from epcache.launch.capture import capturing  # lazy: keeps torch, PIL, zarr, numpy out of `epcache --help`

    with capturing() as box:
        code = ctx.find_root().command.main(args=args, prog_name="epcache", standalone_mode=False)
    if not box:  # the command's own check refused it (its message is on stderr already), or printed its help
        raise typer.Exit(code=code if isinstance(code, int) else 2)
    return box[0]
