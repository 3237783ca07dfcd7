"""Command line: `python -m utils {check-data,prepare,run,report,measure-training,sync-colab,check-results,
record-expected,sync-docs,export,train,reference,sync-times}`.

A user's mistake (bad file, unknown profile, no Hub) ends with a one-line message and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USER_ERROR = 2
INTERRUPTED_CODE = 130  # what a shell reports for a command stopped by Ctrl-C
# The methods that train (utils.apps.benchmark.TRAINING_METHODS, named here so parsing imports no torch).
TRAINING_METHODS = ("full", "feature_extraction", "lora", "prompt_tuning", "qlora")


def _check_data(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from utils.apps.check_data import check_file, data_files, summary_lines
    from utils.models import context_window, load_tokenizer, model_location
    from utils.profiles import choose_profile

    profile, _ = choose_profile()
    files = data_files(args.path)  # a folder, as COURSE_DATA takes it: its train, validation and test files
    tokenizer = load_tokenizer(profile)
    context = context_window(AutoConfig.from_pretrained(model_location(profile)), tokenizer)
    reports = [check_file(path, tokenizer, context, args.input_column, args.target_column) for path in files]
    problems = [problem for report in reports for problem in report.problems]
    if problems:
        print("\n".join(problems))
        print(f"{len(problems)} problem(s) found; nothing was changed.")
        return USER_ERROR
    for report in reports:
        print("\n".join(summary_lines(report, args.input_column, args.target_column)))
    print(f"(token counts with the tokenizer of profile {profile.name!r})")
    return 0


def _checked_profile(notebooks: list[str] | None = None):
    """The profile to run, checked before any work starts: the GPU, the Hub (what `notebooks` load;
    None: every notebook) and the data it needs.

    A profile this machine cannot run stops here with one line (exit code 2), instead of every
    notebook failing in turn.
    """
    from utils.plumbing.hub import require_hub_or_cache
    from utils.profiles import choose_profile, hub_repos, with_overrides

    profile, reason = choose_profile()  # before torch is imported: an unknown profile fails in a second
    profile = with_overrides(profile)
    from utils.models import resolve_device

    resolve_device(profile)  # ProfileError when it needs a CUDA GPU this machine lacks
    if profile.needs_hub:
        require_hub_or_cache(f"Profile {profile.name!r}", hub_repos(profile, notebooks))
    if profile.data_label:  # COURSE_DATA: the user's own file or folder
        _check_course_data(profile.data, profile.seed)
    return profile, reason


def _check_course_data(source: str, seed: int) -> None:
    """Read COURSE_DATA's splits: DataError (one line, naming file and line) when they cannot be used."""
    from utils.data import DataError, load_dialogues

    splits = load_dialogues(source, seed=seed)
    empty = sum(1 for split in splits.values() for row in split if not row["dialogue"].strip() or not row["summary"].strip())
    if empty:
        raise DataError(f"{source}: {empty} row(s) without a dialogue or a summary. "
                        f"Fix: run `python -m utils check-data` on each file to list them.")


def _prepare(args: argparse.Namespace) -> int:
    from utils.models import load_tokenizer, model_location

    profile, reason = _checked_profile()
    print(f"Profile {profile.name} ({reason}): model ready at {model_location(profile)}")
    load_tokenizer(profile)
    return 0


def _run(args: argparse.Namespace) -> int:
    selected = selected_notebooks(args.notebooks)
    profile, reason = _checked_profile([path.stem for path in selected])
    from utils.apps.runner import run_course

    print(f"Running the course in profile {profile.run_name} ({reason}).")
    ok = run_course(profile, args.notebooks or None, redo=args.redo)
    path = _write_report(profile)
    print(f"Report: {path}")
    return 0 if ok else 1


def selected_notebooks(prefixes: list[str]) -> list[Path]:
    """The notebooks `run` runs: every one for no prefixes, else those whose name starts with a prefix.
    A prefix that names none (or an empty one, which would name all) is a ProfileError listing them."""
    from utils.plumbing.files import PROJECT_ROOT
    from utils.profiles import ProfileError

    notebooks = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    unknown = [prefix for prefix in prefixes if not prefix.strip()
               or not any(path.name.startswith(prefix) for path in notebooks)]
    if unknown:
        raise ProfileError(f"No notebook starts with {', '.join(repr(u) for u in unknown)}. The notebooks: "
                           f"{', '.join(path.stem for path in notebooks)} (give a prefix such as 02, or none for all).")
    return [path for path in notebooks if not prefixes or any(path.name.startswith(p) for p in prefixes)]


def _report(args: argparse.Namespace) -> int:
    from utils.profiles import choose_profile, with_overrides

    profile, _ = choose_profile()
    print(_write_report(with_overrides(profile)))
    return 0


def _measure_training(args: argparse.Namespace) -> int:
    import json

    from utils.apps.benchmark import measure_training_steps
    from utils.course import configure_threads
    from utils.profiles import choose_profile, with_overrides

    profile, _ = choose_profile()
    configure_threads()
    print(json.dumps(measure_training_steps(with_overrides(profile), args.method, args.steps, args.batch_size,
                                            plain=args.plain, lora_targets=args.lora_targets)))
    return 0


