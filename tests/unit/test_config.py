import dataclasses
import io
import re
from pathlib import Path

import pytest

from modelpull import config as config_module
from modelpull.cli import build_parser
from modelpull.cli.options import config_overrides
from modelpull.config import (
    DEFAULT_PART_SIZE,
    STORE_COMMANDS,
    Flag,
    PullConfig,
    known_env,
)
from modelpull.configdoc import default_text, reference_markdown
from modelpull.errors import UsageError
from modelpull.observe.logs import setup_logging

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_docs_match_code() -> None:
    # Regenerate: python -m modelpull.configdoc > docs/configuration.md
    assert DOCS.read_text(encoding="utf-8") == reference_markdown()


def test_every_field_is_documented_with_an_env_variable() -> None:
    for f in dataclasses.fields(PullConfig):
        assert f.metadata["doc"] and f.metadata["unit"], f.name
        assert all(name.isupper() for name in f.metadata["env"]), f.name
        assert f.metadata["env"][0].startswith("MODELPULL_") or f.name == "endpoint_url"


def test_from_env_reads_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PullConfig.from_env().concurrency == PullConfig().concurrency
    monkeypatch.setenv("MODELPULL_CONCURRENCY", "7")
    monkeypatch.setenv("MODELPULL_PART_SIZE", "8MiB")
    monkeypatch.setenv("MODELPULL_FORCE", "yes")
    cfg = PullConfig.from_env()
    assert (cfg.concurrency, cfg.part_size, cfg.force) == (7, 8 << 20, True)


def test_flags_override_env() -> None:
    env = {"MODELPULL_CONCURRENCY": "7", "AWS_ENDPOINT_URL": "http://a:1"}
    cfg = PullConfig.from_env(env, concurrency=3)
    assert cfg.concurrency == 3
    assert cfg.endpoint_url == "http://a:1"
    # None means "flag not given": the environment stays.
    assert PullConfig.from_env(env, concurrency=None).concurrency == 7


def test_modelpull_endpoint_wins_over_aws() -> None:
    env = {"AWS_ENDPOINT_URL": "http://aws:1", "MODELPULL_ENDPOINT_URL": "http://mp:2"}
    assert PullConfig.from_env(env).endpoint_url == "http://mp:2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODELPULL_CONCURRENCY": "many"}, "MODELPULL_CONCURRENCY"),
        ({"MODELPULL_CONCURRENCY": "0"}, "concurrency"),
        ({"MODELPULL_PART_SIZE": "1KiB"}, "part size"),
        ({"MODELPULL_ADDRESSING_STYLE": "sideways"}, "addressing style"),
        ({"MODELPULL_FORCE": "maybe"}, "MODELPULL_FORCE"),
        ({"MODELPULL_VERIFY": "sometimes"}, "verify"),
        ({"MODELPULL_SPEED_TIME": "0"}, "speed time"),
        ({"MODELPULL_SPEED_LIMIT": "-1"}, "MODELPULL_SPEED_LIMIT"),
    ],
)
def test_invalid_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        PullConfig.from_env(env)


def test_the_stall_rule_reads_sizes_and_durations() -> None:
    config = PullConfig.from_env({"MODELPULL_SPEED_LIMIT": "2KiB", "MODELPULL_SPEED_TIME": "1m"})
    assert (config.speed_limit, config.speed_time) == (2048, 60.0)
    assert PullConfig.from_env({"MODELPULL_SPEED_LIMIT": "0"}).speed_limit == 0  # off


def test_frozen_and_keyword_only() -> None:
    cfg = PullConfig()
    assert cfg.part_size == DEFAULT_PART_SIZE
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.concurrency = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        PullConfig(4)  # type: ignore[misc]


def test_describe_has_no_secrets() -> None:
    described = PullConfig().describe()
    assert not any("secret" in k or "key" in k for k in described)


# -- the CLI's options are generated from the fields -------------------------------------


