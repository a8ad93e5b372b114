"""Is there a Ray head at host:port? Asked with one gRPC call, within a time limit, before ray.init.

ray.init retries an address that answers TCP but is not a Ray GCS (a web server, a database, a wrong port) for
minutes, so `--ray` pointed at one would hang. Here the GCS's own liveness call (NodeInfoGcsService.CheckAlive, what
Ray's tools ask) is made with grpcio and the stubs Ray generates for its own protocol (ray.core.generated); a reply
means a Ray head, and says its Ray version.
"""
from __future__ import annotations

import socket


class NotARayHead(Exception):
    """Something answers at the address, but not as a Ray head; the message says what was seen."""


def ray_head_version(host: str, port: int, timeout: float) -> str:
    """The Ray version of the head whose GCS listens at host:port. OSError when nothing can be reached;
    NotARayHead when what answers is not a Ray GCS or gives no reply within `timeout` seconds."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    # Nothing listening is told apart first: to gRPC, both that and a server speaking another protocol are
    # UNAVAILABLE.
    socket.create_connection((host, port), timeout=timeout).close()
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            reply = stub.CheckAlive(gcs_service_pb2.CheckAliveRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise NotARayHead("it did not reply as a Ray head in time") from None
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise NotARayHead("a gRPC server without Ray's GCS service answers there") from None
            if exc.code() == grpc.StatusCode.UNAVAILABLE:  # it took the connection: what answers is no HTTP/2 server
                raise NotARayHead("it does not speak gRPC") from None
            raise NotARayHead(f"it does not answer as Ray's GCS ({exc.code().name.lower()})") from None
    return reply.ray_version or "unknown"
