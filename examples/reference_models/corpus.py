"""Training and held-out text from freely licensed Debian documentation packages, offline
once the .deb files are fetched (`apt-get download`); one document per source file.

    python examples/reference_models/corpus.py --out corpus/

Writes corpus/train.jsonl.gz and corpus/heldout.jsonl.gz ({"id", "package", "text"}),
corpus/manifest.json (package versions, counts, the held-out ids) and each package's
copyright file under corpus/licenses/. A document is held out when the SHA-256 of its id
falls in the first `--heldout-percent` percent: stable across runs and machines, and the
same rule for every package, so training never sees the held-out documents.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

# package -> (markup, glob patterns inside the extracted package). One form per package
# (e.g. the rst sources, not also their HTML renderings), so no text appears twice.
PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "linux-doc-6.1": ("text", ("usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",)),
    "python3.11-doc": ("text", ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",)),
    "perl-doc": ("pod", ("usr/share/perl/*/pod/*.pod",)),
    "postgresql-doc-15": ("html", ("usr/share/doc/postgresql-doc-15/html/*.html",)),
    "debian-reference-en": ("html", ("usr/share/debian-reference/*.en.html",)),
}
# bible-kjv-text is not used: its text is stored in bible-kjv's own compressed format.


@dataclass(frozen=True)
class Document:
    id: str
    package: str
    text: str


class _HTMLText(HTMLParser):
    """Visible text of an HTML page; block elements end lines, scripts and styles go."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
              "table", "section", "dt", "dd", "blockquote"}  # fmt: skip
    SKIP = {"script", "style", "head", "nav"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    return tidy("".join(parser.parts))


_POD_CODE_WIDE = re.compile(r"[BICFLSXEZ]<<+\s+(.*?)\s+>>+")  # C<< $x->y >>
_POD_CODE = re.compile(r"[BICFLSXEZ]<([^<>]*)>")


def pod_to_text(pod: str) -> str:
    """Plain Old Documentation: keep headings' text, drop other commands, unwrap
    formatting codes (B<bold> -> bold)."""
    lines = []
    for line in pod.splitlines():
        if line.startswith("="):
            command, _, rest = line.partition(" ")
            if command.startswith(("=head", "=item")):
                lines.append(rest)
            continue
        lines.append(line)
    text = _POD_CODE_WIDE.sub(r"\1", "\n".join(lines))
    for _ in range(3):  # nested codes
        text = _POD_CODE.sub(r"\1", text)
    return tidy(text)


def tidy(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row."""
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_file(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def to_text(raw: str, markup: str) -> str:
    return {"html": html_to_text, "pod": pod_to_text, "text": tidy}[markup](raw)


def is_heldout(doc_id: str, percent: float) -> bool:
    digest = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return digest % 10_000 < percent * 100


def package_documents(root: Path, package: str, min_chars: int) -> list[Document]:
    markup, patterns = PACKAGES[package]
    docs, seen = [], set()
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            text = to_text(read_file(path), markup)
            key = hashlib.sha256(text.encode()).hexdigest()
            if len(text) < min_chars or key in seen:
                continue
            seen.add(key)
            docs.append(Document(f"{package}:{path.relative_to(root)}", package, text))
    return docs


def fetch(package: str, debs: Path) -> tuple[Path, str]:
    """The package's .deb (downloaded once) and its version."""
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1], found[-1].name.split("_")[1]


def build(out: Path, debs: Path, packages: list[str], min_chars: int, percent: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    debs.mkdir(parents=True, exist_ok=True)
    (out / "licenses").mkdir(exist_ok=True)
    manifest = {"packages": {}, "heldout_percent": percent, "min_chars": min_chars}
    splits: dict[str, list[Document]] = {"train": [], "heldout": []}
    for package in packages:
        deb, version = fetch(package, debs)
        root = debs / "extracted" / package
        if not root.is_dir():
            root.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        for copyright_file in root.glob("usr/share/doc/*/copyright"):
            shutil.copy(copyright_file, out / "licenses" / f"{package}.copyright")
        docs = package_documents(root, package, min_chars)
        for doc in docs:
            splits["heldout" if is_heldout(doc.id, percent) else "train"].append(doc)
        manifest["packages"][package] = {"version": version, "documents": len(docs),
                                         "chars": sum(len(d.text) for d in docs)}  # fmt: skip
        print(f"{package} {version}: {len(docs)} documents")
    for split, docs in splits.items():
        with gzip.open(out / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps(doc.__dict__, ensure_ascii=False) + "\n")
        manifest[split] = {"documents": len(docs), "chars": sum(len(d.text) for d in docs)}
    manifest["heldout_ids"] = [d.id for d in splits["heldout"]]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="corpus")
    p.add_argument("--debs", default="debs", help="where .deb files are kept and extracted")
    p.add_argument("--packages", nargs="+", default=list(PACKAGES), choices=list(PACKAGES))
    p.add_argument("--min-chars", type=int, default=2000, help="shorter documents are dropped")
    p.add_argument("--heldout-percent", type=float, default=5.0)
    args = p.parse_args()
    manifest = build(Path(args.out), Path(args.debs), args.packages, args.min_chars,
                     args.heldout_percent)  # fmt: skip
    print(json.dumps({k: manifest[k] for k in ("train", "heldout")}))


if __name__ == "__main__":
    main()
