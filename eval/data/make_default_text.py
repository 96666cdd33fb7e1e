"""Rebuild `python_docs.jsonl.gz`, the bundled offline text of `hf-hyper ppl`: the
docstrings of a fixed list of Python standard-library modules, one document per module.

    python eval/data/make_default_text.py   # output depends on the Python version
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import json
from pathlib import Path

MODULES = """argparse asyncio collections concurrent.futures contextlib csv dataclasses datetime
decimal difflib email.message enum fractions functools heapq http.client inspect io ipaddress
itertools json logging math multiprocessing.pool operator os pathlib pickle pprint random re
shutil socket sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading
time typing unittest urllib.parse uuid warnings weakref zipfile xml.etree.ElementTree
configparser calendar codecs copy doctest ftplib gettext glob gzip hashlib hmac imaplib locale
mailbox mimetypes numbers optparse pdb pydoc queue sched secrets selectors shelve shlex smtplib
ssl symtable tokenize trace traceback turtle wave zoneinfo bisect cmd ast abc""".split()  # noqa: SIM905


def _docs(obj, prefix: str) -> list[str]:
    parts = []
    for name, member in sorted(vars(obj).items()):
        if name.startswith("_") or not (inspect.isclass(member) or inspect.isfunction(member)):
            continue
        foreign = getattr(member, "__module__", None) not in (None, getattr(obj, "__name__", None))
        if foreign and not prefix:  # skip names a module merely imports
            continue
        doc = inspect.getdoc(member)
        if doc and len(doc) > 80:
            parts.append(f"{prefix}{name}\n\n{doc}")
        if inspect.isclass(member) and not prefix:
            parts += _docs(member, f"{name}.")
    return parts


def main() -> None:
    records = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        parts = [inspect.getdoc(module) or ""] + _docs(module, "")
        text = "\n\n".join(p for p in parts if p)
        if len(text) > 2000:
            records.append({"id": name, "text": text})
    out = Path(__file__).with_name("python_docs.jsonl.gz")
    with gzip.open(out, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(out, len(records), "documents", sum(len(r["text"]) for r in records), "chars")


if __name__ == "__main__":
    main()
