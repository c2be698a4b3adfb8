"""Evaluation protocols: which sequences train and which test, as pure functions of metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NTU60_XSUB_TRAIN_SUBJECTS = frozenset(
    {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
)
NTU120_XSUB_TRAIN_SUBJECTS = NTU60_XSUB_TRAIN_SUBJECTS | frozenset(
    {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92,
     93, 94, 95, 97, 98, 100, 103}
)  # fmt: skip
NTU60_NUM_ACTIONS = 60
NTU60_NUM_SETUPS = 17


@dataclass(frozen=True)
class SampleMeta:
    """The metadata a protocol decides on (one row of the ingested dataset)."""

    sample_id: str
    label: int
    subject: int
    view: int
    setup: int | None


@dataclass(frozen=True)
class Protocol:
    """A named split: which dataset it reads, which samples it keeps, and which of those train."""

    name: str
    dataset: str
    description: str
    keep: Callable[[SampleMeta], bool]
    is_train: Callable[[SampleMeta], bool]


def _in_ntu60(s: SampleMeta) -> bool:
    return s.label < NTU60_NUM_ACTIONS and (s.setup or 0) <= NTU60_NUM_SETUPS


def _everything(s: SampleMeta) -> bool:
    return True


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("ntu60-xsub", "ntu", "NTU-60 cross-subject: 20 training performers",
                 _in_ntu60, lambda s: s.subject in NTU60_XSUB_TRAIN_SUBJECTS),
        Protocol("ntu60-xview", "ntu", "NTU-60 cross-view: train cameras 2 and 3, test camera 1",
                 _in_ntu60, lambda s: s.view in (2, 3)),
        Protocol("ntu120-xsub", "ntu", "NTU-120 cross-subject: 53 training performers",
                 _everything, lambda s: s.subject in NTU120_XSUB_TRAIN_SUBJECTS),
        Protocol("ntu120-xset", "ntu", "NTU-120 cross-setup: even setup ids train",
                 _everything, lambda s: (s.setup or 0) % 2 == 0),
        Protocol("ucla-xview", "nw-ucla", "NW-UCLA cross-view: train views 1 and 2, test view 3",
                 _everything, lambda s: s.view in (1, 2)),
        # Carved from ucla-xview's training views, for choosing settings; view 3 is never read.
        Protocol("ucla-xview-val", "nw-ucla", "NW-UCLA cross-view validation: train view 1, test view 2",
                 lambda s: s.view in (1, 2), lambda s: s.view == 1),
    )
}  # fmt: skip


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}") from None


def split_samples(protocol: Protocol, samples: list[SampleMeta]) -> dict[str, list[str]]:
    """Sorted train/test sample ids of `samples` under `protocol`."""
    kept = [s for s in samples if protocol.keep(s)]
    train = sorted(s.sample_id for s in kept if protocol.is_train(s))
    test = sorted(s.sample_id for s in kept if not protocol.is_train(s))
    return {"train": train, "test": test}
