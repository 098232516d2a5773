"""The training loop every job shares: accumulation, clipping, autocast (bf16, fp16 with a grad
scaler), schedule, periodic eval, atomic checkpoints, exact resume and a divergence guard — in one
process or in each rank of a torch.distributed group (engine/distributed.py), where rank r of W
takes every W-th micro-batch of the same seeded order, so W ranks × grad_accum g make the same
optimiser step as one process with W·g accumulation.

Divergence (exit 3, `TrainingDivergedError`): a non-finite loss or gradient norm, weights or optimiser
state that are not finite when a checkpoint is due (no checkpoint is written), or a loss that sits at
its uniform-prediction value ln(classes) with a zero gradient norm for `STUCK_STEPS` steps in a row
(no checkpoint is written on such steps). The run stops with one line naming the last good
checkpoint, and summary.json says `"status": "diverged"` with the step and that checkpoint.

Faults: SIGTERM or a first Ctrl-C stop the run after the write in progress (exit 143 / 130), a
second Ctrl-C at once; a write the disk refuses (exit 5) or a run folder deleted mid-run (exit 4)
stop it too. Each is one line with the step, the last good checkpoint and the resume command. The
run folder's lock (engine/run_folder.py) is taken again on resume, in `restore`, before anything is
written, together with a free-space check.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsetune.config.checks import check_precision
from sparsetune.engine import distributed as dist
from sparsetune.engine.checkpoint import (
    CheckpointError,
    NonFiniteStateError,
    latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sparsetune.engine.interrupts import stop_on_signals
from sparsetune.engine.measure import peak_memory_mb
from sparsetune.engine.run_folder import RunFolder, owning_run
from sparsetune.errors import (
    RunFault,
    RunFolderGoneError,
    TrainingDivergedError,
    WriteFaultError,
)

STUCK_STEPS = 3  # steps in a row at the uniform-prediction loss with zero gradient that count as diverged
STUCK_RTOL = 1e-4  # how close to ln(classes) "at the uniform-prediction loss" is


@dataclass
class LoopState:
    """Everything about progress that a checkpoint must carry for an exact resume."""

    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch_index: int = 0  # micro-batches consumed in `epoch`
    train_losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    last_eval: dict[str, Any] = field(default_factory=dict)


LOOP_FIELDS = frozenset(LoopState.__dataclass_fields__)
GROUP_WINDOW = 64  # micro-batches whose items are sorted together under trainer.group_by_length


def grouped_by_length(order: list[int], lengths: Sequence[int], batch_size: int, gen: torch.Generator,
                      window: int = GROUP_WINDOW) -> list[int]:
    """`order` regrouped so that each micro-batch holds items of similar length: within windows of
    `window` micro-batches the items are sorted by length (longest first), then the full micro-batches
    are shuffled. Batches pad to their longest item, so mixed lengths waste compute on padding; the items
    an epoch sees are unchanged, and the same seed gives the same order (resume, ranks). A trailing
    partial micro-batch stays last, where an epoch drops it."""
    span = batch_size * window
    grouped: list[int] = []
    for start in range(0, len(order), span):
        grouped += sorted(order[start:start + span], key=lambda i: -lengths[i])
    full = len(grouped) // batch_size
    batches = [grouped[b * batch_size:(b + 1) * batch_size] for b in range(full)]
    return [i for b in torch.randperm(full, generator=gen).tolist() for i in batches[b]] + grouped[full * batch_size:]


class BatchStream:
    """Seeded shuffled micro-batches whose position (epoch, index) can be saved and restored.

    `num_workers > 0` (trainer.num_workers): a pool of that many threads loads and collates the next
    2 x num_workers micro-batches ahead. Which examples form a batch and in what order is decided
    here, from the seeded permutation, exactly as without workers; the position in `state` advances
    only when a batch is handed out, so a checkpoint records exactly what was consumed. Prefetched
    batches for other positions (after a restore rewrote `state`) are dropped and loaded again.
    Threads, not processes: collating is mostly tensor work, and nothing is pickled or forked.

    Ranks (`rank` of `world`): the position in `state` is global, the same on every rank; rank r takes
    the micro-batches at global offsets r, r + W, r + 2W, … of the one seeded order, and each `next()`
    moves the global position on by W. So the micro-batches of one optimiser step across all ranks are
    exactly those one process with W times the accumulation would use, and a checkpoint's position is
    valid for any world size.
    """

    def __init__(self, dataset, collate: Callable, batch_size: int, seed: int, state: LoopState,
                 num_workers: int = 0, rank: int = 0, world: int = 1, lengths: Sequence[int] | None = None):
        self.dataset, self.collate, self.batch_size, self.seed, self.state = dataset, collate, batch_size, seed, state
        self.lengths = lengths  # per-item token counts: micro-batches grouped by length (grouped_by_length)
        self.rank, self.world = rank, world
        n = len(dataset)
        self.per_epoch = n // batch_size if n >= batch_size else 1
        self._orders: dict[int, list[int]] = {}
        self.num_workers = int(num_workers or 0)
        self._pool = None
        self._pending: dict[tuple[int, int], Any] = {}  # (epoch, index) -> Future of the collated batch

    def _epoch_order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=gen).tolist()
        return order if self.lengths is None else grouped_by_length(order, self.lengths, self.batch_size, gen)

    def _position(self, epoch: int, index: int) -> tuple[int, int]:
        return (epoch + 1, 0) if index >= self.per_epoch else (epoch, index)

    def _advance(self, pos: tuple[int, int], k: int) -> tuple[int, int]:
        """The global position `k` micro-batches after `pos` (crossing epoch ends as one process would)."""
        for _ in range(k):
            pos = self._position(pos[0], pos[1] + 1)
        return pos

    def _indices(self, epoch: int, index: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = self._epoch_order(epoch)
        return self._orders[epoch][index * self.batch_size:(index + 1) * self.batch_size]

    def _load(self, idx: list[int]) -> dict[str, torch.Tensor]:
        return self.collate([self.dataset[i] for i in idx])

    def _prefetch(self, epoch: int, index: int) -> None:
        """Keep futures for this rank's next 2 x num_workers positions from (epoch, index), and only those."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="sparsetune-batches")
        wanted, pos = [], (epoch, index)
        for _ in range(2 * self.num_workers):
            wanted.append(pos)
            pos = self._advance(pos, self.world)
        for key in [k for k in self._pending if k not in wanted]:
            self._pending.pop(key).cancel()
        for key in wanted:
            if key not in self._pending:
                self._pending[key] = self._pool.submit(self._load, self._indices(*key))

    def next(self) -> dict[str, torch.Tensor]:
        st = self.state
        pos = self._position(st.epoch, st.batch_index)  # the next global micro-batch
        mine = self._advance(pos, self.rank)
        if not self.num_workers:
            batch = self._load(self._indices(*mine))
        else:
            self._prefetch(*mine)
            batch = self._pending.pop(mine).result()
        last = self._advance(pos, self.world - 1)  # the last one any rank takes this round
        st.epoch, st.batch_index = last[0], last[1] + 1
        if self.num_workers:
            self._prefetch(*self._advance(mine, self.world))
        return batch

    def close(self) -> None:
        """Stop the prefetch threads (queued loads are dropped)."""
        if self._pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=False)
            self._pool = None


