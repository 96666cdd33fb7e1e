"""Where perplexity text comes from: a HF dataset, local files, or the bundled default."""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from .common import JobError, jsonl_records, not_utf8

DEFAULT_TEXT = Path(__file__).with_name("data") / "python_docs.jsonl.gz"
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class TextSource:
    """One of: dataset name (+ config, split), local files, or neither (bundled text)."""

    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "test"
    text_field: str = "text"
    files: tuple[str, ...] = ()
    max_documents: int | None = None

    def describe(self) -> str:
        if self.dataset:
            config = f"/{self.dataset_config}" if self.dataset_config else ""
            return f"dataset {self.dataset}{config} split={self.split} field={self.text_field}"
        if self.files:
            return "files " + ", ".join(self.files)
        return f"bundled {DEFAULT_TEXT.name} (Python standard-library docstrings)"


def _datasets():
    try:
        import datasets
    except ImportError as err:
        raise JobError("reading datasets, .jsonl and .parquet needs: pip install datasets") from err
    return datasets


def _bundled() -> list[Document]:
    with gzip.open(DEFAULT_TEXT, "rt", encoding="utf-8") as f:
        return [Document(r["id"], r["text"]) for r in map(json.loads, f)]


def _from_table(table, field: str, origin: str) -> list[Document]:
    if field not in table.column_names:
        raise JobError(
            f"{origin} has no text field {field!r}; its fields are {table.column_names} "
            "(choose one with --text-field)"
        )
    return [Document(f"{origin}#{i}", t) for i, t in enumerate(table[field]) if t and t.strip()]


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise JobError(not_utf8(path, err)) from err


def _from_jsonl(path: Path, field: str) -> list[Document]:
    """One document per record; a bad line is an error naming the file and the line."""
    docs = []
    for origin, record in jsonl_records(path):
        if not isinstance(record, dict):
            raise JobError(f"{origin}: not a JSON object: one record per line")
        if field not in record:
            raise JobError(
                f"{origin} has no text field {field!r}; its fields are {sorted(record)} "
                "(choose one with --text-field)"
            )
        text = record[field]
        if isinstance(text, str) and text.strip():
            docs.append(Document(f"{path.name}#{origin.rsplit(':', 1)[1]}", text))
    return docs


def _from_files(files: tuple[str, ...], field: str) -> list[Document]:
    docs: list[Document] = []
    for name in files:
        path = Path(name)
        if path.is_dir():
            raise JobError(f"{path} is a folder, not a text file: pass the files in it to --files")
        if not path.is_file():
            raise JobError(f"text file not found: {path} (check --files)")
        if path.suffix == ".txt":
            docs.append(Document(path.name, _read_utf8(path)))
        elif path.suffix == ".jsonl":
            docs += _from_jsonl(path, field)
        elif path.suffix in FILE_BUILDERS:
            datasets = _datasets()
            try:
                table = datasets.load_dataset(
                    FILE_BUILDERS[path.suffix], data_files=str(path), split="train"
                )
            except Exception as err:  # pyarrow and datasets raise many types for bad files
                cause = err.__cause__ or err
                first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
                raise JobError(
                    f"cannot read {path} as {path.suffix[1:]} ({type(cause).__name__}: {first}); "
                    "is it complete? rewrite it, or pass another file"
                ) from None
            docs += _from_table(table, field, path.name)
        else:
            raise JobError(f"unsupported text file {path}: use .txt, .jsonl or .parquet")
    return docs


def load_documents(source: TextSource) -> list[Document]:
    """Documents in a fixed order (what a run scores must not depend on the machine)."""
    if source.dataset:
        datasets = _datasets()
        try:
            table = datasets.load_dataset(source.dataset, source.dataset_config, split=source.split)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise JobError(f"cannot load dataset {source.dataset!r}: {err}") from err
        docs = _from_table(table, source.text_field, source.dataset)
    elif source.files:
        docs = _from_files(source.files, source.text_field)
    else:
        docs = _bundled()
    if not docs:
        raise JobError(f"no non-empty text in {source.describe()}")
    return docs[: source.max_documents] if source.max_documents else docs


def add_text_arguments(p: argparse.ArgumentParser) -> None:
    text = p.add_argument_group("text (default: the bundled offline text)")
    text.add_argument("--dataset", default=None, help="HF dataset name or path")
    text.add_argument("--dataset-config", default=None)
    text.add_argument("--split", default="test")
    text.add_argument("--text-field", default="text")
    text.add_argument("--files", nargs="+", default=(), help=".txt / .jsonl / .parquet files")
    text.add_argument("--max-documents", type=int, default=None)
    text.add_argument(
        "--per-document",
        action="store_true",
        help="windows inside each document (default: documents joined with EOS)",
    )


def text_source(args: argparse.Namespace) -> TextSource:
    if args.dataset and args.files:
        raise JobError("--dataset and --files name two texts: pass one of them")
    return TextSource(
        args.dataset, args.dataset_config, args.split, args.text_field,
        tuple(args.files), args.max_documents,
    )  # fmt: skip


def window_prefix(tokenizer) -> tuple[int, ...]:
    """The tokens the tokenizer puts before any text (Gemma: <bos>; many: none). Windows
    start with them, as the model saw text in training: a Gemma window without its <bos>
    moves the attention sinks onto punctuation."""
    marked = tokenizer("the", add_special_tokens=True)["input_ids"]
    plain = tokenizer("the", add_special_tokens=False)["input_ids"]
    lead = len(marked) - len(plain)
    if lead > 0 and marked[lead:] == plain:
        return tuple(marked[:lead])
    return ()


def token_streams(
    tokenizer, docs: list[Document], per_document: bool
) -> list[tuple[str, list[int]]]:
    """Token ids per document, or all documents joined with EOS as one stream."""
    encoded = [(d.id, tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in docs]
    if per_document:
        return encoded
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    joined: list[int] = []
    for _, ids in encoded:
        joined += ids + sep
    return [("joined", joined)]
