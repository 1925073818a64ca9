"""services.common.grpc_server answered by real gRPC clients over loopback."""

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from driftline.v1 import features_pb2, features_pb2_grpc, monitor_pb2, monitor_pb2_grpc
from services.common.errors import (
    InvalidArgument, NotFound, ServiceError, Unavailable, error_for, translate_errors,
)
from services.common.grpc_server import GrpcServer, Service, service_name
from services.common.telemetry import GRPC_REQUESTS

FEATURE_STORE = service_name(features_pb2.DESCRIPTOR, "FeatureStore")
MONITOR = service_name(monitor_pb2.DESCRIPTOR, "Monitor")


class SampleFeatureStore(features_pb2_grpc.FeatureStoreServicer):
    async def GetOnlineFeatures(self, request, context):
        if not request.entity_ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "entity_ids is empty")
        return features_pb2.GetOnlineFeaturesResponse(
            rows=[features_pb2.OnlineFeatures(entity_id=e) for e in request.entity_ids])


class RaisingFeatureStore(features_pb2_grpc.FeatureStoreServicer):
    """Refuses the way the services do: by raising, never touching the context."""

    async def GetOnlineFeatures(self, request, context):
        if request.feature_set:
            raise NotFound(f"unknown feature set {request.feature_set!r}")
        raise InvalidArgument("no entity_ids: ask for at least one")


class RaisingMonitor(monitor_pb2_grpc.MonitorServicer):
    """A stream that sends one report, then refuses; `closed` says its cleanup ran."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    async def WatchDriftStats(self, request, context):
        try:
            yield monitor_pb2.DriftReport(model_name=request.model_name)
            raise Unavailable("the monitor lost its input")
        finally:
            self.closed.set()


class ServerThread:
    """Runs a GrpcServer on its own event loop, as a service process would."""

    def __init__(self, services=None) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: GrpcServer | None = None
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = GrpcServer("sample", services or [Service(
                SampleFeatureStore(), features_pb2_grpc.add_FeatureStoreServicer_to_server, FEATURE_STORE)])
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server():
    running = ServerThread()
    yield running
    if running.thread.is_alive():
        running.stop()


def test_health_check_answers_serving(server):
    with grpc.insecure_channel(server.server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", FEATURE_STORE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_their_files(server):
    with grpc.insecure_channel(server.server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        listed = next(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in listed.list_services_response.service}
        assert {FEATURE_STORE, "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        described = next(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=FEATURE_STORE)]), timeout=5))
        assert described.file_descriptor_response.file_descriptor_proto


def test_calls_are_counted_by_status_code(server):
    def count(code: str) -> float:
        return GRPC_REQUESTS.labels("sample", "GetOnlineFeatures", code)._value.get()

    ok_before, bad_before = count("OK"), count("INVALID_ARGUMENT")
    with grpc.insecure_channel(server.server.address) as channel:
        stub = features_pb2_grpc.FeatureStoreStub(channel)
        assert stub.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(entity_ids=["a"]), timeout=5).rows
        with pytest.raises(grpc.RpcError) as bad:
            stub.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "entity_ids is empty" in bad.value.details()
    # The status reaches the client as the server unwinds, so the count may trail it a little.
    deadline = time.monotonic() + 5
    while count("INVALID_ARGUMENT") == bad_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert count("OK") == ok_before + 1
    assert count("INVALID_ARGUMENT") == bad_before + 1


def test_a_stopping_server_reports_not_serving_then_refuses_calls(server):
    address = server.server.address
    with grpc.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.stop()
        statuses = []
        try:
            for reply in watch:
                statuses.append(reply.status)
        except grpc.RpcError:
            pass
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_raised_service_error_is_the_status_code_and_message_and_is_counted():
    monitor = RaisingMonitor()
    running = ServerThread([
        Service(RaisingFeatureStore(), features_pb2_grpc.add_FeatureStoreServicer_to_server, FEATURE_STORE),
        Service(monitor, monitor_pb2_grpc.add_MonitorServicer_to_server, MONITOR)])
    counted = GRPC_REQUESTS.labels("sample", "GetOnlineFeatures", "NOT_FOUND")
    before = counted._value.get()
    try:
        with grpc.insecure_channel(running.server.address) as channel:
            store = features_pb2_grpc.FeatureStoreStub(channel)
            with pytest.raises(grpc.RpcError) as unknown:
                store.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(feature_set="x"), timeout=5)
            assert (unknown.value.code(), unknown.value.details()) == (
                grpc.StatusCode.NOT_FOUND, "unknown feature set 'x'")
            with pytest.raises(grpc.RpcError) as empty:
                store.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(), timeout=5)
            assert (empty.value.code(), empty.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, "no entity_ids: ask for at least one")

            stream = monitor_pb2_grpc.MonitorStub(channel).WatchDriftStats(
                monitor_pb2.WatchDriftStatsRequest(model_name="m"), timeout=5)
            assert next(stream).model_name == "m"
            with pytest.raises(grpc.RpcError) as lost:
                next(stream)
            assert (lost.value.code(), lost.value.details()) == (
                grpc.StatusCode.UNAVAILABLE, "the monitor lost its input")
            assert monitor.closed.wait(5)
        deadline = time.monotonic() + 5
        while counted._value.get() == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counted._value.get() == before + 1
    finally:
        running.stop()


class AbortingContext:
    """A sync handler's context: `abort` raises, as grpc's does."""

    class Aborted(Exception):
        pass

    def abort(self, code, details):
        raise self.Aborted(code, details)


def test_sync_handlers_and_generators_are_translated_too():
    def unary(request, context):
        raise error_for(grpc.StatusCode.PERMISSION_DENIED, f"not for {request}")

    def streaming(request, context):
        yield 1
        raise NotFound("gone")

    with pytest.raises(AbortingContext.Aborted) as denied:
        translate_errors(unary)("you", AbortingContext())
    assert denied.value.args == (grpc.StatusCode.PERMISSION_DENIED, "not for you")
    responses = translate_errors(streaming)(None, AbortingContext())
    assert next(responses) == 1
    with pytest.raises(AbortingContext.Aborted) as gone:
        next(responses)
    assert gone.value.args == (grpc.StatusCode.NOT_FOUND, "gone")
    other = error_for(grpc.StatusCode.DATA_LOSS, "lost")
    assert isinstance(other, ServiceError) and other.code is grpc.StatusCode.DATA_LOSS
