import pytest

from pipeline.params import DEFAULT_PARAMS, ParamsError, load_params


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