class LossStep(torch.nn.Module):
    """One micro-batch's task loss and the method's regularisers as a module.

    DDP and FSDP2 act through the forward of the module they wrap; the loss functions call parts of
    the model (body, then the output head on labelled positions only), so the wrapped module is this
    one, and every parameter a step uses (regularisers included) is reached inside its forward."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, method):
        super().__init__()
        self.model, self.loss_fn, self.method = model, loss_fn, method

    def forward(self, batch: dict[str, Any]):
        loss_sum, count, outputs = self.loss_fn(self.model, batch)
        extras = self.method.extra_loss(self.model, batch, outputs)
        return loss_sum, count, outputs, extras


def _to(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _units(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry a label (LM) or images (vision) in a micro-batch: the loss normaliser."""
    if "input_ids" in batch:
        return int((batch["labels"][:, 1:] != -100).sum())
    return int(batch["labels"].numel())


class TrainLoop:
    def __init__(self, *, model, method, optimizer, scheduler, stream: BatchStream, loss_fn, tcfg,
                 total_steps: int, logger, checkpoint_dir, device, evaluate: Callable | None = None,
                 progress=None, extra_state: Callable[[], dict] | None = None, step_module=None):
        """`step_module`: the `LossStep` of `model`, wrapped in DDP or sharded with FSDP2 when training
        in several processes (engine/distributed.py); a plain `LossStep` by default."""
        self.model, self.method, self.optimizer, self.scheduler = model, method, optimizer, scheduler
        self.stream, self.loss_fn, self.tcfg, self.total_steps = stream, loss_fn, tcfg, total_steps
        self.logger, self.checkpoint_dir, self.device = logger, checkpoint_dir, device
        self.evaluate, self.progress, self.extra_state = evaluate, progress, extra_state
        self.step_module = step_module if step_module is not None else LossStep(model, loss_fn, method)
        self.sharded = any(dist.is_sharded(p) for p in model.parameters())
        self.state = stream.state
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.suspect = False  # the last step sat at the uniform-prediction loss with zero gradient
        self.scaler = None
        check_precision(tcfg.precision, str(torch.device(device)))
        if tcfg.precision == "fp16":
            if self.sharded:
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

                self.scaler = ShardedGradScaler()  # all-reduces found-inf across the shards
            else:
                self.scaler = torch.amp.GradScaler("cuda")

    # --- the run folder ----------------------------------------------------------------------
    def _run_folder(self) -> RunFolder | None:
        """The run folder the checkpoints go into: the one this process has locked, else the nearest
        folder above `checkpoint_dir` with a config.yaml (a forget run keeps one checkpoint folder per task)."""
        if self.checkpoint_dir is None:
            return None
        key = owning_run(self.checkpoint_dir)
        if key is not None:
            return RunFolder(Path(key))
        for folder in list(Path(self.checkpoint_dir).parents)[:3]:
            if (folder / "config.yaml").is_file():
                return RunFolder(folder)
        return None

    def _where(self) -> str:
        """"; last good checkpoint: …; resume with: …" for a one-line message."""
        good = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        if good is None:
            return "; no checkpoint was written yet"
        run = self._run_folder()
        command = run.resume_command() if run is not None else None
        return f"; last good checkpoint: {good}" + (f"; resume with: {command}" if command else "")

    def _stopped(self, what: str) -> str:
        return f"{what} at step {self.state.step} of {self.total_steps}{self._where()}"

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Every rank calls this (FSDP gathers full tensors collectively); rank 0 alone writes, so a
        checkpoint always holds full, unsharded state whatever the world size."""
        model = {k: dist.full_tensor(v.detach()).cpu().clone()
                 for k, v in self.method.trainable_state_dict(self.model).items()}
        if self.sharded:  # full optimiser state keyed by parameter name (DCP's state-dict API)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optim = {"format": "fqn-full", "state": get_optimizer_state_dict(
                self.step_module, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))}
        else:
            optim = self.optimizer.state_dict()
        if dist.is_main():
            state = {
                "loop": asdict(self.state),
                "model": model,
                "method": self.method.state_dict(),
                "optimizer": optim,
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "total_steps": self.total_steps,
                "world_size": dist.world_size(),
                "grad_accum": int(self.tcfg.grad_accum),
            }
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            if self.extra_state:
                state.update(self.extra_state())
        verdict = None  # rank 0's outcome, shared with every rank (the broadcast is also the barrier)
        try:
            if dist.is_main():
                save_checkpoint(self.checkpoint_dir, self.state.step, state)
        except NonFiniteStateError as exc:
            verdict = ("diverged", str(exc))
        except RunFault as exc:
            verdict = (type(exc).__name__, str(exc))
            if not dist.active():
                raise
        verdict = dist.broadcast_object(verdict)
        if verdict is None:
            return
        kind, message = verdict
        if kind == "diverged":
            self._diverged(f"after the update, {message}", step=self.state.step)
        raise {"RunFolderGoneError": RunFolderGoneError}.get(kind, WriteFaultError)(message)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Load a checkpoint into the live objects. Rank 0 first becomes the run folder's one writer
        (RunFolderBusyError, exit 2, while another process writes it) and checks its free space:
        this comes before anything on resume writes into the folder."""
        run = self._run_folder()
        if run is not None and dist.is_main():
            run.claim_for_resume()
        missing = set(ckpt["model"]) - {n for n, _ in self.model.named_parameters()}
        if missing:
            raise CheckpointError(f"checkpoint does not match the model: unknown tensors {sorted(missing)[:3]}")
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for name, value in ckpt["model"].items():
                dist.load_into(params[name], value)
        optim = ckpt["optimizer"]
        try:
            if isinstance(optim, dict) and optim.get("format") == "fqn-full":
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(self.step_module, self.optimizer, optim_state_dict=optim["state"],
                                         options=StateDictOptions(full_state_dict=True))
            elif self.sharded:
                raise CheckpointError("this checkpoint was written without FSDP; resume it with trainer.strategy=ddp")
            else:
                self.optimizer.load_state_dict(optim)
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and "scaler" in ckpt:
                self.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint does not match this run's optimiser/schedule: {exc}") from None
        if ckpt.get("total_steps") not in (None, self.total_steps) and getattr(self.scheduler, "lr_lambdas", None):
            # the run was extended (trainer.max_steps on resume): the schedule is rebuilt for the new
            # total, so the lr from this step on is the new schedule's (not the saved one's)
            step = self.scheduler.last_epoch
            lrs = [base * fn(step) for base, fn in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            self.scheduler._last_lr = lrs
        for key, value in ckpt["loop"].items():
            if key in LOOP_FIELDS:
                setattr(self.state, key, value)
        set_rng_state(ckpt["rng"])

    # --- one optimiser step ------------------------------------------------------------------
    def _autocast(self):
        if self.tcfg.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.tcfg.precision == "bf16" else torch.float16
            return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool):
        """DDP all-reduces on the last micro-batch of a step only; the others accumulate locally."""
        no_sync = getattr(self.step_module, "no_sync", None)
        return no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        micro = [_to(self.stream.next(), self.device) for _ in range(self.tcfg.grad_accum)]
        world = dist.world_size()
        # the loss is divided by the units of the whole optimiser step over all ranks; DDP/FSDP average
        # gradients over ranks, hence the factor `world`: the step is exactly one process's W·g step
        local_units = sum(_units(mb) for mb in micro)
        units = max(1, int(dist.all_reduce_sum([local_units])[0]))
        task_loss, extras_log = 0.0, {}
        start = time.perf_counter()
        for i, mb in enumerate(micro):
            with self._no_sync(i == len(micro) - 1):
                with self._autocast():
                    loss_sum, _, _, extras = self.step_module(mb)
                loss = loss_sum * world / units
                for name, value in extras.items():
                    loss = loss + value / len(micro)
                    extras_log[name] = extras_log.get(name, 0.0) + float(value.detach()) / len(micro)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            task_loss += float(loss_sum.detach()) / units
        if world > 1:  # what is logged is the step's loss over all ranks (extras: their mean)
            names = sorted(extras_log)
            sums = dist.all_reduce_sum([task_loss, *(extras_log[n] for n in names)])
            task_loss = sums[0]
            extras_log = {n: v / world for n, v in zip(names, sums[1:])}
        if not math.isfinite(task_loss):
            self._diverged(f"loss is {task_loss}")
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.tcfg.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.tcfg.max_grad_norm)
            grad_norm = float(dist.full_tensor(norm))
            if not math.isfinite(grad_norm) and self.scaler is None:  # fp16: the scaler skips the step
                self._diverged(f"gradient norm is {grad_norm}")
        self.suspect = self._at_uniform(task_loss) and self._grad_norm(grad_norm) == 0.0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        self.state.step += 1
        # before the schedule moves on: a method's after-step work (GS-LoRA's proximal threshold,
        # lr x alpha) uses the rate this step used, not the next step's
        self.method.on_step(self.state.step, self.total_steps)
        self.scheduler.step()
        rate_key = "tokens_per_s" if "input_ids" in micro[0] else "images_per_s"
        n_items = sum(int(mb["attention_mask"].sum()) if "attention_mask" in mb else int(mb["labels"].numel())
                      for mb in micro)
        metrics = {
            "loss": task_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "step_time_s": elapsed,
            rate_key: n_items / elapsed,
            "peak_memory_mb": peak_memory_mb(self.device),
            **{f"loss/{k}": v for k, v in extras_log.items()},
            **self.method.metrics(),
        }
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        return metrics

    def _uniform_loss(self) -> float | None:
        """ln(classes): the loss of a model that predicts every token (class) with equal probability."""
        if not hasattr(self, "_uniform"):
            model = self.model
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            weight = getattr(head, "weight", None)
            config = getattr(model, "config", None)
            n = weight.shape[0] if weight is not None else (getattr(config, "num_labels", None)
                                                           or getattr(config, "vocab_size", None))
            self._uniform = math.log(n) if n and n > 1 else None
        return self._uniform

    def _at_uniform(self, loss: float) -> bool:
        uniform = self._uniform_loss()
        return uniform is not None and abs(loss - uniform) <= STUCK_RTOL * uniform

    def _grad_norm(self, known: float | None) -> float:
        """The step's gradient norm (computed here when clipping is off); call before zero_grad."""
        if known is not None:
            return known
        norm = torch.nn.utils.clip_grad_norm_(self.params, float("inf"))  # scales by 1: measures only
        return float(dist.full_tensor(norm))

    def _diverged(self, what: str, step: int | None = None) -> None:
        """Stop the run: one line naming the last good checkpoint; summary.json says it diverged."""
        step = self.state.step + 1 if step is None else step
        good = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        where = f"; last good checkpoint: {good}" if good else "; no checkpoint was written yet"
        run = self._run_folder()
        if run is not None and dist.is_main():
            summary = {"status": "diverged", "diverged_at_step": step, "reason": what,
                       "last_good_checkpoint": str(good) if good else None, **summarise(self.state)}
            try:
                run.write_summary(summary)
            except (OSError, RunFault):
                pass  # the one line below still says what happened
        raise TrainingDivergedError(f"training diverged at step {step}: {what}{where} (try a lower trainer.lr)")

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> LoopState:
        """Train to `total_steps`. SIGINT/SIGTERM, a refused write and a vanished run folder end it with
        one line that names the step, the last good checkpoint and the resume command."""
        with stop_on_signals(self._stopped):
            try:
                return self._run()
            except RunFolderGoneError as exc:
                raise RunFolderGoneError(f"{exc} (at step {self.state.step})") from None
            except WriteFaultError as exc:
                if "resume with" in str(exc) or self.checkpoint_dir is None:
                    raise
                where = self._where().replace("; resume with", "; free some space, then resume with")
                raise WriteFaultError(f"{exc} (at step {self.state.step}){where}") from None

    def _run(self) -> LoopState:
        self.model.train()
        task = self.progress.add_task("train", total=self.total_steps, completed=self.state.step,
                                      loss=float("nan"), rate="") if self.progress else None
        stuck = 0
        while self.state.step < self.total_steps:
            metrics = self.train_step()
            stuck = stuck + 1 if self.suspect else 0
            st = self.state
            st.train_losses.append(metrics["loss"])
            st.step_times.append(metrics["step_time_s"])
            st.throughputs.append(metrics.get("tokens_per_s", metrics.get("images_per_s", 0.0)))
            last = st.step == self.total_steps
            if self.evaluate and self.tcfg.eval_every and st.step % self.tcfg.eval_every == 0 and not last:
                results = self.evaluate(self.model)  # rank 0 only (see jobs/train.py); the others wait
                st.last_eval = results
                metrics.update({f"eval/{t}/{m}": v for t, r in results.items() for m, v in r.items()
                                if isinstance(v, (int, float))})
                self.model.train()
                dist.barrier()
            if st.step % max(1, self.tcfg.log_every) == 0 or last:
                self.logger.log(metrics, st.step)
            if stuck >= STUCK_STEPS or (stuck and last):
                self._diverged(f"the loss has sat at {metrics['loss']:.6g}, a uniform prediction "
                               f"(ln {round(math.exp(self._uniform_loss()))}), with a zero gradient norm for "
                               f"{stuck} step{'s' if stuck > 1 else ''}", step=st.step - stuck + 1)
            if ((self.tcfg.save_every and st.step % self.tcfg.save_every == 0) or last) and not stuck:
                self.checkpoint()
            if task is not None:
                rate = metrics.get("tokens_per_s") or metrics.get("images_per_s", 0.0)
                unit = "tok/s" if "tokens_per_s" in metrics else "img/s"
                self.progress.update(task, completed=st.step, loss=metrics["loss"], rate=f"{rate:,.0f} {unit}")
                if not self.progress.console.is_terminal and (st.step % max(1, self.total_steps // 20) == 0 or last):
                    # logs and CI see no live bar: print a plain line every 5% instead
                    self.progress.console.print(f"step {st.step}/{self.total_steps} loss {metrics['loss']:.4f} "
                                                f"{rate:,.0f} {unit} {metrics['step_time_s']:.2f} s/step")
        return self.state


def summarise(state: LoopState, warmup: int = 1) -> dict[str, float]:
    """Train figures for summary.json: final loss (mean of the last 10 steps), median step time."""
    times = state.step_times[warmup:] or state.step_times
    tail = state.train_losses[-10:]
    return {
        "steps": state.step,
        "train_loss": float(statistics.fmean(tail)) if tail else float("nan"),
        "final_step_loss": state.train_losses[-1] if state.train_losses else float("nan"),
        "step_time_s": float(statistics.median(times)) if times else float("nan"),
        "throughput": float(statistics.median(state.throughputs[warmup:] or state.throughputs or [0.0])),
    }
