"""Conventions shared by the evaluation jobs: errors, output files, tables."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


class JobError(Exception):
    """Bad input to a job; the CLI prints the message (which names the fix) and exits 2."""


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (0 is not a way to say 'all')."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def release_processes() -> None:
    """Tear the process group down before exit: one left to interpreter shutdown can abort
    a process (SIGABRT in gloo) after its work is done, failing the whole launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def command_line(job: str) -> str:
    """The `hf-hyper <job> ...` command that reproduces this run, also when it was started
    as a module (`accelerate launch -m hf_hyper.eval.ppl ...` has no job word in argv)."""
    args, words = sys.argv[1:], job.split()
    for i in range(len(words) + 1):  # the longest tail of the job words that argv starts with
        if args[: len(words) - i] == words[i:]:
            args = words[:i] + args
            break
    return " ".join(shlex.quote(a) for a in ["hf-hyper", *args])


def today() -> str:
    return dt.date.today().isoformat()


# Output folders this process holds locked (path -> open lock file), until its job ends.
_HELD_LOCKS: dict[Path, Any] = {}


def _lock_output(out: Path) -> None:
    """Hold an exclusive lock on the folder for this process's rank, so a second run into
    the same folder stops at once instead of computing (and appending) everything again.
    Each rank of a multi-process run locks its own file; the lock ends with the job."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: nothing to hold
        return
    path = (out / f".hf_hyper-running-rank{os.environ.get('RANK', '0')}").resolve()
    if path in _HELD_LOCKS:
        return
    handle = open(path, "w")  # noqa: SIM115 (held open until the job ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise JobError(
            f"another hf-hyper run is writing to --output-dir {out}: wait for it to end, "
            "or give this one another --output-dir"
        ) from None
    _HELD_LOCKS[path] = handle


def release_output_locks() -> None:
    """End the locks `output_dir` took (closing the file releases its lock) and remove
    their files, so a finished run leaves only its results. The file goes while still
    locked: a run starting then creates and locks a new one."""
    while _HELD_LOCKS:
        path, handle = _HELD_LOCKS.popitem()
        path.unlink(missing_ok=True)
        handle.close()


def output_dir(path: str | Path) -> Path:
    """The output folder, made if missing, checked writable and locked against a second
    run before any work is done."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise JobError(f"--output-dir {out} is a file, not a folder: choose another path")
    probe = out / ".hf_hyper-write-check"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise JobError(
            f"cannot write to --output-dir {out} ({reason}): choose a folder you can write to"
        ) from None
    _lock_output(out)
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # never leave a half-written result behind


def save_results(
    out: Path,
    stem: str,
    payload: dict[str, Any],
    columns: Sequence[tuple[str, str]],
    plot: Callable[[Path, Path], Path] | None,
    table: str | None = None,
) -> None:
    """Write `<stem>.json` (every number), `<stem>.md` (printed too) and `<stem>.png`
    (plot None: no figure, as for an interim report); the table is made from `columns`
    of the rows unless given."""
    write_json(out / f"{stem}.json", payload)
    table = table if table is not None else markdown_table(payload["rows"], columns)
    (out / f"{stem}.md").write_text(table)
    print(table)
    if plot is None:
        (out / f"{stem}.png").unlink(missing_ok=True)  # a figure of an earlier run is stale
        print(f"results: {out}/{stem}.{{json,md}}")
        return
    try:
        plot(out / f"{stem}.json", out / f"{stem}.png")
        print(f"results: {out}/{stem}.{{json,md,png}}")
    except JobError as err:
        print(f"no plot: {err}")
        print(f"results: {out}/{stem}.{{json,md}}")


def report_after_setting(
    accelerator,
    ran: int,
    settings: Sequence[tuple[str, int]],
    index: int,
    write: Callable[[list, list], None],
) -> None:
    """After patch setting `index` of a job: write(finished settings, settings left) on
    the main process, an interim report, when the setting did any work (`ran`: this
    process's items) and settings remain, so a run cut short still leaves one. The count
    is summed over processes first, so all of them take the same branch (and meet at
    the same barrier)."""
    import torch

    total = accelerator.reduce(torch.tensor([ran], device=accelerator.device), "sum").item()
    if total and index + 1 < len(settings):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write(list(settings[: index + 1]), list(settings[index + 1 :]))


def interim_note(left: Sequence[tuple[str, int]], items: str) -> str:
    """The line an interim report ends with: the patch settings still to run, and how to
    go on (`items`: what the job caches, e.g. "windows")."""
    names = " ".join(label for label, _ in left)
    return (
        f"\nInterim: settings still to run: {names} (rerun the same command to go on; the "
        f"finished {items} come from the cache)\n"
    )


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option with a default shows it in --help, unless its help already says."""
    for action in parser._actions:
        meaningful = action.default not in (None, False, argparse.SUPPRESS, ())
        switch = action.nargs == 0  # --flag / --no-flag: its default says nothing useful
        if not action.option_strings or not meaningful or switch:
            continue
        if action.help is None:
            action.help = "(default: %(default)s)"
        elif "default" not in action.help:
            action.help += " (default: %(default)s)"


def job_main(
    prog: str,
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[Any], object],
    argv: Sequence[str] | None = None,
) -> int:
    """The `python -m` entry of a job (the form `accelerate launch -m` runs): the same
    options and exit codes as `hf-hyper <job>`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    show_defaults(parser)
    return exit_status(prog, run, parser.parse_args(argv))


def exit_status(prog: str, job: Callable[[Any], object], args: Any) -> int:
    """Run a job: 0 when it finishes; a JobError becomes one line on stderr naming the
    job and exit status 2, with no traceback; Ctrl-C one line and 130 (the shell's code
    for an interrupt), since finished work is kept and a rerun resumes."""
    try:
        job(args)
    except JobError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\n{prog}: interrupted; rerun the same command to resume (finished work is kept)",
            file=sys.stderr,
        )
        return 130
    finally:
        release_output_locks()
    return 0


def jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(origin "file:line", parsed value) per non-blank line; bad JSON is an error naming
    file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise JobError(not_utf8(path, err)) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            raise JobError(f"{path}:{number}: not valid JSON ({err.msg})") from None


def not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    return (
        f"{path} is not UTF-8 text (byte {err.start} cannot be decoded): convert it, "
        f"e.g. iconv -f latin1 -t utf-8 {path.name}, or pass another file"
    )


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """rows of dicts -> markdown; columns are (key, header); floats get 3 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise JobError(
            "plots need matplotlib: pip install 'hf-hyper[plot]' (or run `hf-hyper plot` "
            "later on the JSON this job wrote)"
        ) from err
    return plt
