"""Start-up, readiness, shutdown and unexpected failures of the real server."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mdn_core.model import LoadedModel
from mdn_serve._proto.mdn.v1 import mdn_pb2 as pb
from mdn_serve._proto.mdn.v1 import mdn_pb2_grpc as pb_grpc
from mdn_serve.app import create_server, run
from mdn_serve.config import Settings, compute_threads, parse_settings
from mdn_serve.metrics import Metrics
from mdn_serve.serving import repository as repository_module
from mdn_serve.serving.repository import ModelRuntime

from tests.conftest import start_server, stop_server

REQUEST = pb.PredictRequest(
    model=pb.ModelRef(name="two_link_arm"), inputs=pb.Tensor(shape=[1, 2], raw=np.array([0.6, 0.6], "<f4").tobytes())
)


def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdn_serve.cli", "--port", "0", "--http-port", "0", "--metrics-port", "-1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_up_error(caplog, *args: str) -> tuple[int, str]:
    """Run a server that cannot start in this process, as `mdn-serve` would: its exit code and log."""
    # (--io-scheduling normal: the test runner's own thread keeps its scheduling policy; later flags win)
    flags = ["--port", "0", "--http-port", "0", "--metrics-port", "-1", "--io-scheduling", "normal", *args]
    settings = parse_settings(flags, {})
    with caplog.at_level(logging.ERROR, logger="mdn_serve"):
        code = run(settings)
    return code, caplog.text


def copy_model(trained, tmp_path, name="two_link_arm"):
    repo = tmp_path / "repo"
    shutil.copytree(trained["models"] / name, repo / name)
    return repo


def test_a_repository_without_models_is_a_clear_start_up_error(tmp_path):
    result = serve_cli("--model-repository", str(tmp_path))
    assert result.returncode == 1 and "no models under" in result.stderr and "Traceback" not in result.stderr
    result = serve_cli("--model-repository", str(tmp_path / "missing"))
    assert result.returncode == 1 and "is not a folder" in result.stderr


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("corrupt", "ONNX Runtime cannot load it"),
        ("no_metadata", "no 'mdn' metadata property"),
        ("bad_metadata", "metadata 'mdn' is not valid JSON"),
        ("bad_version", "version folders must be positive integers"),
        ("empty_version", "no model.onnx in this version folder"),
    ],
)
def test_a_bad_model_stops_start_up_naming_the_file(trained, tmp_path, caplog, breakage, message):
    repo = copy_model(trained, tmp_path)
    path = repo / "two_link_arm" / "1" / "model.onnx"
    if breakage == "corrupt":
        path.write_bytes(path.read_bytes()[:500])
    elif breakage in ("no_metadata", "bad_metadata"):
        model = onnx.load(str(path))
        entry = next(p for p in model.metadata_props if p.key == "mdn")
        if breakage == "no_metadata":
            model.metadata_props.remove(entry)
        else:
            entry.value = "{not json"
        onnx.save(model, str(path))
    elif breakage == "bad_version":
        (repo / "two_link_arm" / "latest").mkdir()
    else:
        (repo / "two_link_arm" / "2").mkdir()
    code, text = start_up_error(caplog, "--model-repository", str(repo))
    assert code == 1, text
    assert message in text and "two_link_arm" in text
    assert "Traceback" not in text


def test_cuda_device_without_cuda_is_a_clear_start_up_error(trained, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA; the GPU run covers --device cuda")
    code, text = start_up_error(caplog, "--model-repository", str(trained["models"]), "--device", "cuda")
    assert code == 1
    assert "--device cuda needs ONNX Runtime's CUDAExecutionProvider" in text


def test_sigterm_drains_and_exits_cleanly(trained, tmp_path):
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--device", "auto")
    with grpc.insecure_channel(proc.target) as channel:
        pb_grpc.MixtureDensityServiceStub(channel).Predict(REQUEST, timeout=10)
    assert "execution providers ['CPUExecutionProvider']" in proc.log() or "CUDA" in proc.log()
    assert stop_server(proc) == 0
    assert "shutting down" in proc.log() and "stopped" in proc.log()


def test_settings_come_from_flags_over_environment():
    env = {"MDN_PORT": "9001", "MDN_MAX_ROWS": "12", "MDN_DEVICE": "auto"}
    s = parse_settings(["--max-rows", "34"], env)
    assert (s.port, s.max_rows, s.device) == (9001, 34, "auto")
    assert parse_settings([], {}) == Settings()


def test_compute_threads_default_to_the_cpus_the_process_may_use():
    assert compute_threads(Settings()) == min(2, len(os.sched_getaffinity(0)))
    assert compute_threads(Settings(compute_threads=3)) == 3
    # Pinned to one CPU (as a container limited to one core would be), the server uses one thread.
    code = "from mdn_serve.config import Settings, compute_threads; print(compute_threads(Settings()))"
    one_cpu = {min(os.sched_getaffinity(0))}
    pinned = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, one_cpu),
    )  # fmt: skip
    assert pinned.stdout.strip() == "1"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"MDN_PORT": "eighty"}, "MDN_PORT='eighty' is not a valid int"),
        (["--max-rows", "0"], {}, "--max-rows must be >= 1"),
        (["--compute-threads", "-1"], {}, "--compute-threads must be >= 0"),
        (["--device", "tpu"], {}, "invalid choice: 'tpu'"),
    ],
)
def test_bad_settings_exit_with_usage(capsys, argv, env, message):
    with pytest.raises(SystemExit) as info:
        parse_settings(argv, env)
    assert info.value.code == 2 and message in capsys.readouterr().err


def run_in_process(settings: Settings, scenario) -> None:
    """Build, bind and start a server on this event loop, load its models in the background, and run
    scenario(server, loading) against it (loading: the model load, to await)."""

    async def main() -> None:
        server, port = create_server(settings, Metrics())
        assert port > 0 and server.port == port  # known before any model loads
        await server.start()
        loading = asyncio.ensure_future(server.load_models())
        try:
            await scenario(server, loading)
        finally:
            await loading
            await server.stop(0)

    asyncio.run(main())


def test_health_is_not_serving_while_models_load(trained, monkeypatch):
    release = threading.Event()
    original = repository_module.ModelRepository.load

    def slow_load(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(repository_module.ModelRepository, "load", slow_load)
    statuses = []
    labels: set[str] = set()

    async def scenario(server, started):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await asyncio.sleep(0.2)
            statuses.append((await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.MixtureDensityServiceStub(channel).Predict(REQUEST, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in info.value.details()
            for name in ("made_up_1", "made_up_2"):  # names nobody knows yet: no label of their own
                with pytest.raises(grpc.aio.AioRpcError):
                    request = pb.PredictRequest(model=pb.ModelRef(name=name), inputs=REQUEST.inputs)
                    await pb_grpc.MixtureDensityServiceStub(channel).Predict(request, timeout=5)
            labels.update(
                s.labels["model"]
                for family in server.metrics.registry.collect()
                if family.name == "mdn_requests"
                for s in family.samples
            )
            release.set()
            await started
            statuses.append((await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status)
            await server.health.enter_graceful_shutdown()
            statuses.append((await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status)

    run_in_process(Settings(model_repository=trained["models"], port=0, http_port=0, metrics_port=-1), scenario)
    s = health_pb2.HealthCheckResponse
    assert statuses == [s.NOT_SERVING, s.SERVING, s.NOT_SERVING]
    assert labels == {"unknown"}  # the model label stays bounded while the repository loads


def test_an_unexpected_failure_is_internal_with_a_generic_message(trained, monkeypatch, caplog):
    def broken_run(self, x):
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr(LoadedModel, "run", broken_run)

    async def scenario(server, started):
        await started
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MixtureDensityServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Predict(REQUEST, timeout=5)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in info.value.details() and "internal error" in info.value.details()
            models = await stub.ListModels(pb.ListModelsRequest(), timeout=5)  # still serving
            assert len(models.models) == 2

    with caplog.at_level(logging.ERROR, logger="mdn_serve"):
        monkeypatch.setattr(ModelRuntime, "warm_up", lambda self: None)
        run_in_process(Settings(model_repository=trained["models"], port=0, http_port=0, metrics_port=-1), scenario)
    assert "secret detail of a bug" in caplog.text and "Traceback" in caplog.text


def test_sigint_also_stops_the_server(trained, tmp_path):
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]))
    proc.process.send_signal(signal.SIGINT)
    assert proc.process.wait(timeout=30) == 0


def test_messages_over_the_size_limit_are_resource_exhausted(trained):
    async def scenario(server, started):
        await started
        big = pb.PredictRequest(
            model=pb.ModelRef(name="two_link_arm"), inputs=pb.Tensor(shape=[1000, 2], raw=bytes(8000))
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MixtureDensityServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Predict(big, timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            small = await stub.Predict(REQUEST, timeout=5)  # and it keeps serving
            assert list(small.weights.shape) == [1, 3]

    run_in_process(
        Settings(model_repository=trained["models"], port=0, http_port=0, metrics_port=-1, max_message_bytes=4096),
        scenario,
    )


def test_drain_under_load_loses_nothing_admitted(trained, tmp_path):
    """SIGTERM: NOT_SERVING at once, answers for the drain delay, then UNAVAILABLE; exit 0."""
    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--drain-delay-seconds",
                        "1.5", "--grace-seconds", "5")  # fmt: skip
    outcomes: list[tuple[float, str]] = []
    details: list[str] = []
    signalled_at = [0.0]
    stop = threading.Event()

    def client_loop() -> None:
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.MixtureDensityServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.Modes(pb.ModesRequest(model=REQUEST.model, inputs=REQUEST.inputs), timeout=10)
                    outcomes.append((time.monotonic(), "OK"))
                except grpc.RpcError as exc:
                    outcomes.append((time.monotonic(), exc.code().name))
                    details.append(f"{time.monotonic() - signalled_at[0]:.3f} {exc.code().name} {exc.details()}")
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        return  # told to go away, as a client with somewhere else to go would

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    signalled = signalled_at[0] = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with grpc.insecure_channel(proc.target) as channel:  # still answering, but telling probes to go away
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert proc.process.wait(timeout=30) == 0
    stop.set()
    for t in threads:
        t.join(timeout=30)
    during_drain = [code for at, code in outcomes if signalled < at < signalled + 1.2]
    assert during_drain and set(during_drain) == {"OK"}
    failures = {code for _, code in outcomes if code != "OK"}
    assert failures <= {"UNAVAILABLE"}, (
        details[:10],
        proc.log()[-1500:],
    )  # only calls made after the server stopped accepting
    assert "draining" in proc.log()


def test_a_second_server_on_a_taken_port_is_a_clear_start_up_error(server, trained, caplog):
    """A lone server does not share its port (SO_REUSEPORT is for --workers), nor its metrics port."""
    code, text = start_up_error(caplog, "--model-repository", str(trained["models"]), "--port", str(server.port))
    assert code == 1 and f"cannot bind 127.0.0.1:{server.port}" in text
    caplog.clear()
    code, text = start_up_error(
        caplog, "--model-repository", str(trained["models"]), "--metrics-port", str(server.metrics_port)
    )
    assert code == 1 and f"cannot serve metrics on 127.0.0.1:{server.metrics_port}" in text


def test_sigterm_under_long_work_exits_within_grace_plus_a_second(trained, tmp_path):
    """Requests that would compute for many seconds, and more queued behind them: after the grace
    period they are answered UNAVAILABLE, the compute threads stop within a chunk, and the process
    exits."""
    from mdn_serve.tools.client import MdnClient

    proc = start_server(tmp_path / "log", "--model-repository", str(trained["models"]), "--grace-seconds", "1",
                        "--max-ik-seeds", "20000000", "--max-samples", "20000000", "--max-response-bytes-in-flight",
                        str(2**40))  # fmt: skip
    targets = np.tile([[0.6, 0.6]], (8192, 1)).astype(np.float32)
    codes: list[str] = []

    def long_call() -> None:
        with MdnClient(proc.target) as client:
            client.timeout = 60.0
            try:
                client.solve("two_link_arm", targets, num_samples=1000)  # 8 million seeds: tens of seconds
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)

    threads = [threading.Thread(target=long_call) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # two compute, the others queued
    signalled = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(timeout=30) == 0
    took = time.monotonic() - signalled
    for t in threads:
        t.join(timeout=10)
    assert took < 1.0 + 1.0, (took, proc.log()[-2000:])
    assert codes == ["UNAVAILABLE"] * 6, codes
    assert "grace period over: 6 queued or running request(s) answered UNAVAILABLE" in proc.log()