def _sync_colab(args: argparse.Namespace) -> int:
    from utils.apps.colab import course_revision, sync_colab_cells, sync_readme
    from utils.apps.kernel import KERNEL_NAME, use_course_kernel
    from utils.apps.runner import notebook_paths

    paths = args.notebooks or notebook_paths()
    revision = args.revision or course_revision()
    changed = sync_colab_cells(paths, revision=revision)
    print(f"Colab cell and badge (revision {revision}) updated in {len(changed)} of {len(paths)} notebook(s)"
          + "".join(f"\n  {p}" for p in changed))
    kernel = [path for path in paths if use_course_kernel(path)]
    if kernel:
        print(f"Kernel {KERNEL_NAME!r} named in {len(kernel)} notebook(s)" + "".join(f"\n  {p}" for p in kernel))
    if not args.notebooks and sync_readme(revision=revision):
        print("Colab badges updated in README.md")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from utils.apps.reference import SIZE_WARNING_BYTES, ReferenceRunError, folder_bytes, write_reference
    from utils.plumbing.files import runs_dir
    from utils.profiles import get_profile, with_overrides

    profile = with_overrides(get_profile(args.profile))
    try:
        written = write_reference(runs_dir(profile.run_name), profile.name)
    except ReferenceRunError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR
    size = folder_bytes(written[0].parent)
    print(f"Reference run of profile {profile.name}: {len(written)} files in {written[0].parent}, "
          f"{size / 2**20:.1f} MB" + (" (more than a few MB: look at its largest outputs)"
                                       if size > SIZE_WARNING_BYTES else ""))
    return 0


def _sync_times(args: argparse.Namespace) -> int:
    from utils.apps.runner import notebook_paths
    from utils.apps.times import sync_time_lines

    paths = args.notebooks or notebook_paths()
    changed = sync_time_lines(paths)
    print(f"Time line updated in {len(changed)} of {len(paths)} notebook(s)" + "".join(f"\n  {p}" for p in changed))
    return 0


def _check_results(args: argparse.Namespace) -> int:
    from utils.apps.check_results import check
    from utils.plumbing.results import load_results

    ok, lines = check(load_results("offline"), args.notebooks or None, precision=args.precision)
    print("\n".join(lines))
    return 0 if ok else 1


def _record_expected(args: argparse.Namespace) -> int:
    from utils.apps.expected_results import EXPECTED_FILE, record_file

    tolerances = {name: float(value) for name, _, value in (item.partition("=") for item in args.tolerance)}
    print("\n".join(record_file(args.results, args.precision, args.notebooks or None, tolerances, args.commit,
                                args.machine, args.lock, args.run_command, args.date, args.note)))
    print(f"Written: {EXPECTED_FILE}. Then: python -m utils sync-docs")
    return 0


def _sync_docs(args: argparse.Namespace) -> int:
    from utils.apps.sync_docs import sync_docs

    changed = sync_docs(check_only=args.check)
    if args.check:
        print("Generated tables out of date in: " + ", ".join(changed) if changed else "Generated tables up to date.")
        return 1 if changed else 0
    print(f"Generated tables rewritten in {len(changed)} file(s)" + "".join(f"\n  {name}" for name in changed))
    return 0


def _export(args: argparse.Namespace) -> int:
    from utils.apps.export import export_run
    from utils.profiles import choose_profile, with_overrides

    profile, _ = choose_profile()
    profile = with_overrides(profile)
    files = export_run(profile, args.run, args.output, gguf_type=args.gguf_type if args.gguf else None)
    print(f"Exported run {args.run!r} of profile {profile.run_name} to {args.output}:"
          + "".join(f"\n  {path.name}" for path in files))
    return 0


def _train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from utils.apps.train import train_method

    profile, _ = _checked_profile(["02"])  # the notebooks that train these methods load the model and data only
    result = train_method(profile, args.method, args.lora_targets)
    if PartialState().is_main_process:
        losses = [round(entry["loss"], 4) for entry in result.history if "loss" in entry]
        print(f"{args.method}: {'reused' if result.reused else 'trained'} in {result.output_dir}; "
              f"{result.train_seconds:.0f} s, {result.tokens_per_second:.0f} tokens/s; training losses {losses}")
    return 0


