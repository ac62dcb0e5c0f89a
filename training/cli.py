"""The end of both trainers' commands (``python -m training.classify`` / ``training.translate``): the
run's outcome as one line and an exit status, on the ranks that should say it, never a traceback for
what the user can act on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from training.dist_timeout import CollectiveTimeout
from training.divergence import TrainingDiverged
from training.runtime import RankFailed, UnusedParameters, leave_group, reports_errors

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _say(line: str) -> None:
    """``line`` on stderr in one write: ``print`` wrote the text and its newline apart, and the ranks
    of a torchrun, which share stderr, each refusing unused parameters, ran their lines into one
    ("... in one processerror: ...")."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def _tell_torchrun(line: str) -> None:
    """``line`` into this rank's torchrun error file (``TORCHELASTIC_ERROR_FILE``), where a rank that
    does not print its error stops: torchrun's failure summary shows it for that rank, in place of "To
    enable traceback see ...". A refusal raised on that rank alone (a node without the ``--resume``
    file, which each rank reads before the ranks meet) was said nowhere: rank 1 exited 2 in silence,
    torchrun stopped rank 0, and its summary named neither the file nor the flag."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}
    text = json.dumps({"message": record})
    # whole or not at all: torchrun parses the file if it exists, and one cut short (the full disk
    # this rank is refusing) stopped its agent in a JSONDecodeError traceback instead of the summary
    part = f"{path}.{os.getpid()}.part"
    try:
        with open(part, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(part, path)
    except OSError:  # the summary keeps torchrun's own text
        with contextlib.suppress(OSError):
            os.remove(part)


def run_trainer(train: Callable[[], Path]) -> int:
    """``train()``, its checkpoint printed on rank 0, and its exit status: 0; 2 for a run that diverged
    or a refused flag, file or setting (``ValueError``, ``KeyError``, ``FileNotFoundError``); 1 for a
    collective that timed out or an ``OSError`` (a full disk, a directory gone); 130 on Ctrl-C (the
    checkpoint is written whole or not at all). Each error is one line: on rank 0 (``reports_errors``),
    an ``OSError`` also on each node's first rank (a node's own disk fills too), a timeout on every rank
    that waited (the hung one may be rank 0), unused parameters and a refusal raised in the training
    loop (``RankFailed``) on every rank that raised them. A rank that does not print its error writes
    it to its torchrun error file, for torchrun's failure summary (``_tell_torchrun``)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    main_rank = reports_errors(os.environ)
    rank = f" (rank {os.environ.get('RANK')})" if not main_rank else ""
    try:
        path = train()
    except TrainingDiverged as exc:  # every rank stopped at the same step
        if main_rank:
            _say(f"error: {exc}")
        leave_group()  # after the line: torchrun stops every rank once one exits
        return 2
    except CollectiveTimeout as exc:  # no leave_group: its barrier would wait on the missing rank again
        _say(f"error{rank}: {exc}")
        return 1
    except (UnusedParameters, RankFailed) as exc:  # before ValueError: the rank may not be rank 0
        _say(f"error{rank}: {exc}")
        return 2
    except (ValueError, KeyError, FileNotFoundError) as exc:
        if main_rank:
            _say(f"error: {exc}")
        else:  # every rank may refuse alike: one line, rank 0's; this rank's in torchrun's summary
            _tell_torchrun(f"error{rank}: {exc}")
        return 2
    except OSError as exc:
        if main_rank or os.environ.get("LOCAL_RANK") == "0":
            _say(f"error{rank}: {exc}")
        else:
            _tell_torchrun(f"error{rank}: {exc}")
        return 1
    except KeyboardInterrupt:
        if main_rank:
            _say("interrupted")
        else:
            _tell_torchrun(f"interrupted{rank}")
        return 130
    if main_rank:
        print(f"checkpoint: {path}")
    return 0
