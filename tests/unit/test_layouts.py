import pytest

from slim.layouts import LAYOUTS, NTU25, UCLA20, Layout, get_layout


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=lambda lay: lay.name)
def test_layout_is_a_tree_rooted_at_its_root(layout: Layout):
    layout.validate()
    assert len(layout.bones) == layout.num_joints - 1
    order = layout.topological_order
    position = {j: i for i, j in enumerate(order)}
    for child, parent in layout.bones:
        assert position[parent] < position[child]
    assert order[0] == layout.root


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=lambda lay: lay.name)
def test_mirror_pairs_are_symmetric_and_left_right(layout: Layout):
    perm = layout.mirror_permutation
    assert all(perm[perm[j]] == j for j in range(layout.num_joints))
    for left, right in layout.mirror_pairs:
        assert layout.joint_names[left].startswith("left_")
        assert layout.joint_names[right] == "right_" + layout.joint_names[left].removeprefix("left_")
    # Mirroring maps bones onto bones: the tree is left/right symmetric.
    bones = set(layout.bones)
    assert {(perm[c], perm[p]) for c, p in bones} == bones


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=lambda lay: lay.name)
def test_groups_partition_joints_and_follow_the_body(layout: Layout):
    flat = [j for joints in layout.groups.values() for j in joints]
    assert sorted(flat) == list(range(layout.num_joints))
    assert set(layout.groups) == {"trunk", "left_arm", "right_arm", "left_leg", "right_leg"}
    # Each limb group is connected in the bone tree: every joint but the first has its parent inside.
    for name, joints in layout.groups.items():
        inside = set(joints)
        assert sum(layout.parents[j] not in inside for j in joints) == 1, name
    # Mirror maps the left groups onto the right ones.
    perm = layout.mirror_permutation
    assert [perm[j] for j in layout.groups["left_arm"]] == list(layout.groups["right_arm"])
    assert [perm[j] for j in layout.groups["left_leg"]] == list(layout.groups["right_leg"])


def test_known_layout_facts():
    assert (NTU25.num_joints, UCLA20.num_joints) == (25, 20)
    assert NTU25.joint_names[NTU25.centre] == "spine_mid"
    assert UCLA20.joint_names[UCLA20.centre] == "spine"
    assert NTU25.parents[21] == 7 and NTU25.parents[22] == 6  # hand tip and thumb
    assert UCLA20.parents[4] == 2 and UCLA20.parents[8] == 2  # shoulders hang off the shoulder centre


def test_validate_rejects_broken_layouts():
    cycle = Layout("bad", ("a", "b", "c"), (-1, 2, 1), (), {"trunk": (0, 1, 2)}, 0, (0, 1), (1, 2))
    with pytest.raises(ValueError, match="not a tree"):
        cycle.validate()
    overlap = Layout("bad", ("a", "b"), (-1, 0), (), {"trunk": (0, 1), "left_arm": (1,)}, 0, (0, 1), (0, 1))
    with pytest.raises(ValueError, match="partition"):
        overlap.validate()
    two_roots = Layout("bad", ("a", "b"), (-1, -1), (), {"trunk": (0, 1)}, 0, (0, 1), (0, 1))
    with pytest.raises(ValueError, match="one root"):
        two_roots.validate()


def test_unknown_layout_lists_known_ones():
    with pytest.raises(ValueError, match="ntu25, ucla20"):
        get_layout("kinect3")
