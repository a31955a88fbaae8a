import pytest

from gateway.infra.config import ConfigError, load_settings


def test_defaults_load():
    s = load_settings(environ={})
    assert s.server.port == 8080 and s.engine.encoder == "campp" and s.server.tls_cert is None


def test_env_overrides_and_bad_values_name_the_key(tmp_path):
    s = load_settings(environ={"VBGW_SERVER__PORT": "9091", "VBGW_ENGINE__ENCODER": "ge2e"})
    assert s.server.port == 9091 and s.engine.encoder == "ge2e"
    with pytest.raises(ConfigError, match="server.port"):
        load_settings(environ={"VBGW_SERVER__PORT": "eighty"})
    with pytest.raises(ConfigError, match="engine.encoder"):
        load_settings(environ={"VBGW_ENGINE__ENCODER": "whisper"})
    with pytest.raises(ConfigError, match="server.nope"):
        load_settings(environ={"VBGW_SERVER__NOPE": "1"})
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        load_settings(environ={"VBGW_SERVER__TLS_CERT": str(tmp_path / "c.pem")})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_cli_reports_config_errors_without_traceback(capsys, monkeypatch):
    from gateway.cli.main import main
    monkeypatch.setenv("VBGW_SERVER__PORT", "-5")
    assert main(["admin", "profiles"]) == 2
    err = capsys.readouterr().err
    assert "server.port" in err and "Traceback" not in err