def _write_report(profile):
    from utils.apps.report import write_report
    from utils.course import library_versions
    from utils.models import resolve_device

    environment = {"profile": profile.name, "data": profile.data, "seed": profile.seed,
                   "device": resolve_device(profile).type, **library_versions()}
    return write_report(profile.run_name, environment)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils", description="Fine-tuning course helpers.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-data", help="check a JSONL/CSV file of dialogues and summaries")
    check.add_argument("path")
    check.add_argument("--input-column", default="dialogue")
    check.add_argument("--target-column", default="summary")
    check.set_defaults(handler=_check_data)
    prepare = commands.add_parser("prepare", help="build or convert the profile's model into the cache")
    prepare.set_defaults(handler=_prepare)
    run = commands.add_parser("run", help="execute the notebooks headless and write runs/<profile>/REPORT.md")
    run.add_argument("notebooks", nargs="*", help="name prefixes, e.g. 01 02 (default: all)")
    run.add_argument("--redo", action="store_true", help="run notebooks that already finished again")
    run.set_defaults(handler=_run)
    report = commands.add_parser("report", help="rewrite runs/<profile>/REPORT.md from results.json")
    report.set_defaults(handler=_report)
    measure = commands.add_parser("measure-training", help="time a few training steps of one method; prints JSON")
    measure.add_argument("method", choices=TRAINING_METHODS)
    measure.add_argument("--steps", type=int, default=3)
    measure.add_argument("--batch-size", type=int, default=None)
    measure.add_argument("--plain", action="store_true",
                         help="time a plain PyTorch step instead (fp32, logits at every position)")
    measure.add_argument("--lora-targets", choices=("attention", "all-linear"),
                         help="where lora and qlora put their adapters (default: as in the notebooks)")
    measure.set_defaults(handler=_measure_training)
    colab = commands.add_parser("sync-colab", help="put the Colab set-up cell first in each notebook, the Colab "
                                "badge below its title and in the README, and name the course kernel")
    colab.add_argument("notebooks", nargs="*", help="notebook files (default: every notebook in notebooks/)")
    colab.add_argument("--revision", help="the tag or branch the Colab cells install (default: the tag of the "
                       "commit checked out, else main)")
    colab.set_defaults(handler=_sync_colab)
    reference = commands.add_parser("reference", help="copy a finished run's executed notebooks, cleaned, into "
                                    "reference/<profile>/ with run.json (times, peak RAM, machine, commit, lock)")
    reference.add_argument("--profile", default="offline", help="the run's profile (default: offline)")
    reference.set_defaults(handler=_reference)
    times = commands.add_parser("sync-times", help="write each notebook's **Time**: line from reference/*/run.json")
    times.add_argument("notebooks", nargs="*", help="notebook files (default: every notebook in notebooks/)")
    times.set_defaults(handler=_sync_times)
    results = commands.add_parser("check-results", help="compare runs/offline/results.json with the figures "
                                  "docs/expected_results.toml records")
    results.add_argument("notebooks", nargs="*", help="name prefixes, e.g. 04 (default: every recorded figure)")
    results.add_argument("--precision", choices=("float32", "bf16 autocast"), default="float32",
                         help="which recorded figures (default: float32, as make check-results trains)")
    results.set_defaults(handler=_check_results)
    record = commands.add_parser("record-expected", help="record a results.json's figures in "
                                 "docs/expected_results.toml")
    record.add_argument("--from", dest="results", required=True, help="a run's results.json")
    record.add_argument("--precision", choices=("float32", "bf16 autocast"), required=True,
                        help="how that run trained: float32 (make check-results) or bf16 autocast")
    record.add_argument("--notebooks", nargs="*", default=[], help="name prefixes (default: every notebook recorded)")
    record.add_argument("--tolerance", action="append", default=[], metavar="FIGURE=VALUE",
                        help="tolerance of a figure name the file does not know yet, e.g. reward_after=0.01")
    record.add_argument("--commit", help="the commit that ran (default: the one checked out)")
    record.add_argument("--machine", help="the machine (default: from status.json beside results.json)")
    record.add_argument("--lock", help="the lock hash (default: the installed lock's)")
    record.add_argument("--command", dest="run_command", help="the command that ran")
    record.add_argument("--date", help="when it ran (default: today)")
    record.add_argument("--note", default="", help="anything else a reader needs about this source")
    record.set_defaults(handler=_record_expected)
    docs = commands.add_parser("sync-docs", help="write the generated tables of README.md and docs/ from "
                               "docs/expected_results.toml and reference/offline/run.json")
    docs.add_argument("--check", action="store_true", help="only say which files are out of date (exit 1 if any)")
    docs.set_defaults(handler=_sync_docs)
    export = commands.add_parser("export", help="write a finished run's model as a transformers folder "
                                 "(and GGUF for llama.cpp and Ollama, offline profile)")
    export.add_argument("run", help="a run name under runs/<profile>/checkpoints (full, lora-r16...), a method "
                        "(full, lora, qlora: the notebooks' run) or a path to a run folder")
    export.add_argument("output", help="the folder to write (replaced if it holds an earlier export)")
    export.add_argument("--gguf", action="store_true",
                        help="also write model-<type>.gguf and an Ollama Modelfile (offline profile)")
    export.add_argument("--gguf-type", choices=("f16", "f32"), default="f16", help="the GGUF's weights (default: f16)")
    export.set_defaults(handler=_export)
    training = commands.add_parser("train", help="train one method as its notebook does (same checkpoints); "
                                   "runs data-parallel under `accelerate launch`")
    training.add_argument("method", choices=TRAINING_METHODS)
    training.add_argument("--lora-targets", choices=("attention", "all-linear"),
                          help="where lora and qlora put their adapters (default: as in the notebooks)")
    training.set_defaults(handler=_train)
    args = parser.parse_args(argv)

    from utils.apps.errors import INTERRUPTED, user_message

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_CODE
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