def command_help(capsys: pytest.CaptureFixture[str], command: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_help_shows_each_flag_with_its_env_and_default(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = command_help(capsys, command)
    for f in dataclasses.fields(PullConfig):
        flag: Flag | None = f.metadata["flag"]
        if flag is None or command not in flag.commands:
            continue
        assert flag.name in text, f.name
        for name in f.metadata["env"]:
            assert name in text, (f.name, name)
        if flag.metavar is not None and f.default is not None:
            assert f"default {default_text(f)}" in text, f.name
    assert "AWS_REGION)" not in text  # --region reads MODELPULL_REGION, not AWS_REGION


def test_flags_become_overrides() -> None:
    args = build_parser().parse_args(
        [
            "pull",
            "s3://b/m/",
            "dest",
            "--part-size",
            "8MiB",
            "--concurrency",
            "3",
            "--deadline",
            "2m",
            "--no-verify-ssl",
            "--force",
            "--region",
            "r",
        ]
    )
    values = {k: v for k, v in config_overrides(args).items() if v is not None}
    assert values == {
        "part_size": 8 << 20,
        "concurrency": 3,
        "deadline": 120.0,
        "verify_ssl": False,
        "force": True,
        "region": "r",
    }
    ls = build_parser().parse_args(["ls", "s3://b/m/", "--endpoint-url", "http://h:1"])
    assert {k for k, v in config_overrides(ls).items() if v is not None} == {"endpoint_url"}


@pytest.mark.parametrize(
    ("flag", "value"), [("--concurrency", "lots"), ("--part-size", "abc"), ("--deadline", "x")]
)
def test_a_bad_flag_value_names_the_flag(flag: str, value: str) -> None:
    args = build_parser().parse_args(["pull", "s3://b/m/", "dest", flag, value])
    with pytest.raises(UsageError, match=flag):
        config_overrides(args)


# -- the variables of the tools modelpull replaces, and misspelt ones ------------------


def test_s3_endpoint_url_ranks_after_the_aws_variables() -> None:
    assert PullConfig.from_env({"S3_ENDPOINT_URL": "http://s5:1"}).endpoint_url == "http://s5:1"
    env = {"S3_ENDPOINT_URL": "http://s5:1", "AWS_ENDPOINT_URL": "http://aws:2"}
    assert PullConfig.from_env(env).endpoint_url == "http://aws:2"
    env |= {"MODELPULL_ENDPOINT_URL": "http://mp:3"}
    assert PullConfig.from_env(env).endpoint_url == "http://mp:3"


def test_aws_max_attempts_means_max_attempts() -> None:
    assert PullConfig.from_env({"AWS_MAX_ATTEMPTS": "9"}).max_attempts == 9
    env = {"AWS_MAX_ATTEMPTS": "9", "MODELPULL_MAX_ATTEMPTS": "2"}
    assert PullConfig.from_env(env).max_attempts == 2


def test_no_sign_request_and_allow_empty_have_flags_and_variables() -> None:
    env = {"MODELPULL_NO_SIGN_REQUEST": "yes", "MODELPULL_ALLOW_EMPTY": "1"}
    cfg = PullConfig.from_env(env)
    assert (cfg.no_sign_request, cfg.allow_empty) == (True, True)
    args = build_parser().parse_args(["pull", "s3://bk/m/", "d", "--no-sign-request"])
    assert config_overrides(args)["no_sign_request"] is True
    args = build_parser().parse_args(["ls", "s3://bk/m/", "--no-sign-request"])
    assert config_overrides(args)["no_sign_request"] is True


def test_a_misspelt_variable_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, restore_logger: None
) -> None:
    monkeypatch.setattr(config_module, "_warned", set())
    stream = io.StringIO()
    setup_logging(stream=stream, environ={})
    env = {"MODELPULL_CONCURENCY": "4", "MODELPULL_ZZZ": "1", "MODELPULL_CONCURRENCY": "2"}
    assert PullConfig.from_env(env).concurrency == 2
    PullConfig.from_env(env)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "MODELPULL_CONCURENCY" in lines[0] and "did you mean MODELPULL_CONCURRENCY?" in lines[0]
    assert "MODELPULL_ZZZ" in lines[1] and "docs/configuration.md" in lines[1]


def test_every_modelpull_variable_in_the_sources_is_known() -> None:
    # A variable read somewhere but missing from known_env() would be "misspelt".
    root = Path(__file__).parents[2]
    names = set()
    for path in [*root.glob("src/**/*.py"), *root.glob("tests/**/*.py"), *root.glob("docs/*.md")]:
        names |= set(re.findall(r"\bMODELPULL_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    misspelt_on_purpose = {"MODELPULL_CONCURENCY", "MODELPULL_ZZZ"}
    assert names - misspelt_on_purpose <= known_env(), names - known_env()
