import pytest

from slim.data.splits import PROTOCOLS, SampleMeta, get_protocol, split_samples


def _ntu(setup, camera, subject, action):
    return SampleMeta(f"S{setup:03d}C{camera:03d}P{subject:03d}R001A{action:03d}", action - 1, subject, camera, setup)


def test_ntu60_xsub_and_xview():
    samples = [_ntu(1, 1, 1, 1), _ntu(1, 2, 3, 5), _ntu(2, 3, 38, 60), _ntu(18, 1, 1, 1), _ntu(1, 1, 1, 61)]
    xsub = split_samples(get_protocol("ntu60-xsub"), samples)
    assert xsub == {"train": ["S001C001P001R001A001", "S002C003P038R001A060"], "test": ["S001C002P003R001A005"]}
    xview = split_samples(get_protocol("ntu60-xview"), samples)
    assert xview == {"train": ["S001C002P003R001A005", "S002C003P038R001A060"], "test": ["S001C001P001R001A001"]}


def test_ntu120_keeps_everything():
    samples = [_ntu(1, 1, 45, 1), _ntu(18, 1, 44, 120), _ntu(32, 2, 103, 61)]
    assert split_samples(get_protocol("ntu120-xsub"), samples) == {
        "train": ["S001C001P045R001A001", "S032C002P103R001A061"],
        "test": ["S018C001P044R001A120"],
    }
    assert split_samples(get_protocol("ntu120-xset"), samples) == {
        "train": ["S018C001P044R001A120", "S032C002P103R001A061"],
        "test": ["S001C001P045R001A001"],
    }


def test_ucla_cross_view():
    samples = [SampleMeta(f"a01_s01_e00_v0{v}", 0, 1, v, None) for v in (1, 2, 3)]
    assert split_samples(get_protocol("ucla-xview"), samples) == {
        "train": ["a01_s01_e00_v01", "a01_s01_e00_v02"],
        "test": ["a01_s01_e00_v03"],
    }
    # the validation carve reads only ucla-xview's training views: the test view stays unseen
    assert split_samples(get_protocol("ucla-xview-val"), samples) == {
        "train": ["a01_s01_e00_v01"],
        "test": ["a01_s01_e00_v02"],
    }


def test_unknown_protocol_lists_known():
    with pytest.raises(ValueError, match="ucla-xview"):
        get_protocol("ntu60-xfoo")
    assert len(PROTOCOLS) == 6
