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


@pytest.mark.parametrize(
    "text,match",
    [
        ("write_variance: 'yes'", "write_variance"),
        ("write_variance: 1", "write_variance"),
        ("register: {subpixel: 'true'}", "subpixel"),
        ("cosmics: {niter: 2.0}", "niter"),
        ("chunks: {strip_rows: true}", "strip_rows"),
        ("chunks: {strip_rows: 0}", "positive multiple"),
        ("chunks: {strip_rows: -512}", "positive multiple"),
        ("chunks: {strip_rows: 768}", "positive multiple"),
        ("chunks: {strip_rows: 512, store_chunk_px: 0}", "positive multiple"),
        ("instrument: 2024-01-01", "plain YAML"),
    ],
)
def test_wrong_types_and_unusable_chunking_are_configuration_errors(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_integers_are_accepted_for_float_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stack: {sigma_upper: 2}\nchunks: {strip_rows: 1024, store_chunk_px: 256}\n")
    config = load_config(path)
    assert config.stack.sigma_upper == 2.0 and config.chunks.strip_rows == 1024
