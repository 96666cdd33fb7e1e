"""Write the King James Bible (public domain) as plain text, one chapter per paragraph:
held-out English prose for the real-model perplexity runs (results/real_models/).

    apt-get download bible-kjv bible-kjv-text && for f in bible-kjv*.deb; do dpkg -x $f kjv; done
    python benchmarks/make_kjv_text.py --root kjv --out kjv.txt

The text comes from Debian's bible-kjv-text package, through its own `bible` program.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

VERSE = re.compile(r"^(?P<book>\d?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.*)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="where the debs were unpacked")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    listing = subprocess.run(
        [str(args.root / "usr/bin/bible"), "-p", str(args.root / "usr/lib"), "-f",
         "gen1:1-rev22:21"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    chapters: list[list[str]] = []
    current = None
    for line in listing.splitlines():
        match = VERSE.match(line.strip())
        if not match:
            continue
        key = (match["book"], match["chapter"])
        if key != current:
            chapters.append([])
            current = key
        chapters[-1].append(match["text"])
    args.out.write_text("\n\n".join(" ".join(verses) for verses in chapters) + "\n")
    print(f"{len(chapters)} chapters, {args.out.stat().st_size} bytes -> {args.out}")


if __name__ == "__main__":
    main()
