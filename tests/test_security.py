"""TLS, mutual TLS, bearer tokens, the plaintext health port and turning reflection off."""

from __future__ import annotations

import json

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mdn_serve.tools import loadtest
from mdn_serve.tools.client import MdnClient

from tests.conftest import serve_in_process

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as PEM files."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@mdn-serve.test")
    paths = {name: root / f"{name}.pem" for name in ("ca", "server_cert", "server_key", "client_cert", "client_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    (paths["server_cert"]).write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    (paths["client_cert"]).write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    other = trustme.CA().issue_cert("intruder@elsewhere.test")  # signed by a CA the server does not trust
    paths["intruder_cert"], paths["intruder_key"] = root / "intruder_cert.pem", root / "intruder_key.pem"
    paths["intruder_cert"].write_bytes(b"".join(blob.bytes() for blob in other.cert_chain_pems))
    other.private_key_pem.write_to_path(str(paths["intruder_key"]))
    (root / "token").write_text(TOKEN + "\n")
    paths["token"] = root / "token"
    return {k: str(v) for k, v in paths.items()}


def predict(client: MdnClient) -> list[int]:
    return list(client.predict("two_link_arm", [[0.6, 0.6]]).weights.shape)


def refused(client: MdnClient) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        predict(client)
    return info.value.code()


def test_tls_serves_clients_that_trust_the_ca_and_keeps_a_plaintext_health_port(trained, tmp_path, pki):
    proc = serve_in_process("--model-repository", str(trained["models"]), "--tls-cert",
                        pki["server_cert"], "--tls-key", pki["server_key"], "--health-port", "0")  # fmt: skip
    try:
        assert "(gRPC, TLS)" in proc.log()
        with MdnClient(proc.target, ca_cert=pki["ca"], timeout=10) as client:
            assert predict(client) == [1, 3]
        with MdnClient(proc.target, timeout=5) as plaintext:
            assert refused(plaintext) == grpc.StatusCode.UNAVAILABLE
        health_port = int(proc.log().split("health (plaintext) on ")[1].split(":")[1].split()[0])
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.stop()


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(trained, tmp_path, pki):
    proc = serve_in_process("--model-repository", str(trained["models"]), "--tls-cert",
                        pki["server_cert"], "--tls-key", pki["server_key"], "--tls-client-ca", pki["ca"])  # fmt: skip
    try:
        assert "(gRPC, mutual TLS)" in proc.log()
        with MdnClient(proc.target, ca_cert=pki["ca"], client_cert=pki["client_cert"],
                       client_key=pki["client_key"], timeout=10) as client:  # fmt: skip
            assert predict(client) == [1, 3]
        with MdnClient(proc.target, ca_cert=pki["ca"], timeout=5) as anonymous:
            assert refused(anonymous) == grpc.StatusCode.UNAVAILABLE
        with MdnClient(proc.target, ca_cert=pki["ca"], client_cert=pki["intruder_cert"],
                       client_key=pki["intruder_key"], timeout=5) as intruder:  # fmt: skip
            assert refused(intruder) == grpc.StatusCode.UNAVAILABLE
        out = tmp_path / "load.json"
        assert loadtest.main(["--target", proc.target, "--duration", "0.3", "--warmup", "0", "--quiet",
                              "--ca-cert", pki["ca"], "--client-cert", pki["client_cert"],
                              "--client-key", pki["client_key"], "--json", str(out)]) == 0  # fmt: skip
        result = json.loads(out.read_text())
        assert result["requests"] > 0 and set(result["codes"]) == {"OK"}
    finally:
        proc.stop()


def test_bearer_token_is_required_except_for_health_and_never_logged(trained, tmp_path, pki):
    proc = serve_in_process("--model-repository", str(trained["models"]), "--auth-token-file",
                        pki["token"], "--disable-reflection")  # fmt: skip
    try:
        with MdnClient(proc.target, token=TOKEN, timeout=10) as client:
            assert predict(client) == [1, 3]
            assert client.solve("two_link_arm", [[0.6, 0.6]]).num_solutions[0] >= 1
        for token in (None, "wrong", TOKEN + "x", ""):
            with MdnClient(proc.target, token=token, timeout=5) as client:
                assert refused(client) == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(proc.target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                timeout=5,
                metadata=[("authorization", f"Bearer {TOKEN}")],
            )
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stream))
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # reflection is off
            # Without the token a made-up method is refused like a real one: nothing to enumerate.
            made_up = channel.unary_unary("/mdn.v1.MixtureDensityService/NoSuchMethod")
            with pytest.raises(grpc.RpcError) as unknown:
                made_up(b"", timeout=5)
            assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
        refusals = proc.server.metrics.registry.get_sample_value("mdn_unauthenticated_requests_total")
        assert refusals == 5  # four refused clients and the made-up method
        out = tmp_path / "load.json"
        assert loadtest.main(["--target", proc.target, "--duration", "0.3", "--warmup", "0", "--quiet",
                              "--token-file", pki["token"], "--json", str(out)]) == 0  # fmt: skip
        assert set(json.loads(out.read_text())["codes"]) == {"OK"}
    finally:
        proc.stop()
    assert TOKEN not in proc.log() and "bearer token required" in proc.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
        (["--auth-token-file", "missing-token"], "missing-token: no such file"),
    ],
)
def test_inconsistent_security_flags_are_usage_errors(capsys, args, message):
    from mdn_serve.config import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(args, {})
    assert message in capsys.readouterr().err


