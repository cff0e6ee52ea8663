import pytest

from pipeline.config import Config, ConfigError, dump_config, load_config


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(Config()))
    assert load_config(path) == Config()


def test_partial_yaml_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("overscan: {method: row_median}\nstack: {maxiters: null, sigma_upper: 2.5}\n")
    config = load_config(path)
    assert config.overscan.method == "row_median"
    assert config.stack.maxiters is None and config.stack.sigma_upper == 2.5
    assert config.chunks == Config().chunks


@pytest.mark.parametrize(
    "text,match",
    [
        ("overscan: {method: fancy}", "method"),
        ("stack: {sigmaa: 3}", "sigmaa"),
        ("chunks: {strip_rows: many}", "strip_rows"),
        ("typo_section: 1", "typo_section"),
        ("overscan: [unclosed", "cannot read"),
        ("synthesis: {realizations: -1}", "realizations must be >= 0"),
        ("synthesis: {realisations: 2}", "realisations"),
    ],
)
def test_invalid_configuration_names_the_problem(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)
