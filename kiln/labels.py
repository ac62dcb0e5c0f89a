"""What a class name must be to be served under: one line of an entry's labels.txt, in UTF-8. Training
checks its class folders with it before a run, export a checkpoint's labels before any ONNX build."""

from __future__ import annotations


def line_problem(label: str) -> str | None:
    """Why ``label`` cannot be one line of labels.txt, or None. Triton and the gateway read that file a
    line a label, lines ended by ``\\n`` alone: a label with a ``\\n`` would be two, so every later class
    would be answered under another class's name; a blank one would be a class without a name, and a
    ``\\r``, U+2028... are line breaks to other readers of the file; a class folder named in bytes that
    are not UTF-8 cannot be written at all."""
    if not label.strip():
        return "is blank: its class would be served without a readable name"
    if "\n" in label:
        return (
            "holds a line break: labels.txt holds one class name a line, so every later class would "
            "be served under another's name"
        )
    if label.splitlines() != [label]:
        return "holds a line break (a carriage return, U+2028...) that other readers of labels.txt split at"
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a file name's stray bytes?)"
    return None
