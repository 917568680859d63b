"""The `prunekit` command line: a thin click layer over the library functions."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time

import click

from .batching import GROUP_BATCHES
from .bench import BenchSettings
from .distill import DistillSettings
from .distributed import is_main_process, launched_size
from .errors import PrunekitError
from .evaluate import EvalSettings
from .export import ExportSettings
from .search import METHODS, SearchSettings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def settings_option(settings_cls):
    """``click.option`` for a verb whose options are the fields of ``settings_cls``: the default is
    the field's, so each default is written once, in the settings dataclass the library reads."""
    defaults = {f.name: f.default for f in dataclasses.fields(settings_cls) if f.default is not dataclasses.MISSING}

    def option(*decls: str, **kwargs):
        dest = next((d for d in decls if not d.startswith("-")), None) or \
            max((d for d in decls if d.startswith("--")), key=len)[2:].replace("-", "_")
        if "default" in kwargs or dest not in defaults:
            raise TypeError(f"{dest}: the default is {settings_cls.__name__}.{dest}'s (a field with a default)")
        return click.option(*decls, default=defaults[dest], **kwargs)

    return option


search_option = settings_option(SearchSettings)
distill_option = settings_option(DistillSettings)
export_option = settings_option(ExportSettings)
bench_option = settings_option(BenchSettings)
eval_option = settings_option(EvalSettings)


def _backend_help() -> tuple[str, str]:
    """The --backend help of bench and eval, listed from the backends' registry (no list typed by hand)."""
    from .backends import CPU_BACKENDS, CUDA_BACKENDS
    from .bench import DEFAULT_BACKENDS

    cpu, cuda = ", ".join(CPU_BACKENDS), ", ".join(CUDA_BACKENDS)
    cuda_only = ", ".join(b for b in CUDA_BACKENDS if b not in CPU_BACKENDS)
    bench = (f"Backend(s) to time (repeatable or comma-separated). cpu: {cpu}; cuda: {cuda}. Default: every one that "
             f"runs on the device (cuda: {', '.join(DEFAULT_BACKENDS['cuda'])}).")
    eval_ = (f"Score each model through these backends too (repeatable or comma-separated; the rows sit side by side): "
             f"{cpu} (cuda also: {cuda_only}). Default: the model in PyTorch fp32 (an .onnx file: as exported).")
    return bench, eval_


BENCH_BACKEND_HELP, EVAL_BACKEND_HELP = _backend_help()


def _friendly(fn):
    """Turn user mistakes into one line on stderr and exit status 2; Ctrl-C into a resume hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PrunekitError as e:
            if is_main_process():  # under torchrun every process meets the error; one says it
                click.echo(f"error: {e}", err=True)
            else:
                time.sleep(2)  # torchrun stops the others when one exits: give rank 0 the time to say it
            _exit(2)
        except KeyboardInterrupt:
            if is_main_process():
                click.echo("interrupted: run the same command with --resume to continue from the last checkpoint", err=True)
            _exit(130)

    return wrapper


def _exit(code: int) -> None:
    """Exit with ``code``. A process of a distributed run leaves at once (its outputs are already
    written and synced, its process group destroyed): after a failure, the interpreter's own
    shutdown sometimes hung for good in the C++ teardown of the process group's threads (1 run in
    6 with gloo, two CPU processes)."""
    if launched_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


class _Cli(click.Group):
    """click's own usage errors (a bad option value, an unknown option) as one `error:` line with
    exit status 2, like prunekit's; help and --version as click prints them."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from .card import record_command

        record_command(list(sys.argv[1:] if args is None else args))  # the reports and model card name it
        try:
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)
        finally:
            record_command(None)

    def _main(self, args, prog_name, complete_var, standalone_mode, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as e:  # bare `prunekit`: the help
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            argv = list(sys.argv[1:] if args is None else args)
            verb = next((a for a in argv if a in self.commands), None)  # click gives no context for some errors
            cmd = e.ctx.command_path if e.ctx is not None else " ".join(filter(None, [prog_name or "prunekit", verb]))
            click.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Cli, context_settings=CONTEXT)