def test_silent_and_idle_connections_are_closed(trained):
    import socket
    import threading
    import time

    proc = serve_in_process("--model-repository", str(trained["models"]), "--handshake-timeout-seconds", "1",
                            "--max-connection-idle-seconds", "1")  # fmt: skip
    try:
        host, port = proc.target.rsplit(":", 1)
        silent = socket.create_connection((host, int(port)), timeout=10)  # connects, never speaks
        start = time.monotonic()
        while silent.recv(1024):  # the server's own settings frame, then nothing until it closes
            pass
        assert time.monotonic() - start < 8
        silent.close()

        states: list[grpc.ChannelConnectivity] = []
        idle = threading.Event()

        def watch(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if grpc.ChannelConnectivity.READY in states and state == grpc.ChannelConnectivity.IDLE:
                idle.set()

        with grpc.insecure_channel(proc.target) as channel:
            channel.subscribe(watch, try_to_connect=False)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert idle.wait(10)  # the server sent GOAWAY after a second without calls
            channel.unsubscribe(watch)
    finally:
        proc.stop()


def test_a_half_sent_metrics_request_does_not_hold_a_thread(trained):
    import socket
    import time
    import urllib.request

    from mdn_serve.metrics_http import READ_TIMEOUT

    proc = serve_in_process("--model-repository", str(trained["models"]))
    try:
        port = proc.server.metrics_port
        assert port
        stuck = [socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT + 5) for _ in range(20)]
        for conn in stuck:
            conn.sendall(b"GET /metr")  # and never the rest
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:  # others are served
            assert page.status == 200 and b"mdn_model_info" in page.read()
        start = time.monotonic()
        for conn in stuck:
            while conn.recv(1024):  # the server gives up on each after READ_TIMEOUT
                pass
            conn.close()
        assert time.monotonic() - start < READ_TIMEOUT + 4
    finally:
        proc.stop()


def test_a_failed_tls_handshake_leaves_a_line_with_the_reason(trained, tmp_path, pki):
    """Plaintext against TLS, and mutual TLS without a client certificate: gRPC's own log line says why."""
    from tests.conftest import start_server, stop_server

    server = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--tls-cert",
                          pki["server_cert"], "--tls-key", pki["server_key"], "--tls-client-ca", pki["ca"])  # fmt: skip
    try:
        with MdnClient(server.target, timeout=3) as plaintext:
            assert refused(plaintext) == grpc.StatusCode.UNAVAILABLE
        with MdnClient(server.target, ca_cert=pki["ca"], timeout=3) as anonymous:
            assert refused(anonymous) == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_server(server)
    log = server.log()
    assert "Handshake failed with error SSL_ERROR_SSL" in log and "WRONG_VERSION_NUMBER" in log
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log
