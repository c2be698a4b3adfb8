import pytest
import yaml

from pipeline.params import DEFAULT_PARAMS, ParamsError, load_params, load_profile


def test_repo_params_are_valid():
    params = load_params(DEFAULT_PARAMS)
    assert {"nw-ucla", "ntu"} <= set(params.datasets)
    assert params.protocols["ucla-xview"] == "nw-ucla"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("datasets: {}\nprotocols: {}\ningest: {max_bad_fraction: 2}\n", "less than or equal to 1"),
        ("datasets: {}\nprotocols: {}\ningest: {max_bad_fractoin: 0.1}\n", "Extra inputs are not permitted"),
        ("datasets: {x: {format: csv, raw: .}}\nprotocols: {}\n", "format"),
        ("datasets: {}\nprotocols: {ucla-xview: ntu}\n", "splits dataset 'nw-ucla', not 'ntu'"),
        ("datasets: {}\nprotocols: {ucla-xview: nw-ucla}\n", "not in `datasets`"),
        ("datasets: {}\nprotocols: {ntu-foo: ntu}\n", "unknown protocol"),
        ("datasets: [\n", "cannot read"),
    ],
)
def test_bad_params_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message) as info:
        load_params(path)
    assert str(path) in str(info.value)


def _with_section_settings(tmp_path, pretrain: dict, evaluate: dict | None = None):
    params = yaml.safe_load(DEFAULT_PARAMS.read_text())
    params["pretrain"].update(pretrain)
    params["evaluate"].update(evaluate or {})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_settings_under_a_section_override_every_profile(tmp_path):
    """What `dvc exp run -S pretrain.lr=...` writes: a key beside `profiles`."""
    path = _with_section_settings(
        tmp_path, {"lr": 0.5, "slim": {"steps": 7}}, {"knn_ks": [1, 3], "linear": {"epochs": 2}}
    )
    for name in ("demo", "cpu-long", "paper"):
        profile = load_profile(path, "pretrain", name)[1]
        assert (profile.lr, profile.slim.steps) == (0.5, 7)
    demo, before = (load_profile(p, "pretrain", "demo")[1] for p in (path, DEFAULT_PARAMS))
    assert (demo.slim.model, demo.mae, demo.seed) == (before.slim.model, before.mae, before.seed)  # the rest stays
    written = yaml.safe_load(DEFAULT_PARAMS.read_text())["pretrain"]
    assert written["lr"] is None and before.lr == written["profiles"]["demo"]["lr"]  # null: the profile's own
    evaluate, before = (load_profile(p, "evaluate", None)[1] for p in (path, DEFAULT_PARAMS))
    assert evaluate.knn_ks == (1, 3) and evaluate.linear == {**before.linear, "epochs": 2}


def test_a_null_setting_leaves_a_profile_default_alone(tmp_path):
    params = yaml.safe_load(DEFAULT_PARAMS.read_text())
    del params["pretrain"]["profiles"]["demo"]["seed"]  # the profile relies on the default, 0
    params["pretrain"]["seed"] = None
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_profile(path, "pretrain", "demo")[1].seed == 0


@pytest.mark.parametrize(("override", "message"), [({"lr": -1.0}, "greater than 0"), ({"lrr": 1.0}, "lrr")])
def test_bad_section_settings_are_clear_errors(tmp_path, override, message):
    path = _with_section_settings(tmp_path, override)
    with pytest.raises(ParamsError, match=message) as info:
        load_params(path)
    assert str(path) in str(info.value)