@click.version_option(package_name="prunekit")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def cli(verbose: bool) -> None:
    """prunekit: make BERT-family models smaller and faster, and prove it.

    \b
    The pipeline: search -> compact -> distill -> export-onnx -> bench / eval.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def data_options(option):
    """The data options of search and distill (``option``: one of :func:`settings_option`'s)."""
    opts = [
        option("--data", help="GLUE task name (sst2, mnli, ...), a GLUE task dir, or a CSV/TSV/JSONL/TXT file. Default: the shipped corpus of real English sentences."),
        option("--split", show_default=True, help="Split of a GLUE task (train, dev, test, dev_matched, dev_mismatched)."),
        option("--glue-dir", help="Local GLUE folder (the GLUE download layout); default $GLUE_DIR."),
        option("--task", help="Treat the file as this GLUE task (its metrics and labels)."),
        option("--text-column", help="Text column of a CSV/TSV/JSONL (default: text, sentence, or the first of a hub pair: sentence1, premise, question1, question)."),
        option("--pair-column", help="Second-text column for pair tasks (default: text_pair, or the partner of a hub pair: sentence2, hypothesis, question2, sentence)."),
        option("--label-column", help="Label column (default: label if present)."),
        option("--max-examples", type=int, help="Use only the first N examples."),
    ]
    return _stack(opts)


def _stack(opts: list):
    """One decorator applying click options in the order listed (as they show in --help)."""
    def apply(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return apply


def training_run_options(option, group_default: str):
    """The options search and distill share for a long training run (device, precision, checkpoints, NaN steps);
    ``group_default`` says what --group-by-length is when not given."""
    opts = [
        option("--device", show_default=True, help="auto, cpu, cuda or cuda:N."),
        option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), show_default=True,
               help="auto: bf16 autocast on CUDA, none on CPU; fp16 trains with dynamic loss scaling."),
        option("--group-by-length/--no-group-by-length", "group_by_length", show_default=True,
               help=f"Batches of examples of similar lengths (each epoch's shuffled data sorted in groups of {GROUP_BATCHES} "
                    "batches, the batches shuffled, the widest first): far less padding where lengths vary, so fewer seconds "
                    "per epoch. " + group_default),
        option("--checkpoint-every", type=int, show_default=True, help="Steps between checkpoints."),
        option("--max-nan-steps", type=int, show_default=True,
               help="Stop after this many steps in a row with a NaN/inf loss or gradients (each is skipped, not applied)."),
    ]
    return _stack(opts)


