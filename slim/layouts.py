"""Skeleton layouts: the one definition of joints, bones, mirror pairs and body parts.

Everything downstream (ingestion, preprocessing, masking, augmentation, plotting) reads a
`Layout` from here; nothing else hard-codes a joint index.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

BODY_PARTS = ("trunk", "left_arm", "right_arm", "left_leg", "right_leg")


@dataclass(frozen=True)
class Layout:
    """A skeleton layout.

    `parents[j]` is the parent of joint j in the bone tree (-1 for the root). `groups` maps each
    body part to its joints, ordered along the limb so that neighbours in the list are neighbours
    in the body (semantic tube masking draws contiguous runs of them). `mirror_pairs` lists
    (left, right) joints; joints not listed are their own mirror image. `centre` is the joint a clip
    is centred on. `spine` (lower, upper) and `hips` (left, right) are the joints view normalisation
    aligns: the spine with the vertical axis, the hip line with x (`slim.data.transforms.normalise_view`).
    """

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    mirror_pairs: tuple[tuple[int, int], ...]
    groups: dict[str, tuple[int, ...]]
    centre: int
    spine: tuple[int, int]
    hips: tuple[int, int]

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @cached_property
    def root(self) -> int:
        (root,) = [j for j, p in enumerate(self.parents) if p < 0]
        return root

    @cached_property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(child, parent) pairs, one per non-root joint."""
        return tuple((j, p) for j, p in enumerate(self.parents) if p >= 0)

    @cached_property
    def topological_order(self) -> tuple[int, ...]:
        """Joints ordered so that every parent comes before its children (root first)."""
        order, frontier = [], [self.root]
        while frontier:
            j = frontier.pop(0)
            order.append(j)
            frontier.extend(c for c, p in enumerate(self.parents) if p == j)
        return tuple(order)

    @cached_property
    def mirror_permutation(self) -> tuple[int, ...]:
        """perm[j] is the joint that j becomes under a left/right mirror."""
        perm = list(range(self.num_joints))
        for left, right in self.mirror_pairs:
            perm[left], perm[right] = right, left
        return tuple(perm)

    @cached_property
    def group_of_joint(self) -> tuple[str, ...]:
        """Body part of each joint, indexed by joint."""
        part = [""] * self.num_joints
        for name, joints in self.groups.items():
            for j in joints:
                part[j] = name
        return tuple(part)

    def validate(self) -> None:
        """Raise ValueError unless this layout is a tree with a consistent mirror and partition."""
        n = self.num_joints
        if len(self.parents) != n:
            raise ValueError(f"{self.name}: {len(self.parents)} parents for {n} joints")
        roots = [j for j, p in enumerate(self.parents) if p < 0]
        if len(roots) != 1:
            raise ValueError(f"{self.name}: expected one root, found {roots}")
        if sorted(self.topological_order) != list(range(n)):
            raise ValueError(f"{self.name}: bone graph is not a tree reaching every joint")
        flat = [j for joints in self.groups.values() for j in joints]
        if sorted(flat) != list(range(n)):
            raise ValueError(f"{self.name}: body-part groups do not partition the joints")
        perm = self.mirror_permutation
        if any(perm[perm[j]] != j for j in range(n)) or len({j for pair in self.mirror_pairs for j in pair}) != 2 * len(
            self.mirror_pairs
        ):
            raise ValueError(f"{self.name}: mirror pairs overlap")
        for what, joints in (("centre", (self.centre,)), ("spine", self.spine), ("hips", self.hips)):
            if not all(0 <= j < n for j in joints) or len(set(joints)) != len(joints):
                raise ValueError(f"{self.name}: {what} joints {joints} out of range or repeated")


def _parents(num_joints: int, bones: list[tuple[int, int]]) -> tuple[int, ...]:
    parents = [-1] * num_joints
    for child, parent in bones:
        parents[child] = parent
    return tuple(parents)


NTU25 = Layout(
    name="ntu25",
    joint_names=(
        "spine_base", "spine_mid", "neck", "head",
        "left_shoulder", "left_elbow", "left_wrist", "left_hand",
        "right_shoulder", "right_elbow", "right_wrist", "right_hand",
        "left_hip", "left_knee", "left_ankle", "left_foot",
        "right_hip", "right_knee", "right_ankle", "right_foot",
        "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip", "right_thumb",
    ),  # fmt: skip
    parents=_parents(25, [
        (1, 0), (20, 1), (2, 20), (3, 2), (4, 20), (5, 4), (6, 5), (7, 6), (21, 7), (22, 6),
        (8, 20), (9, 8), (10, 9), (11, 10), (23, 11), (24, 10),
        (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16), (18, 17), (19, 18),
    ]),  # fmt: skip
    mirror_pairs=((4, 8), (5, 9), (6, 10), (7, 11), (21, 23), (22, 24), (12, 16), (13, 17), (14, 18), (15, 19)),
    groups={
        "trunk": (0, 1, 20, 2, 3),
        "left_arm": (4, 5, 6, 7, 21, 22),
        "right_arm": (8, 9, 10, 11, 23, 24),
        "left_leg": (12, 13, 14, 15),
        "right_leg": (16, 17, 18, 19),
    },
    centre=1,
    spine=(0, 20),  # spine base -> spine shoulder
    hips=(12, 16),
)

UCLA20 = Layout(
    name="ucla20",
    joint_names=(
        "hip_centre", "spine", "shoulder_centre", "head",
        "left_shoulder", "left_elbow", "left_wrist", "left_hand",
        "right_shoulder", "right_elbow", "right_wrist", "right_hand",
        "left_hip", "left_knee", "left_ankle", "left_foot",
        "right_hip", "right_knee", "right_ankle", "right_foot",
    ),  # fmt: skip
    parents=_parents(20, [
        (1, 0), (2, 1), (3, 2), (4, 2), (5, 4), (6, 5), (7, 6), (8, 2), (9, 8), (10, 9), (11, 10),
        (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16), (18, 17), (19, 18),
    ]),  # fmt: skip
    mirror_pairs=((4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17), (14, 18), (15, 19)),
    groups={
        "trunk": (0, 1, 2, 3),
        "left_arm": (4, 5, 6, 7),
        "right_arm": (8, 9, 10, 11),
        "left_leg": (12, 13, 14, 15),
        "right_leg": (16, 17, 18, 19),
    },
    centre=1,
    spine=(0, 2),  # hip centre -> shoulder centre
    hips=(12, 16),
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (NTU25, UCLA20)}


def get_layout(name: str) -> Layout:
    """Look a layout up by name, with an error that lists the known ones."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton layout {name!r}; known: {', '.join(sorted(LAYOUTS))}") from None
