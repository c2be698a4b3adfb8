"""The in-memory record of one skeleton sequence, shared by every reader and writer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SkeletonSequence:
    """One recorded sequence, losslessly.

    `joints` is float32 (frames, bodies, joints, 3) in the source's units (metres for Kinect); a body
    absent from a frame is NaN. Bodies sit in slots in order of first appearance. `tracking_state`
    (same leading shape, uint8; 0 not tracked, 1 inferred, 2 tracked) is kept where the source has it.
    """

    sample_id: str
    dataset: str
    layout: str
    label: int  # 0-based class index
    action: str
    subject: int | None
    view: int | None  # camera / view id
    setup: int | None
    replication: int | None
    joints: np.ndarray
    tracking_state: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.joints.shape[0])

    @property
    def num_bodies(self) -> int:
        return int(self.joints.shape[1])

    @property
    def num_joints(self) -> int:
        return int(self.joints.shape[2])