@cli.command(context_settings=CONTEXT)
@search_option("--model", help="Teacher: a local HF model dir or hub id (BERT-family). Default: the packaged all-MiniLM-L6-v2.")
@search_option("--kind", type=click.Choice(["auto", "classification", "regression", "embedding"]), show_default=True, help="What the teacher outputs; auto reads the config (a bare encoder is an embedding model, mean-pooled).")
@data_options(search_option)
@click.option("-o", "--output", "output_dir", default=None, help="Run directory. Default: runs/<method>-<target>.")
@search_option("--method", type=click.Choice(list(METHODS)), show_default=True, help="The gate search, or a baseline at the same FLOPs target: random, uniform (the same number of heads and neurons in every layer, chosen at random), head importance, magnitude.")
@search_option("--target", type=float, show_default=True, help="Ratio to reach, in (0, 1]: of the FLOPs, or with --cost latency of the latency on --backend.")
@search_option("--tolerance", type=float, show_default=True, help="The achieved ratio lands in [(1-t)R, (1+t)R].")
@search_option("--lambda-cost", type=float, show_default=True, help="Weight of the banded log-FLOPs loss.")
@search_option("--epochs", type=float, show_default=True, help="Passes over the data.")
@search_option("--max-steps", type=int, help="Stop after this many steps (overrides --epochs).")
@search_option("--ramp-fraction", type=float, show_default=True, help="Fraction of the steps over which the target moves from 1.0 to --target.")
@search_option("--batch-size", type=int, show_default=True, help="Examples per step: the global batch (under torchrun with N processes, each takes batch/N of it).")
@search_option("--max-length", type=int, show_default=True, help="Token truncation, and the sequence length the FLOPs are counted at.")
@search_option("--lr", type=float, show_default=True, help="Learning rate of the weights (trained jointly).")
@search_option("--alpha-lr", type=float, show_default=True, help="Learning rate of the gate logits (on gradients per FLOP share).")
@search_option("--alpha-optimizer", type=click.Choice(["sgd", "adam"]), show_default=True, help="sgd: gates move in proportion to their per-FLOP gradient; adam: each selected gate moves ~lr.")
@search_option("--alpha-init", type=float, show_default=True, help="Initial gate logit (sigmoid(2) = 0.88).")
@search_option("--topk-fraction", type=float, show_default=True, help="Fraction of gate gradients (largest magnitude) applied each step.")
@search_option("--freeze-weights", is_flag=True, help="Learn only the gates; keep the teacher's weights.")
@search_option("--prune-hidden", is_flag=True, help="Also learn which hidden (residual-stream) dimensions to keep: one gate per dimension, shared by every layer; the embeddings, every projection and LayerNorm, the pooler and the classifier shrink with it (heads keep their width). --method search only.")
@search_option("--seed", type=int, show_default=True, help="Seeds the data order, the random baseline and the importance probes.")
@search_option("--cost", type=click.Choice(["flops", "latency"]), show_default=True, help="What --target is a ratio of: the analytic FLOPs, or the latency on --backend predicted by a model fitted to timings of models of the teacher's shape (measured once, then cached).")
@search_option("--backend", help="--cost latency: the backend whose latency is targeted (as in `prunekit bench --backend`).")
@search_option("--latency-batch", type=int, show_default=True, help="--cost latency: the batch size the latency is measured at.")
@search_option("--latency-seq-len", type=int, help="--cost latency: the sequence length it is measured at. Default: --max-length.")
@search_option("--latency-threads", type=int, help="--cost latency: CPU threads while measuring. Default: torch's (the cores).")
@search_option("--latency-repeats", type=int, show_default=True, help="--cost latency: timed repeats per measured model (the median is taken).")
@search_option("--latency-table", help="--cost latency: the latency table's file (reused when it matches this machine and backend, else refused). Default: a cache under ~/.cache/prunekit/latency ($PRUNEKIT_CACHE).")
@search_option("--reprofile", is_flag=True, help="--cost latency: measure the latency table again, even when one matches.")
@search_option("--gate-cost", type=click.Choice(["flops", "latency"]), show_default=True, help="--cost latency: what the gates' loss counts while they learn. flops: the FLOPs, at the ratio the latency model maps the target to (the uniform architecture of that latency), the choice then brought to the latency target by the model and --latency-check (on a real task, two seeds each, it scored 1.0 point higher on dev and 0.4 lower on test than the latency-model gates: within the seed-to-seed spread; it follows the FLOPs search's structure, which the latency model's head costs do not bend); latency: the latency model itself.")
@search_option("--latency-check", type=int, show_default=True, help="--cost latency: time the chosen architecture beside the original on --backend (random weights, the profiled batch and length) and, while its measured ratio is off the target by more than 1% (or half the band, --tolerance/2, if narrower), choose again with the budget corrected by the measurement: at most this many times (0: trust the latency model).")
@search_option("--latency-calibrate/--no-latency-calibrate", "latency_calibrate", help="--cost latency: before the search chooses, time the uniform architecture the latency model puts at the target (at the full hidden width) and scale the model by measured / predicted, so the gates aim at the FLOPs the measured speed allows (one timing; recorded in architecture.json; a --resume keeps the run's own). Default: on when --latency-check is above 0.")
@click.option("--target-speedup", type=float, default=None, help="The speedup to reach instead of --target: --target 1/S (of the FLOPs, or of the latency).")
@training_run_options(search_option, "Default: on with --method search (the baselines train nothing).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint, with the same options (--lr, --alpha-lr, --mixed-precision, --max-nan-steps, --device and --checkpoint-every may change).")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly
def search(resume: bool, force: bool, quiet: bool, **options) -> None:
    """Learn which attention heads and FFN neurons to keep under a FLOPs target (or, with
    --cost latency, a latency target on one backend, from a latency model measured on this machine).

    Writes a run directory with architecture.json, alpha.safetensors, search_log.jsonl,
    settings.json and architecture.png (and latency_table.json with --cost latency). Data-parallel on several GPUs or CPU processes:
    `torchrun --nproc_per_node N -m prunekit search ...` (or `accelerate launch`).
    """
    from .search import SearchSettings
    from .search import search as run_search

    speedup = options.pop("target_speedup")
    if speedup is not None:
        if click.get_current_context().get_parameter_source("target") == click.core.ParameterSource.COMMANDLINE:
            raise PrunekitError("give --target or --target-speedup, not both")
        if not speedup >= 1.0 or speedup == float("inf"):
            raise PrunekitError(f"--target-speedup must be a finite number >= 1 (2 = twice as fast), got {speedup}")
        options["target"] = 1.0 / speedup
    if options["output_dir"] is None:
        options["output_dir"] = os.path.join("runs", f"{options['method']}-{options['target']:g}")
    settings = SearchSettings(**options)
    result = run_search(settings, force=force, resume=resume, progress=not quiet)
    if not is_main_process():  # data-parallel: rank 0 reports
        return
    arch = result.architecture
    click.echo(f"architecture: {result.output_dir / 'architecture.json'}")
    of = "the FLOPs"
    if settings.cost == "latency":
        of = f"the predicted latency on {settings.backend}"
        measured = arch.meta.get("measured_latency_ratio")
        said = (f"measured latency ratio {measured:.4f} (predicted {arch.meta['predicted_latency_ratio']:.4f})" if measured is not None
                else f"predicted latency ratio {result.achieved_ratio:.4f}")
        click.echo(f"{said} on {settings.backend} (target {result.target:.4g}, tolerance {settings.tolerance}); "
                   f"FLOPs ratio {arch.meta['flops_ratio']:.4f}")
    else:
        click.echo(f"FLOPs ratio {result.achieved_ratio:.4f} (target {result.target}, tolerance {settings.tolerance})")
    if arch.meta.get("projected"):
        gate = arch.meta.get("gate_ratio")
        click.echo(f"projected: the gates ended outside the band{f' (at {gate:.3f} of {of})' if isinstance(gate, float) else ''}; "
                   f"the groups with the largest alpha were kept to meet the target. More steps (--epochs, "
                   f"--max-steps) let the search itself reach it")
    _echo_flops_breakdown(result.output_dir / "architecture.json")
    click.echo(f"heads per layer: {arch.head_counts}")
    click.echo(f"FFN width per layer: {arch.ffn_widths}")
    _echo_skipped(result.skipped_steps, "search_log.jsonl", result.overflow_steps)


@cli.command(context_settings=CONTEXT)
@search_option("--model", help="The model whose shape is profiled: a local HF model dir or hub id (BERT-family). Default: the packaged all-MiniLM-L6-v2.")
@search_option("--backend", required=True, help="The backend to measure (as in `prunekit bench --backend`).")
@search_option("--device", show_default=True, help="auto, cpu or cuda: where the search will run (a backend of the other kind is measured where it runs).")
@search_option("--latency-batch", type=int, show_default=True, help="The batch size the latency is measured at.")
@search_option("--latency-seq-len", type=int, help="The sequence length it is measured at. Default: 128.")
@search_option("--latency-threads", type=int, help="CPU threads while measuring. Default: torch's (the cores).")
@search_option("--latency-repeats", type=int, show_default=True, help="Timed repeats per measured model (the median is taken).")
@search_option("--latency-table", help="Where to write the table. Default: the cache a search reads (~/.cache/prunekit/latency, $PRUNEKIT_CACHE).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly
def profile(model, backend, device, latency_batch, latency_seq_len, latency_threads, latency_repeats, latency_table, quiet) -> None:
    """Measure the latency model `search --cost latency` uses, on its own: times of models of MODEL's
    shape on BACKEND (every head count, a grid of FFN widths, each layer's fixed cost and the rest),
    fitted monotone, written as a table a later search with the same options reuses.
    """
    from . import latency as lat
    from .distributed import resolve_device
    from .models import load_teacher

    SearchSettings(model=model, cost="latency", backend=backend, latency_batch=latency_batch, latency_seq_len=latency_seq_len,
                   latency_threads=latency_threads, latency_repeats=latency_repeats).validate_cost()
    teacher = load_teacher(model, device="cpu")
    seq_len = latency_seq_len or SearchSettings.max_length
    dev = lat.latency_device(backend, str(resolve_device(device)))
    m, path = lat.latency_model_for(teacher.shape, backend, dev, latency_batch, seq_len, latency_threads, latency_repeats,
                                    latency_table, reprofile=True, base_config=teacher.config, progress=not quiet)
    full = m.full()
    click.echo(f"{backend} on {dev}, batch {latency_batch} x {seq_len} tokens: {1e3 * full:.1f} ms per batch for the full model")
    original = m.measurements.get("original")
    click.echo(f"  the full-size compact model: {m.overhead:.3f} of the original's time"
               + (f" ({1e3 * original:.1f} ms); ratios are over the original" if original else " (not measured: ratios are over it)"))
    click.echo(f"  fixed (embeddings, LayerNorms, overhead): {m.floor():.3f} of the original's (at most {1 / m.floor():.2f}x faster by pruning)")
    click.echo(f"  attention, all heads of a layer: {m.head_knots[-1] / full:.3f}; its first head alone: {m.head_knots[1] / full:.3f}")
    click.echo(f"  FFN, a whole layer's: {m.ffn_knots[-1] / full:.3f}; additivity error of the fit "
               f"{m.measurements.get('additivity_error', 0.0):+.1%}")
    click.echo(f"wrote {path}")


def _echo_skipped(n: int, log_name: str, overflows: int = 0) -> None:
    if n:
        click.echo(f"note: {n} step(s) were skipped for a NaN/inf loss or gradients (see {log_name})", err=True)
    if overflows:
        click.echo(f"note: {overflows} fp16 step(s) overflowed and were skipped while the loss scale settled (see {log_name})", err=True)


def _echo_flops_breakdown(arch_json) -> None:
    """Original vs pruned FLOPs per sequence, by component, from an architecture.json."""
    import json

    from .flops import format_flops

    flops = json.loads(arch_json.read_text())["flops"]
    orig, pruned = flops["original_by_component"], flops["by_component"]
    click.echo(f"FLOPs per sequence at {flops['seq_len']} tokens: {format_flops(flops['original'])} -> {format_flops(flops['pruned'])}")
    for name in orig:
        if orig[name]:
            click.echo(
                f"  {name:<18} {format_flops(orig[name]):>13} ({orig[name] / flops['original']:5.1%})"
                f" -> {format_flops(pruned[name]):>13} ({pruned[name] / orig[name]:5.1%} kept)"
            )


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", required=False)
@click.option("-o", "--output", "output_dir", default=None, help="Compact model directory. Default: <RUN_DIR>-compact.")
@click.option("--model", default=None, help="Teacher to cut from (default: the base model named in architecture.json).")
@click.option("--architecture", default=None, help="An architecture.json to use instead of RUN_DIR's (then RUN_DIR may be left out).")
@click.option("--kind", type=click.Choice(["auto", "classification", "regression", "embedding"]), default=None, help="What the teacher outputs (default: as searched).")
@click.option("--weights", type=click.Choice(["teacher", "search"]), default="teacher", show_default=True, help="The teacher's own weights, or those the search trained jointly with the gates (its last checkpoint).")
@click.option("--seq-len", type=int, default=None, help="Sequence length the FLOPs are counted at (default: the search's --max-length).")
@click.option("--no-fvcore", is_flag=True, help="Skip fvcore's measured FLOPs (tracing a large model takes a while).")
@click.option("--narrow-output", is_flag=True, help="An embedding model whose hidden width was pruned (search --prune-hidden) outputs that width; by default a linear map (learned by distill) keeps the teacher's output width, so its index stays usable.")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
@_friendly
def compact(run_dir, output_dir, model, architecture, kind, weights, seq_len, no_fvcore, narrow_output, force) -> None:
    """Cut a searched architecture out of the teacher into a dense, smaller model.

    Writes config.json, model.safetensors, tokenizer files, architecture.json and
    compact_report.json; loadable with transformers' Auto classes after `import prunekit`.
    """
    from .compact import compact_to_dir
    from .flops import format_flops

    r = compact_to_dir(run_dir, architecture, output_dir, force=force, model=model, kind=kind, weights=weights,
                       seq_len=seq_len, measure_fvcore=not no_fvcore, narrow_output=narrow_output)
    o, c = r.original, r.compact

    def fl(v):
        return "-" if v is None else format_flops(v)

    def ratio(a, b):
        return "-" if not a or b is None else f"{b / a:.3f}"

    rows = [("parameters", f"{o['params']:,}", f"{c['params']:,}", ratio(o["params"], c["params"])),
            (f"FLOPs analytic (T={r.seq_len})", fl(o["flops_analytic"]), fl(c["flops_analytic"]), ratio(o["flops_analytic"], c["flops_analytic"]))]
    if "flops_fvcore" in c:
        rows.append(("FLOPs fvcore x2 (matmuls)", fl(o["flops_fvcore"]), fl(c["flops_fvcore"]), ratio(o["flops_fvcore"], c["flops_fvcore"])))
    click.echo(f"{'':28} {'original':>16} {'compact':>16} {'ratio':>7}")
    for name, a, b, q in rows:
        click.echo(f"{name:28} {a:>16} {b:>16} {q:>7}")
    click.echo(f"heads per layer: {r.heads_per_layer}")
    click.echo(f"FFN width per layer: {r.ffn_per_layer}")
    if r.hidden_size != o["hidden_size"]:
        click.echo(f"hidden width: {r.hidden_size} of {o['hidden_size']}")
    click.echo(f"parity with the gated teacher: relative error {r.parity_rel_err:.1e}")
    for note in r.notes:
        if note.startswith("fvcore could not"):
            click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {r.output_dir}")


@cli.command(name="export-onnx", context_settings=CONTEXT)
@click.argument("model_dir")
@click.option("-o", "--output", required=True, help="The .onnx file to write (atomically; with a <output>.json report beside it).")
@export_option("--opset", type=int, show_default=True, help="ONNX opset.")
@export_option("--fp16", is_flag=True, help="Convert to fp16 (for GPUs; inputs and outputs stay int64/fp32).")
@export_option("--optimize", is_flag=True, help="onnxruntime's transformer fusions, attention fused per layer with that layer's head count.")
@export_option("--quantize", type=click.Choice(["int8"]), help="int8 MatMuls for the CPU: dynamic, or static with --calibration; check the task metric with `prunekit eval`.")
@export_option("--calibration", help="Static int8: data (file or GLUE task) whose sentences calibrate the activation ranges; 'corpus' for the shipped corpus.")
@export_option("--calibration-examples", type=int, show_default=True, help="Sentences of --calibration to run.")
@export_option("--atol", type=float, show_default=True, help="Max abs difference to PyTorch allowed for fp32 graphs.")
@export_option("--int8-rtol", type=float, show_default=True, help="Max abs difference / max |output| allowed for the int8 graph.")
@export_option("--force", is_flag=True, help="Overwrite an existing output file.")
@_friendly
def export_onnx_cmd(model_dir, output, opset, fp16, optimize, quantize, calibration, calibration_examples, atol, int8_rtol,
                    force) -> None:
    """Export MODEL_DIR (a compact model or an original Hugging Face BERT) to ONNX and check it
    against PyTorch in onnxruntime on random padded inputs (dynamic batch and sequence axes)."""
    from .export import ExportSettings, export_onnx

    if calibration is not None and quantize != "int8":
        raise PrunekitError("--calibration is the data static int8 calibrates on: use it with --quantize int8")
    if calibration is not None:
        quantize = "int8-static"
    settings = ExportSettings(opset=opset, fp16=fp16, optimize=optimize, quantize=quantize, atol=atol, int8_rtol=int8_rtol,
                              force=force, calibration=None if calibration == "corpus" else calibration,
                              calibration_examples=calibration_examples)
    r = export_onnx(model_dir, output, settings)
    click.echo(f"{'compact' if r.is_compact else 'original'} {r.kind} model, heads per layer {r.heads_per_layer}, "
               f"FFN widths {r.ffn_per_layer}; output '{r.output_name}'")
    for c in r.checks:
        limit = f"rel {c.rel_diff:.2e} <= {c.tolerance:g}" if c.relative else f"<= {c.tolerance:g}"
        click.echo(f"  {c.stage:<9} max abs diff {c.max_abs_diff:.2e} ({limit}) on {', '.join(c.providers)}, inputs {c.shapes}")
    if r.fused:
        heads = r.fused["attention_heads"]
        click.echo(f"  fused: {r.fused['ops']}")
        click.echo(f"  attention fused in {len(heads)} of {r.fused['layers_with_heads']} layers with heads (heads {heads})")
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {r.output} ({r.size_bytes / 1e6:.1f} MB)")


def _names(values) -> list[str]:
    """Repeatable options that also take comma-separated lists: ("a,b", "c") -> ["a", "b", "c"]."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@cli.command(context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True)
@bench_option("--device", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--backend", "backends", multiple=True, help=BENCH_BACKEND_HELP)
@bench_option("--batch", type=int, show_default=True, help="Sentences per batch.")
@bench_option("--seq-len", type=int, show_default=True, help="Tokens per sentence (fixed mode), or the cut-off length (real-length mode).")
@bench_option("--real-lengths", help="Data file or GLUE task whose sentences' token lengths are timed (padded per batch) instead of fixed lengths.")
@bench_option("--num-batches", type=int, show_default=True, help="Real-length mode: batches of the data per timed repeat.")
@bench_option("--repeats", type=int, show_default=True, help="Timed repeats (interleaved across models and backends).")
@bench_option("--warmup", type=int, show_default=True, help="Untimed repeats first.")
@bench_option("--threads", type=int, help="Threads for torch and onnxruntime (default: torch's default, the cores).")
@bench_option("--calibration", help="Data ort-int8-static calibrates on (default: the --real-lengths data, else the shipped corpus).")
@click.option("--no-fvcore", is_flag=True, help="Skip fvcore's measured FLOPs.")
@click.option("-o", "--output", "output_dir", default=None, help="Results dir: bench.json, bench.md, bench.png (default: print the table only).")
@click.option("--force", is_flag=True, help="Overwrite an existing results dir.")
@_friendly
def bench(models, device, backends, batch, seq_len, real_lengths, num_batches, repeats, warmup, threads, calibration, no_fvcore,
          output_dir, force) -> None:
    """Time MODELS side by side (the original first, then compact ones): FLOPs, parameters, size,
    latency median/p90, sentences/sec, speedup over the first model and over its FLOPs speedup."""
    from pathlib import Path

    from .bench import BenchSettings, format_table, write_results
    from .bench import bench as run_bench
    from .io import check_output_dir

    if output_dir:
        check_output_dir(Path(output_dir), force)  # fail before minutes of timing
    s = BenchSettings(models=list(models), device=device, backends=_names(backends) or None, batch=batch, seq_len=seq_len,
                      real_lengths=real_lengths, num_batches=num_batches, repeats=repeats, warmup=warmup, threads=threads,
                      calibration=calibration, fvcore=not no_fvcore)
    res = run_bench(s)
    click.echo(format_table(res))
    if output_dir:
        write_results(res, output_dir, force=force)
        click.echo(f"wrote {output_dir}/bench.json, bench.md, bench.png")


def recipe_default(name: str) -> str:
    """The help's default of an option a distill --recipe sets: each recipe's value."""
    from .distill import RECIPES

    def shown(v) -> str:
        return ("on" if v else "off") if isinstance(v, bool) else f"{v:g}"

    return "Default: the --recipe's (" + ", ".join(f"{r}: {shown(v[name])}" for r, v in RECIPES.items()) + ")."


@cli.command(context_settings=CONTEXT)
@click.argument("student")
@distill_option("--recipe", type=click.Choice(["short", "tinybert"]), show_default=True, help="What fills the options below that are not given: short (a budget of an hour on a CPU: one epoch of stage 1, then 5 of stage 2, over the data and one augmented copy of each example, gold labels mixed in where the data has them, lr 1e-4, batches grouped by length; chosen by measurement, docs/results.md) or tinybert (TinyBERT's 20 + 3 epochs over 4 augmented copies, soft targets only, random batches).")
@distill_option("--teacher", help="The teacher to distil from. Default: the model the student was compacted from (its config).")
@data_options(distill_option)
@distill_option("--dev-data", help="Dev data for picking the best checkpoint (same forms as --data). Default: hold out --dev-fraction of --data.")
@distill_option("--dev-split", show_default=True, help="Split of a GLUE --dev-data.")
@distill_option("--dev-fraction", type=float, show_default=True, help="Share of --data held out as dev data when no --dev-data is given.")
@distill_option("--dev-max-examples", type=int, help="Use only the first N dev examples.")
@click.option("-o", "--output", "output_dir", default=None, help="Distilled model directory. Default: <STUDENT>-distilled.")
@distill_option("--stage1-epochs", type=float, help="Epochs of stage 1 (hidden states, attention maps, embeddings). " + recipe_default("stage1_epochs"))
@distill_option("--stage2-epochs", type=float, help="Epochs of stage 2 (the teacher's predictions). " + recipe_default("stage2_epochs"))
@distill_option("--budget", help="A time (45m, 2h, 1h30m) or a step count (3000steps) for the whole run, in place of the epochs: split between the stages by --stage1-share, a time turned into steps by each stage's seconds per step measured on this machine first.")
@distill_option("--stage1-share", type=float, help="With --budget: the share of it that stage 1 gets; stage 2 gets the rest. " + recipe_default("stage1_share"))
@distill_option("--flat-start-stage1-epochs", type=float, help="Epochs of stage 1 for a student that starts flat (its outputs vary over the dev set less than 1% as much as the teacher's: a 10% student with one or two heads), where the run gives stage 1 none: the teacher's predictions alone may not move it. With --budget, the share those epochs take (at most half). 0: never. " + recipe_default("flat_start_stage1_epochs"))
@distill_option("--stage1-lr", type=float, help="Peak learning rate of stage 1. " + recipe_default("stage1_lr"))
@distill_option("--stage2-lr", type=float, help="Peak learning rate of stage 2. " + recipe_default("stage2_lr"))
@distill_option("--batch-size", type=int, show_default=True, help="Examples per step: the global batch (under torchrun with N processes, each takes batch/N of it).")
@distill_option("--warmup", type=float, show_default=True, help="Fraction of each stage's steps with linear warm-up (then linear decay).")
@distill_option("--weight-decay", type=float, show_default=True, help="AdamW weight decay (weight matrices only).")
@distill_option("--max-length", type=int, show_default=True, help="Token truncation.")
@distill_option("--temperature", type=float, show_default=True, help="Softmax temperature of the soft targets (classification); the soft term is scaled by T^2, so T roughly keeps its balance with --alpha-gold.")
@distill_option("--alpha-gold", type=float, help="Weight of the gold labels in stage 2 (0: the teacher's predictions only). " + recipe_default("alpha_gold"))
@distill_option("--dropout", type=float, help="Student dropout while training. Default: its config's.")
@distill_option("--augment-copies", type=int, help="Augmented copies per example (TinyBERT word replacement; 0: none). " + recipe_default("augment_copies"))
@distill_option("--augment-prob", type=float, show_default=True, help="Probability that a word is replaced in a copy.")
@distill_option("--augment-top-k", type=int, show_default=True, help="Replacement candidates per word.")
@distill_option("--augment-stages", type=click.Choice(["both", "1", "2", "none"]), show_default=True, help="Stages that train on the augmented data.")
@distill_option("--augment-mlm", help="A masked-LM model dir to propose replacements. Default: nearest neighbours in the teacher's input embeddings.")
@distill_option("--seed", type=int, show_default=True, help="Seeds the data order, dropout, the dev hold-out and the augmentation.")
@training_run_options(distill_option, recipe_default("group_by_length"))
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint, with the same options (--stage1-lr, --stage2-lr, --mixed-precision, --max-nan-steps, --device and --checkpoint-every may change).")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def distill(student: str, resume: bool, force: bool, quiet: bool, **options) -> None:
    """Distil a compact model (STUDENT, from `prunekit compact`) back towards its teacher.

    Stage 1 matches each layer's hidden states, the attention maps of the kept heads and the
    embeddings; stage 2 the teacher's predictions. Writes a compact model dir with the best
    weights by the dev metric, plus distill_report.json and distill_log.jsonl. Data-parallel:
    `torchrun --nproc_per_node N -m prunekit distill ...` (or `accelerate launch`).
    """
    from pathlib import Path

    from .distill import DistillSettings, resumed_options
    from .distill import distill as run_distill

    if options["output_dir"] is None:
        options["output_dir"] = str(student).rstrip("/\\") + "-distilled"
    if options["budget"] is not None and (options["stage1_epochs"] is not None or options["stage2_epochs"] is not None):
        raise PrunekitError("--budget replaces --stage1-epochs and --stage2-epochs: give one or the other "
                            "(with --budget, --stage1-share gives stage 1 its part)")
    if resume:  # what the recipe filled goes on as the interrupted run had it
        options = resumed_options(Path(options["output_dir"]), options)
    settings = DistillSettings(student=student, **options)
    r = run_distill(settings, force=force, resume=resume, progress=not quiet)
    if not is_main_process():  # data-parallel: rank 0 evaluated and reports
        return
    m = r.metric
    click.echo(f"dev {m}: teacher {r.teacher_dev.get(m, float('nan')):.4f}, student before {r.before.get(m, float('nan')):.4f}, "
               f"distilled {r.best['value'] if r.best['value'] is not None else float('nan'):.4f} (step {r.best['step']}, stage {r.best['stage']})")
    _echo_skipped(r.skipped_steps, "distill_log.jsonl", r.overflow_steps)
    for warning in (r.dev_warning, r.learn_warning):
        if warning:
            click.echo(f"note: {warning}", err=True)
    click.echo(f"wrote {r.output_dir}")


@cli.command(name="eval", context_settings=CONTEXT)
@click.argument("model")
@eval_option("--data", help="GLUE task name, GLUE task dir, or a CSV/TSV/JSONL/TXT file. Default: the shipped corpus (unlabelled).")
@click.option("--split", "splits", multiple=True, help="Split(s) of a GLUE task; repeat for several. Default: dev (MNLI: dev_matched and dev_mismatched).")
@eval_option("--glue-dir", help="Local GLUE folder (the GLUE download layout); default $GLUE_DIR.")
@eval_option("--task", help="Treat the file as this GLUE task (its metrics and labels).")
@eval_option("--text-column", help="Text column of a CSV/TSV/JSONL.")
@eval_option("--pair-column", help="Second-text column for pair tasks.")
@eval_option("--label-column", help="Label column (default: label if present).")
@eval_option("--max-examples", type=int, help="Use only the first N examples.")
@click.option("--compare", multiple=True, help="More models to score side by side (repeat the option); model dirs or .onnx files.")
@click.option("--backend", "backends", multiple=True, help=EVAL_BACKEND_HELP)
@eval_option("--calibration", help="Data ort-int8-static calibrates on (default: the shipped corpus).")
@eval_option("--tokenizer", help="Tokenizer dir for an .onnx file (default: beside the file, else the model dir its export report names).")
@eval_option("--reference", help="Model that embedding models and unlabelled data are scored against. Default: a compact model's teacher.")
@eval_option("--kind", type=click.Choice(["auto", "classification", "regression", "embedding"]), show_default=True, help="What a teacher dir outputs (compact dirs know).")
@eval_option("--max-length", type=int, show_default=True, help="Token truncation.")
@eval_option("--batch-size", type=int, show_default=True, help="Examples per forward pass.")
@eval_option("--seq-len", type=int, show_default=True, help="Sequence length the analytic FLOPs are counted at.")
@eval_option("--device", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "json_out", default=None, help="Also write the report as JSON to this file (atomically).")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
@_friendly
def eval_(model, data, splits, glue_dir, task, text_column, pair_column, label_column, max_examples, compare, backends, calibration,
          tokenizer, reference, kind, max_length, batch_size, seq_len, device, json_out, force) -> None:
    """The task's metrics for a teacher or compact MODEL (and --compare models), with params and FLOPs.

    Labelled data: the task's metrics (accuracy, F1, MCC, Pearson/Spearman). Embedding models or
    unlabelled data: fidelity to --reference (pairwise-similarity Spearman, mean cosine, agreement).
    MODEL may be an .onnx file from `prunekit export-onnx`; --backend scores a model dir in other
    precisions and runtimes (bf16, int8, compiled), each a row, so accuracy stands next to speed.
    """
    import json
    from pathlib import Path

    from .evaluate import EvalSettings, evaluate, format_table
    from .io import check_output_file, rescue, write_output_file

    if json_out:
        check_output_file(Path(json_out), force)  # before the scoring, not after it
    report = evaluate(EvalSettings(
        models=[model, *compare], data=data, splits=list(splits) or None, text_column=text_column, pair_column=pair_column,
        label_column=label_column, task=task, glue_dir=glue_dir, max_examples=max_examples, reference=reference, kind=kind,
        max_length=max_length, batch_size=batch_size, seq_len=seq_len, device=device, backends=_names(backends) or None,
        calibration=calibration, tokenizer=tokenizer))
    click.echo(format_table(report))
    if json_out:
        data = (json.dumps(report, indent=1) + "\n").encode("utf-8")
        try:
            write_output_file(Path(json_out), data, force)
        except PrunekitError as e:
            kept = rescue(data, "eval")
            raise PrunekitError(f"{e}" + (f"; the report (the table above) is kept in {kept}" if kept else "")) from None
        click.echo(f"wrote {json_out}")


@cli.command(context_settings=CONTEXT)
@click.argument("model_dir", type=click.Path())
@click.option("--bench", "bench_dir", type=click.Path(), default=None,
              help="A `prunekit bench -o` output dir whose table the card shows as this model's measured speed.")
@_friendly
def card(model_dir: str, bench_dir: str | None) -> None:
    """(Re)write MODEL_DIR/README.md, the model card (Hub metadata, widths, cost, quality, speed, commands).

    compact and distill write it themselves; run this to add a bench table, or after editing a report.
    """
    from pathlib import Path

    from .card import write_card

    if not (Path(model_dir) / "config.json").is_file():
        raise PrunekitError(f"{model_dir} is not a model dir (no config.json): give a dir made by `prunekit compact` or `distill`")
    click.echo(f"wrote {write_card(Path(model_dir), Path(bench_dir) if bench_dir else None)}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
